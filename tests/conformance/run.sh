#!/usr/bin/env bash
# The MCP project's conformance suite, `client` mode, auth scenarios, with bearerd between
# the scenarios' MCP server and an MCP SDK client that has no auth code of its own
# (client.mjs). Prints one line per scenario, then the suite's summary.
#
#   tests/conformance/run.sh                       # every auth scenario (the suite's, and
#                                                  # those --suite auth leaves out)
#   tests/conformance/run.sh auth/pre-registration # one scenario, with the suite's checks
#   BEARERD_BIN=/path/to/bearerd tests/conformance/run.sh
set -euo pipefail
cd "$(dirname "$0")"

# Node 22, as scripts/setup.sh fetches it when the system's is older.
if [ "$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)" -lt 22 ]; then
  PATH="$(cd ../../target/node22/node_modules/.bin && pwd):$PATH"
fi
[ -d node_modules/@modelcontextprotocol/conformance ] ||
  npm ci --no-audit --no-fund --loglevel=error
# client.mjs borrows the e2e harness (process handling, the browser that logs in).
[ -d ../e2e/node_modules ] || (cd ../e2e && npm ci --no-audit --no-fund --loglevel=error)

export BEARERD_BIN="${BEARERD_BIN:-$(cd ../.. && pwd)/target/debug/bearerd}"
if [ ! -x "$BEARERD_BIN" ]; then
  echo "run.sh: no executable bearerd at $BEARERD_BIN (cargo build, or set BEARERD_BIN)" >&2
  exit 1
fi

suite=(node node_modules/@modelcontextprotocol/conformance/dist/index.js client
  --command "node $(pwd)/client.mjs" --timeout 60000)
if [ $# -gt 0 ]; then
  exec "${suite[@]}" --scenario "$1"
fi
baseline=()
[ -f expected-failures.yml ] && baseline=(--expected-failures expected-failures.yml)
status=0
suite_log=$(mktemp)
trap 'rm -f "$suite_log"' EXIT
"${suite[@]}" --suite auth "${baseline[@]}" 2>&1 | tee "$suite_log" || status=1
# A scenario with a failed check is a failure whatever the suite's exit code says.
if grep -q '^✗' "$suite_log" || ! grep -q '^Total: [0-9]* passed, 0 failed' "$suite_log"; then
  status=1
fi
# Scenarios `--suite auth` leaves out (DESIGN §7): one at a time, each with its checks.
for scenario in auth/2025-03-26-oauth-metadata-backcompat auth/2025-03-26-oauth-endpoint-fallback \
  auth/resource-mismatch auth/offline-access-scope auth/offline-access-not-supported \
  auth/client-credentials-jwt auth/client-credentials-basic; do
  if out=$("${suite[@]}" --scenario "$scenario" 2>&1); then
    echo "✓ $scenario: $(grep -Eo 'Passed: [0-9]+/[0-9]+' <<<"$out" | tail -1)"
  else
    echo "✗ $scenario"
    echo "$out" | tail -40
    status=1
  fi
done
exit $status
