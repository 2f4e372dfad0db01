#!/usr/bin/env bash
# Every test: unit tests, the black-box suite against the real sidecar, and a short run of
# the demo. Installs what the build needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --all-targets
cargo test --doc
# The README's main command must work too: a short demo with 3-second tokens.
cargo run --quiet -- demo --duration 8s --token-lifetime 3s
