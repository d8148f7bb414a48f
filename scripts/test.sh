#!/usr/bin/env bash
# Sets up everything pycor's tests need, then runs them all (real containers).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -ra "$@"
