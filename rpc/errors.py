"""Errors that cross the wire: a code and a message, rebuilt as the same type on the caller."""

from __future__ import annotations

from typing import Any


class RpcError(Exception):
    code = "internal"
    http_status = 500        # how the Engine API answers when this error reaches a handler

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class Unavailable(RpcError):
    http_status = 503
    code = "unavailable"


class PermissionDenied(RpcError):
    http_status = 403
    code = "permission_denied"


class InvalidArgument(RpcError):
    http_status = 400
    code = "invalid_argument"


class NotFound(RpcError):
    http_status = 404
    code = "not_found"


class Conflict(RpcError):
    http_status = 409
    code = "conflict"


class FailedPrecondition(RpcError):
    http_status = 400
    code = "failed_precondition"


class NotLeaderError(RpcError):
    http_status = 503
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
