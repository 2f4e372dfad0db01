#!/usr/bin/env bash
# The main job: bearerd between an embedded token server (10-second tokens) and an echo
# upstream. Prints each refresh and one request a second. Ctrl-C stops it.
# Extra arguments go to `bearerd demo` (e.g. --duration 30s --token-lifetime 3s).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run --quiet -- demo "$@"
