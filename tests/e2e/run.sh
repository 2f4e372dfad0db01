#!/usr/bin/env bash
# bearerd end-to-end tests: a real OpenID provider (oidc-provider), a real MCP server
# (@modelcontextprotocol/sdk) and the bearerd binary between them, all on 127.0.0.1.
#
#   tests/e2e/run.sh              # BEARERD_BIN defaults to ../../target/debug/bearerd
#   BEARERD_BIN=/path/to/bearerd tests/e2e/run.sh
#   E2E_VERBOSE=1 / E2E_KEEP=1    # echo the children's stderr / keep the temp dir
set -euo pipefail
cd "$(dirname "$0")"

# The Node 20 that scripts/setup.sh fetches when the system's is older.
if [ -x ../../target/node/node_modules/.bin/node ]; then
  PATH="$(cd ../../target/node/node_modules/.bin && pwd):$PATH"
fi
if ! command -v node >/dev/null; then
  echo "run.sh: node is required (20 or later)" >&2
  exit 1
fi
if [ -f package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
else
  npm install --no-audit --no-fund --loglevel=error
fi

# The MCP conformance suite (@modelcontextprotocol/conformance) runs on Node 22.
(cd ../conformance && npm ci --no-audit --no-fund --loglevel=error)
CONFORMANCE_NODE=node
if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 22 ]; then
  CONFORMANCE_NODE="$(cd ../../target/node22/node_modules/.bin && pwd)/node"
fi
export CONFORMANCE_NODE
export CONFORMANCE_BIN="$(cd ../conformance/node_modules/@modelcontextprotocol/conformance && pwd)/dist/index.js"

export BEARERD_BIN="${BEARERD_BIN:-../../target/debug/bearerd}"
case "$BEARERD_BIN" in
  /*) ;;
  *) BEARERD_BIN="$(pwd)/$BEARERD_BIN" ;;
esac
if [ ! -x "$BEARERD_BIN" ]; then
  echo "run.sh: no executable bearerd at $BEARERD_BIN (build it with cargo build, or set BEARERD_BIN)" >&2
  exit 1
fi

# node:test prints its summary last ("# pass N", "# fail N"); its exit code is the result.
exec node --test e2e.test.mjs console.test.mjs
