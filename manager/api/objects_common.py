"""Helpers shared by the swarm-object handlers (services, tasks, secrets, configs, networks).

Theory of operation: a handler parses and validates its input, runs one store transaction and
answers. Every store or spec error raised on the way is turned into the Engine API's status and
text by `api_errors()` (used as a context manager around the whole handler body), so the texts
the docker CLI and docker-py expect live in one place:

- NotFound -> 404 "service X not found"; AmbiguousRef -> 400 "... is ambiguous (N matches found)"
- NameConflict -> 409 "rpc error: code = AlreadyExists desc = name conflicts with an existing
  object: service web already exists"
- StaleVersion -> 500 "rpc error: code = Unknown desc = update out of sequence" (what dockerd
  answers; no client retries it)
- SpecError -> 400 with the validator's message naming the field.

Filter helpers implement the Engine API matching rules: `id` and `name` are prefix matches
(any value may match), `label` entries are `key` or `key=value` and all of them must match.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from engineapi.http import ApiError
from manager.specs import SpecError
from manager.store import AmbiguousRef, NameConflict, NotFound, ReadTx, StaleVersion, StoreError

UPDATE_OUT_OF_SEQUENCE = "rpc error: code = Unknown desc = update out of sequence"


@contextlib.contextmanager
def api_errors() -> Iterator[None]:
    """Translate store and spec errors raised inside the block into ApiError."""
    try:
        yield
    except SpecError as exc:
        raise ApiError(400, exc.message) from None
    except NotFound as exc:
        raise ApiError(404, exc.message) from None
    except AmbiguousRef as exc:
        raise ApiError(400, exc.message) from None
    except NameConflict as exc:
        raise ApiError(409, exc.message) from None
    except StaleVersion:
        raise ApiError(500, UPDATE_OUT_OF_SEQUENCE) from None
    except StoreError as exc:
        raise ApiError(exc.http_status, exc.message) from None


def lookup(tx: ReadTx, table: str, ref: str) -> Any:
    """Engine API `{ref}` resolution (exact ID, exact name, unique ID prefix); raises store errors."""
    return tx.lookup(table, ref)


def any_prefix(values: list[str] | None, text: str) -> bool:
    """True when no values were given or `text` starts with one of them."""
    return not values or any(text.startswith(v) for v in values)


def any_substring(values: list[str] | None, text: str) -> bool:
    return not values or any(v in text for v in values)


def labels_match(values: list[str] | None, labels: Mapping[str, Any] | None) -> bool:
    """Every `key` / `key=value` in `values` holds for `labels`."""
    if not values:
        return True
    labels = labels or {}
    for item in values:
        key, eq, want = item.partition("=")
        if key not in labels:
            return False
        if eq and str(labels[key]) != want:
            return False
    return True


def exact_any(values: list[str] | None, text: str) -> bool:
    return not values or text in values


def require_spec_object(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, f"invalid {what}: expected a JSON object")
    return body
