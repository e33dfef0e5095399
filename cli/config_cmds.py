"""`shoal config ...` (create, ls, inspect, rm): the secret commands applied to configs."""

from __future__ import annotations

from cli.secret_cmds import blob_group

config = blob_group("config")
