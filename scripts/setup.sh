#!/usr/bin/env bash
# Installs what a fresh Debian machine with Rust lacks: cmake (Pingora builds zlib-ng
# through it), Node with npm (the end-to-end suite), Python with pip (the Kubernetes
# schema check of deploy/), redis-server (the shared-store tests), promtool (the alert
# rules' tests) and Debian's chromium (the console's browser tests). Idempotent; safe to run
# every time.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
# The end-to-end suite runs a real OpenID provider and MCP server on Node (20 or later).
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v python3 >/dev/null 2>&1 || need+=(python3)
# The shared-store tests start their own redis-server on a free loopback port.
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# Sentinels run as `redis-server --sentinel`; a cluster is made with `redis-cli --cluster create`.
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
# The console is tested in headless Chromium (puppeteer-core drives it; nothing downloads one).
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing: ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
# oidc-provider wants Node 20 or later, and Debian's own nodejs is 18: then npm fetches
# Node 20 from the npm registry into target/node, which tests/e2e/run.sh puts first on PATH.
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ] && [ ! -x target/node/node_modules/.bin/node ]; then
  echo "node $node_major is older than 20: fetching Node 20 into target/node" >&2
  npm install --no-audit --no-fund --loglevel=error --prefix target/node node@20
fi
# The MCP project's conformance suite (tests/conformance) needs Node 22: fetched the same
# way into target/node22 when the system's is older.
if [ "$node_major" -lt 22 ] && [ ! -x target/node22/node_modules/.bin/node ]; then
  echo "node $node_major is older than 22: fetching Node 22 into target/node22" >&2
  npm install --no-audit --no-fund --loglevel=error --prefix target/node22 node@22
fi
# tests/deploy.rs validates the manifests against the Kubernetes API schema with
# kubernetes-validate (PyPI), kept in target/pylib so nothing outside the project changes.
if [ ! -d target/pylib/kubernetes_validate ]; then
  echo "installing kubernetes-validate into target/pylib" >&2
  pip=(python3 -m pip install --quiet --disable-pip-version-check --target target/pylib kubernetes-validate==1.37.0)
  # Debian's own Python refuses installs without this flag, even into a target directory.
  "${pip[@]}" 2>/dev/null || "${pip[@]}" --break-system-packages
fi
# The end-to-end suite runs the MCP Python SDK client (tests/e2e/python_client.py) through
# bearerd, from target/pymcp.
if [ ! -d target/pymcp/mcp ]; then
  echo "installing the MCP Python SDK into target/pymcp" >&2
  pip=(python3 -m pip install --quiet --disable-pip-version-check --target target/pymcp mcp==1.23.3)
  "${pip[@]}" 2>/dev/null || "${pip[@]}" --break-system-packages
fi
# And its 2.x line, which speaks the 2026-07-28 revision (tests/e2e/python_client_2026.py).
if [ ! -d target/pymcp2026/mcp ]; then
  echo "installing the MCP Python SDK 2.x into target/pymcp2026" >&2
  pip=(python3 -m pip install --quiet --disable-pip-version-check --target target/pymcp2026 mcp==2.3.0)
  "${pip[@]}" 2>/dev/null || "${pip[@]}" --break-system-packages
fi
# tests/deploy.rs checks and unit-tests the alerting rules with promtool. Only that one
# binary is needed: it is taken out of Debian's prometheus package into target/prometheus,
# without installing the package (and its service).
if [ ! -x target/prometheus/usr/bin/promtool ]; then
  echo "fetching promtool (Debian's prometheus package) into target/prometheus" >&2
  dl=$(mktemp -d)
  if ! (cd "$dl" && apt-get download prometheus >/dev/null 2>&1); then
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    (cd "$dl" && apt-get download prometheus >/dev/null 2>&1)
  fi
  mkdir -p target/prometheus
  dpkg-deb -x "$dl"/prometheus_*.deb target/prometheus
  rm -rf "$dl"
fi
