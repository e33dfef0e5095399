"""What a task spec refers to beyond itself: the secrets and configs its container uses.

The manager sends exactly these objects' data with the task; the worker keeps them while the
task needs them. One definition serves both sides.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# (kind, ContainerSpec key, ID key); the kind's table is the kind plus "s".
_REF_KEYS = (("secret", "Secrets", "SecretID"), ("config", "Configs", "ConfigID"))


def references(spec: Mapping[str, Any]) -> frozenset[tuple[str, str]]:
    """The (kind, ID) pairs a TaskSpec refers to; empty (and cheap) when it refers to none."""
    container = spec.get("ContainerSpec")
    if not container or not (container.get("Secrets") or container.get("Configs")):
        return frozenset()
    out = set()
    for kind, key, id_key in _REF_KEYS:
        for ref in container.get(key) or []:
            if isinstance(ref, dict) and ref.get(id_key):
                out.add((kind, str(ref[id_key])))
    return frozenset(out)
