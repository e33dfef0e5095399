"""The Engine API `filters` query parameter, parsed and read as dockerd reads it.

Theory of operation: `filters` is one JSON object naming, for each key, a set of values. Clients
send it in one of two forms, and dockerd (moby api/types/filters `FromJSON`) accepts either, but
not a mix of the two in one object:

- the map form `{"key": {"value": true}}` (the docker CLI; every API version since 1.22);
- the list form `{"key": ["value"]}` (docker-py, older clients).

Anything else (not JSON, not an object, a scalar or number where a set belongs, the two forms
mixed) is a 400 whose whole message is `invalid filter`. `null` stands for an empty object, and
`"key": null` for a key with no values.

The parsed `Filters` keeps every value with its flag, as dockerd's `filters.Args` does, because
dockerd itself reads a value mapped to `false` differently depending on the accessor:

- `filters[key]` / `filters.get(key)` / `key in filters` are dockerd's `Get` and `Contains`: they
  name every value, *including* one mapped to false. The swarm filters (nodes, services, tasks,
  secrets, configs: daemon/cluster/filters.go), labels, names and ids all read filters this way.
- `exact_match(key, source)` is dockerd's `ExactMatch`: only values mapped to true match, and a
  key whose values are all false matches nothing (services `mode`, networks `driver`/`scope`).
- `bool_value(key, default)` is `GetBoolOrDefault`: only values mapped to true count as "true"/"1"
  or "false"/"0"; none or both is `invalid filter 'KEY=[VALUES]'` (images and volumes `dangling`).
- `validate(accepted)` is `Validate`: an unknown key is `invalid filter 'KEY'`.

Errors are `InvalidFilter`, an `ApiError` with status 400 (dockerd's `invalidFilter` is an
InvalidParameter error); `request_filters()` is the one call a handler makes.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Mapping
from typing import Any

from aiohttp import web

from engineapi.http import ApiError


class InvalidFilter(ApiError):
    """A `filters` parameter dockerd would refuse; the message is dockerd's `invalidFilter` text."""

    def __init__(self, key: str = "", values: list[str] | None = None) -> None:
        message = "invalid filter"
        if key:
            shown = key if values is None else f"{key}=[{' '.join(values)}]"
            message = f"invalid filter '{shown}'"
        super().__init__(400, message)


class Filters(Mapping[str, list[str]]):
    """Filter keys, each with its values and their flags (True unless the map form said false).

    As a mapping it answers what dockerd's `Get` answers: every value of the key, in the order
    the client sent them."""

    def __init__(self, fields: Mapping[str, Mapping[str, bool]] | None = None) -> None:
        self._fields: dict[str, dict[str, bool]] = {k: dict(v) for k, v in (fields or {}).items()}

    def __getitem__(self, key: str) -> list[str]:
        return list(self._fields[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"Filters({self._fields!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Filters):
            return self._fields == other._fields
        return super().__eq__(other)

    def exact_match(self, key: str, source: str) -> bool:
        """True when `key` has no values, or `source` is one of its values mapped to true."""
        values = self._fields.get(key)
        if not values:
            return True
        return values.get(source, False)

    def bool_value(self, key: str, default: bool) -> bool:
        """The key read as one boolean: `default` when absent; raises InvalidFilter when it has no
        value, or its true-flagged values name neither or both of true ("true", "1") and false
        ("false", "0"). Case matters, as in dockerd."""
        if key not in self._fields:
            return default
        values = self._fields[key]
        if not values:
            raise InvalidFilter(key)
        is_true = values.get("true", False) or values.get("1", False)
        is_false = values.get("false", False) or values.get("0", False)
        if is_true == is_false:
            raise InvalidFilter(key, list(values))
        return is_true

    def validate(self, accepted: Collection[str]) -> None:
        """Raise InvalidFilter naming the first key not in `accepted`."""
        for key in self._fields:
            if key not in accepted:
                raise InvalidFilter(key)


def _map_form(doc: dict[str, Any]) -> dict[str, dict[str, bool]] | None:
    """`{"k": {"v": bool}}`, or None when `doc` is not in that form. A null flag is false and a
    null set is empty, as Go's decoder leaves them."""
    out: dict[str, dict[str, bool]] = {}
    for key, values in doc.items():
        if values is None:
            out[key] = {}
        elif isinstance(values, dict) and all(f is None or isinstance(f, bool) for f in values.values()):
            out[key] = {v: bool(f) for v, f in values.items()}
        else:
            return None
    return out


def _list_form(doc: dict[str, Any]) -> dict[str, dict[str, bool]] | None:
    """`{"k": ["v", ...]}`, or None when `doc` is not in that form. A null item is ""."""
    out: dict[str, dict[str, bool]] = {}
    for key, values in doc.items():
        if values is None:
            out[key] = {}
        elif isinstance(values, list) and all(v is None or isinstance(v, str) for v in values):
            out[key] = {("" if v is None else v): True for v in values}
        else:
            return None
    return out


def parse_filters(raw: str | None) -> Filters:
    """The `filters` parameter's text, in either form; raises InvalidFilter ("invalid filter")."""
    if not raw:
        return Filters()
    try:
        doc = json.loads(raw)
    except ValueError:
        raise InvalidFilter() from None
    if doc is None:
        return Filters()
    if not isinstance(doc, dict):
        raise InvalidFilter()
    fields = _map_form(doc)
    if fields is None:
        fields = _list_form(doc)
    if fields is None:
        raise InvalidFilter()
    return Filters(fields)


def request_filters(request: web.Request, accepted: Collection[str]) -> Filters:
    """The request's `filters`, parsed and checked against the keys the endpoint accepts."""
    filters = parse_filters(request.query.get("filters"))
    filters.validate(accepted)
    return filters
