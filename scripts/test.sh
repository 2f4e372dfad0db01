#!/usr/bin/env bash
# Every test: unit tests, the black-box suite against the real sidecar, the end-to-end
# suite (oidc-provider, MCP SDK), and a short run of the demo. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --all-targets 2>&1 | tee "$log"
# End to end against software nobody here wrote: oidc-provider and an MCP SDK server/client.
# One known flake is run again once, loudly: the logout test now and then finds a refresh
# token of the agent's grant still active, or a newest token of another grant (2026-12-02,
# about 1 run in 6, cause not found yet; its assertions print every agent refresh token's
# grant, state and time). Any other failure, or the same one twice, fails the run.
e2e_log=$(mktemp)
trap 'rm -f "$log" "$e2e_log"' EXIT
if ! tests/e2e/run.sh >"$e2e_log" 2>&1; then
  cat "$e2e_log"
  if grep '^not ok' "$e2e_log" | grep -qv 'logout: revoked at the provider'; then
    exit 1
  fi
  echo "=== e2e: the known logout flake (above); running the suite once more ==="
  tests/e2e/run.sh >"$e2e_log" 2>&1 || { cat "$e2e_log"; exit 1; }
fi
cat "$e2e_log" >>"$log"
cat "$e2e_log"
# The README's main command must work too: a short demo with 3-second tokens.
cargo run --quiet -- demo --duration 8s --token-lifetime 3s
passed=$(( $(grep -Eo '[0-9]+ passed' "$log" | awk '{s+=$1} END {print s+0}') + $(grep -Eo '^# pass [0-9]+' "$log" | awk '{s+=$3} END {print s+0}') ))
failed=$(( $(grep -Eo '[0-9]+ failed' "$log" | awk '{s+=$1} END {print s+0}') + $(grep -Eo '^# fail [0-9]+' "$log" | awk '{s+=$3} END {print s+0}') ))
echo "all tests: $passed passed, $failed failed"
