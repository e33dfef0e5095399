"""Errors the store raises; each carries the HTTP status the Engine API answers with."""

from __future__ import annotations


class StoreError(Exception):
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(StoreError):
    """`service web not found`."""

    http_status = 404


class AmbiguousRef(StoreError):
    """`service w is ambiguous (2 matches found)`."""

    http_status = 400


class NameConflict(StoreError):
    """`name conflicts with an existing object: service web already exists`."""

    http_status = 409

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"rpc error: code = AlreadyExists desc = name conflicts with an existing object: "
                         f"{kind} {name} already exists")
        self.kind = kind
        self.name = name


class StaleVersion(StoreError):
    """The writer read an older version of the object than the store holds."""

    http_status = 409  # issue 4 asks for 409; dockerd itself answers 500 with this text

    def __init__(self, detail: str = "") -> None:
        super().__init__("rpc error: code = Unknown desc = update out of sequence")
        self.detail = detail


class ObjectExists(StoreError):
    """Create of an ID that already exists."""

    http_status = 409


class WatchDropped(StoreError):
    """The watcher fell too far behind (or the store was restored); take a new snapshot."""
