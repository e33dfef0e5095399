"""Small typed checks shared by the spec validators. Each names the field it checks.

`path` is the dotted field name as the Engine API spells it ("TaskTemplate.RestartPolicy.Delay").
"""

from __future__ import annotations

import json
from typing import Any

from manager.specs.errors import SpecError


def field_map(value: Any, path: str, known: frozenset[str] | None = None) -> dict[str, Any]:
    """`value` must be an object (None reads as {}); with `known`, no other keys."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"invalid {path}: expected an object, got {type(value).__name__}")
    if known is not None:
        unknown = sorted(k for k in value if k not in known)
        if unknown:
            shown = unknown[0] if unknown[0].isidentifier() else json.dumps(unknown[0])
            raise SpecError(f"invalid {path}: unknown field {path}.{shown}")
    return value


def integer(value: Any, path: str, minimum: int | None = 0, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise SpecError(f"invalid {path}: expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise SpecError(f"invalid {path}: must be at least {minimum} (got {value})")
    if maximum is not None and value > maximum:
        raise SpecError(f"invalid {path}: must be at most {maximum} (got {value})")
    return value


def duration(value: Any, path: str) -> int:
    """A duration in nanoseconds: a non-negative integer."""
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            (isinstance(value, float) and not value.is_integer()):
        raise SpecError(f"invalid {path}: expected a duration in nanoseconds, got {value!r}")
    if value < 0:
        raise SpecError(f"invalid {path}: duration must not be negative (got {int(value)})")
    return int(value)


def string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise SpecError(f"invalid {path}: expected a string, got {value!r}")
    return value


def boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"invalid {path}: expected a boolean, got {value!r}")
    return value


def choice(value: Any, path: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise SpecError(f"invalid {path}: {value!r} is not one of {', '.join(allowed)}")
    return str(value)


def string_list(value: Any, path: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SpecError(f"invalid {path}: expected a list of strings")
    return value


def string_map(value: Any, path: str) -> dict[str, str]:
    labels = field_map(value, path)
    for key, val in labels.items():
        if not isinstance(val, str):
            raise SpecError(f"invalid {path}: value of {key!r} must be a string")
    return labels


def driver(value: Any, path: str) -> dict[str, Any]:
    """A `{Name, Options}` object (a log driver, a secret driver, templating, a volume driver)."""
    obj = field_map(value, path, frozenset({"Name", "Options"}))
    if obj.get("Name") is not None:
        string(obj["Name"], f"{path}.Name")
    string_map(obj.get("Options"), f"{path}.Options")
    return obj


def typed_fields(obj: dict[str, Any], path: str, types: dict[str, type]) -> None:
    """The fields of `obj` named in `types` are null or of that type (int: a whole number)."""
    for key, kind in types.items():
        value = obj.get(key)
        if value is None:
            continue
        if kind is bool:
            boolean(value, f"{path}.{key}")
        elif kind is int:
            integer(value, f"{path}.{key}", minimum=None)
        elif kind is str:
            string(value, f"{path}.{key}")


def object_list(value: Any, path: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError(f"invalid {path}: expected a list")
    for i, item in enumerate(value):
        field_map(item, f"{path}[{i}]")
    return value


def drop_nulls(value: Any) -> Any:
    """A copy with every null-valued key removed, recursively."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value
