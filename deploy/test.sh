#!/usr/bin/env bash
# The test command of the README and of CI: install (idempotent), lint, type-check, run the suite.
# Extra arguments go to pytest, e.g. `deploy/test.sh --slow` for the soak and chaos runs.
# `deploy/test.sh --vm` runs only the test of real VMs instead (tests/vm: Vagrant + libvirt,
# ~10 minutes; see deploy/vagrant/ and the README).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/deploy/install.sh"
if [ "${1:-}" = --vm ]; then
    shift
    "$repo/deploy/vagrant/host-setup.sh"
    cd "$repo"
    SHOAL_VM_TEST=1 exec .venv/bin/python -m pytest -q tests/vm "$@"
fi
cd "$repo"
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
