"""A client for a shoal daemon's Engine API, used by the CLI and by tests.

`DaemonClient` speaks HTTP over the unix socket (`unix:///run/shoal/shoal.sock`) or TCP
(`tcp://host:port`, optionally TLS). Errors come back as `ApiResponseError` carrying the
daemon's `message`; a daemon that cannot be reached is `DaemonUnreachable`, which the CLI prints
as one line.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

DEFAULT_HOST = "unix:///run/shoal/shoal.sock"


class ClientError(Exception):
    """A failure the CLI reports as one line, without a traceback."""


class DaemonUnreachable(ClientError):
    def __init__(self, host: str) -> None:
        super().__init__(f"cannot connect to the shoal daemon at {host} — is it running?")
        self.host = host


class ApiResponseError(ClientError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Error response from daemon: {message}")
        self.status = status
        self.message = message


def resolve_host(host: str | None) -> str:
    return host or os.environ.get("SHOAL_HOST") or DEFAULT_HOST


class DaemonClient:
    def __init__(self, host: str | None = None, *, ssl_context: ssl.SSLContext | None = None,
                 timeout: float = 60.0) -> None:
        self.host = resolve_host(host)
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=None)
        self._session: aiohttp.ClientSession | None = None
        if self.host.startswith("unix://"):
            self._base = "http://shoal"
        elif self.host.startswith("tcp://"):
            scheme = "https" if ssl_context else "http"
            self._base = f"{scheme}://{self.host.removeprefix('tcp://')}"
        elif self.host.startswith("/"):
            self.host = "unix://" + self.host
            self._base = "http://shoal"
        else:
            raise ClientError(f"invalid daemon address {self.host!r}: use unix:///path or tcp://host:port")

    async def __aenter__(self) -> DaemonClient:
        if self.host.startswith("unix://"):
            connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=self.host.removeprefix("unix://"))
        else:
            connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl else False)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("DaemonClient used outside `async with`")
        return self._session

    async def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                      body: Any = None, data: bytes | None = None,
                      headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """One request; returns (status, decoded JSON or text or None). Raises on >= 400."""
        session = self._require_session()
        kwargs: dict[str, Any] = {"params": _params(params), "headers": headers or {}}
        if body is not None:
            kwargs["data"] = json.dumps(body).encode()
            kwargs["headers"]["Content-Type"] = "application/json"
        elif data is not None:
            kwargs["data"] = data
        try:
            async with session.request(method, self._base + path, **kwargs) as resp:
                raw = await resp.read()
                decoded = _decode(resp.headers.get("Content-Type", ""), raw)
                if resp.status >= 400:
                    message = decoded.get("message") if isinstance(decoded, dict) else None
                    raise ApiResponseError(resp.status, str(message or raw.decode(errors="replace")))
                return resp.status, decoded
        except (aiohttp.ClientConnectionError, FileNotFoundError, ConnectionRefusedError) as e:
            if isinstance(e, aiohttp.ServerDisconnectedError):
                raise ClientError(f"the shoal daemon at {self.host} closed the connection") from e
            raise DaemonUnreachable(self.host) from e

    async def stream(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                     body: Any = None) -> AsyncIterator[bytes]:
        """A streamed response body, chunk by chunk (logs, pulls, loads)."""
        session = self._require_session()
        kwargs: dict[str, Any] = {"params": _params(params)}
        if body is not None:
            kwargs["json"] = body
        try:
            async with session.request(method, self._base + path, **kwargs) as resp:
                if resp.status >= 400:
                    decoded = _decode(resp.headers.get("Content-Type", ""), await resp.read())
                    message = decoded.get("message") if isinstance(decoded, dict) else decoded
                    raise ApiResponseError(resp.status, str(message))
                async for chunk in resp.content.iter_any():
                    yield chunk
        except (aiohttp.ClientConnectionError, FileNotFoundError, ConnectionRefusedError) as e:
            raise DaemonUnreachable(self.host) from e

    async def get(self, path: str, **params: Any) -> Any:
        return (await self.request("GET", path, params=params or None))[1]

    async def post(self, path: str, body: Any = None, **params: Any) -> Any:
        return (await self.request("POST", path, params=params or None, body=body))[1]

    async def delete(self, path: str, **params: Any) -> Any:
        return (await self.request("DELETE", path, params=params or None))[1]


def _params(params: dict[str, Any] | None) -> dict[str, str] | None:
    if not params:
        return None
    out: dict[str, str] = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = "1" if value else "0"
        elif isinstance(value, (dict, list)):
            out[key] = json.dumps(value)
        else:
            out[key] = str(value)
    return out


def _decode(content_type: str, raw: bytes) -> Any:
    if not raw:
        return None
    if content_type.startswith("application/json"):
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")
    return raw.decode(errors="replace")
