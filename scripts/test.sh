#!/usr/bin/env bash
# Every test: unit tests, the black-box suite against the real sidecar, the end-to-end
# suite (oidc-provider, MCP SDK), and a short run of the demo. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
log=$(mktemp)
trap 'rm -f "$log" "$log.conformance"' EXIT
cargo test --all-targets 2>&1 | tee "$log"
# End to end against software nobody here wrote: oidc-provider and an MCP SDK server/client.
tests/e2e/run.sh 2>&1 | tee -a "$log"
# The MCP project's conformance suite (client mode, every auth scenario) through bearerd,
# with an MCP SDK client that has no auth code of its own. Its own summary, not counted
# below (its lines count checks, not tests).
if tests/conformance/run.sh > "$log.conformance" 2>&1; then
  grep -E '^(✓|✗|Total)' "$log.conformance"
  echo "conformance: every auth scenario passed"
else
  cat "$log.conformance"
  echo "conformance: FAILED"
  exit 1
fi
# The README's main command must work too: a short demo with 3-second tokens.
cargo run --quiet -- demo --duration 8s --token-lifetime 3s
passed=$(( $(grep -Eo '[0-9]+ passed' "$log" | awk '{s+=$1} END {print s+0}') + $(grep -Eo '^# pass [0-9]+' "$log" | awk '{s+=$3} END {print s+0}') ))
failed=$(( $(grep -Eo '[0-9]+ failed' "$log" | awk '{s+=$1} END {print s+0}') + $(grep -Eo '^# fail [0-9]+' "$log" | awk '{s+=$3} END {print s+0}') ))
echo "all tests: $passed passed, $failed failed"
