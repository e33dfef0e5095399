"""Errors that cross the wire: a code and a message, rebuilt as the same type on the caller."""

from __future__ import annotations

from typing import Any


class RpcError(Exception):
    code = "internal"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class Unavailable(RpcError):
    code = "unavailable"


class PermissionDenied(RpcError):
    code = "permission_denied"


class InvalidArgument(RpcError):
    code = "invalid_argument"


class NotFound(RpcError):
    code = "not_found"


class Conflict(RpcError):
    code = "conflict"


class FailedPrecondition(RpcError):
    code = "failed_precondition"


class NotLeaderError(RpcError):
    """details: leader_addr (may be empty)."""

    code = "not_leader"


_BY_CODE: dict[str, type[RpcError]] = {
    cls.code: cls
    for cls in (RpcError, Unavailable, PermissionDenied, InvalidArgument, NotFound, Conflict,
                FailedPrecondition, NotLeaderError)
}


def from_wire(doc: dict[str, Any]) -> RpcError:
    cls = _BY_CODE.get(str(doc.get("code")), RpcError)
    return cls(str(doc.get("message", "")), **dict(doc.get("details") or {}))
