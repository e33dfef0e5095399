"""Placement constraints: `key==value` / `key!=value`, parsed once, matched against nodes.

Keys: node.id, node.hostname, node.role, node.platform.os, node.platform.arch,
node.labels.<name>, engine.labels.<name>. Values compare case-insensitively.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from manager.specs.errors import SpecError
from model import Node

_FIXED_KEYS = ("node.id", "node.hostname", "node.role", "node.platform.os", "node.platform.arch")
_LABEL_PREFIXES = ("node.labels.", "engine.labels.")
_VALUE_RE = re.compile(r"^[^\s]+(?:\s+[^\s]+)*$")


@dataclass(frozen=True, slots=True)
class Constraint:
    key: str
    equal: bool  # == (True) or != (False)
    value: str

    def matches(self, node: Node) -> bool:
        actual = node_value(node, self.key)
        same = actual is not None and actual.lower() == self.value.lower()
        return same if self.equal else not same

    def __str__(self) -> str:
        return f"{self.key}{'==' if self.equal else '!='}{self.value}"


def parse_constraint(text: str) -> Constraint:
    if not isinstance(text, str):
        raise SpecError(f"invalid constraint {text!r}: expected a string")
    ops = [op for op in ("==", "!=") if op in text]
    if len(ops) != 1 or text.count(ops[0]) != 1:
        raise SpecError(f"invalid constraint {text!r}: constraint expected one operator from ==, !=")
    key, value = (part.strip() for part in text.split(ops[0]))
    if key not in _FIXED_KEYS and not any(key.startswith(p) and len(key) > len(p) for p in _LABEL_PREFIXES):
        raise SpecError(f"invalid constraint {text!r}: unknown key {key!r} (use node.id, node.hostname, "
                        "node.role, node.platform.os, node.platform.arch, node.labels.X or engine.labels.X)")
    if not value or not _VALUE_RE.match(value):
        raise SpecError(f"invalid constraint {text!r}: missing value")
    return Constraint(key, ops[0] == "==", value)


def parse_constraints(texts: list[str]) -> list[Constraint]:
    return [parse_constraint(t) for t in texts]


def node_value(node: Node, key: str) -> str | None:
    """The node's value for a constraint or preference key (None: the node has none)."""
    desc = node.description
    if key == "node.id":
        return node.id
    if key == "node.hostname":
        return node.hostname
    if key == "node.role":
        return node.role
    if key == "node.platform.os":
        return str((desc.get("Platform") or {}).get("OS", ""))
    if key == "node.platform.arch":
        return str((desc.get("Platform") or {}).get("Architecture", ""))
    if key.startswith("node.labels."):
        value = (node.spec.get("Labels") or {}).get(key[len("node.labels."):])
        return None if value is None else str(value)
    if key.startswith("engine.labels."):
        value = ((desc.get("Engine") or {}).get("Labels") or {}).get(key[len("engine.labels."):])
        return None if value is None else str(value)
    return None
