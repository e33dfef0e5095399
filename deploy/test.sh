#!/usr/bin/env bash
# The test command of the README and of CI: install (idempotent), lint, type-check, run the suite.
# Extra arguments go to pytest, e.g. `deploy/test.sh --slow` for the soak and chaos runs.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/deploy/install.sh"
cd "$repo"
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
