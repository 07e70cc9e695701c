#!/usr/bin/env bash
# What the tests need beyond Python packages, installed once and cached outside the repository:
#  - llama-server, a real OpenAI-compatible inference server (CPU build), for the adapter tests;
#  - Chromium (Debian's package), for the ops page test in a headless browser.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/build-llama-server.sh

if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
  else
    echo "test-prereqs: install Chromium (the ops page test runs it headless)" >&2
    exit 1
  fi
fi
