#!/usr/bin/env bash
# Installs what a fresh Debian machine with Rust lacks: cmake (Pingora builds zlib-ng
# through it) and Node with npm (the end-to-end suite). Idempotent; safe to run every time.
set -euo pipefail
need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
# The end-to-end suite runs a real OpenID provider and MCP server on Node (20 or later).
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing: ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
