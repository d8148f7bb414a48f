#!/usr/bin/env bash
# The whole benchmark in one command: set up (as the tests do), then compare pycor
# with the anchors on a debootstrap Debian minbase. Takes about half an hour.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python benchmarks/run.py "$@"
