#!/usr/bin/env bash
# Sets up everything pycor's tests need, then runs the static checks and every test (unit, then real containers).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# static checks first (seconds): style and imports (ruff), types (mypy); both configured in pyproject.toml
.venv/bin/ruff check pycor_hooks tests benchmarks scripts debian
.venv/bin/mypy
exec .venv/bin/python -m pytest -ra "$@"
