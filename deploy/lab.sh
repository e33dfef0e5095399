#!/usr/bin/env bash
# The README's main command: install, then bring up the local multi-host lab with its demo.
# Arguments go to `shoal lab up` (default: 3 managers, 2 workers).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/deploy/install.sh"
if [ "$#" -eq 0 ]; then set -- --managers 3 --workers 2; fi
exec "$repo/.venv/bin/shoal" lab up "$@"
