"""Detach keys on `POST /containers/{id}/attach` (docker-py's attach with `detachKeys`, which, unlike
the docker CLI, relies on the daemon): on a TTY the keys (ctrl-p,ctrl-q by default, or the
`detachKeys` query) end the hijacked connection, never reach the container, and it runs on.
Over the node-local API of tests/executor/test_docker_run.py, with real runc containers."""

from __future__ import annotations

import asyncio

from tests.executor.conftest import needs_root_and_runc
from tests.executor.test_container_api import Docker
from tests.executor.test_docker_run import docker  # noqa: F401 - the fixture

pytestmark = needs_root_and_runc()


async def attach(client: Docker, name: str, query: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    path = client.env["DOCKER_HOST"].removeprefix("unix://")
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(f"POST /v1.47/containers/{name}/attach?stdin=1&stdout=1&stream=1{query} HTTP/1.1\r\n"
                 "Host: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n".encode())
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def typed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, text: bytes) -> None:
    """Send `text` as a line and read until both the TTY's echo of it and cat's copy arrived (the two
    come apart in time: stopping at the echo would leave cat's copy to the next read)."""
    writer.write(text + b"\n")
    seen = b""
    async with asyncio.timeout(10):
        while seen.count(text + b"\r\n") < 2:
            chunk = await reader.read(4096)
            assert chunk, f"the stream ended before the echo of {text!r}: {seen!r}"
            seen += chunk


async def detaches(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, keys: bytes) -> bytes:
    """Type `keys`; what arrived before the daemon closed the connection."""
    writer.write(keys)
    async with asyncio.timeout(10):
        rest = await reader.read()        # to EOF: the daemon closed the connection
    writer.close()
    return rest


async def test_detach_keys_end_the_attach_and_the_container_runs_on(docker: Docker) -> None:  # noqa: F811
    await docker.run("run", "-d", "-it", "--name", "catter", "busybox", "cat")
    try:
        reader, writer = await attach(docker, "catter", "&detachKeys=ctrl-x")
        await typed(reader, writer, b"first-line")
        assert b"^X" not in await detaches(reader, writer, b"\x18")      # no echo: cat never saw it
        reader, writer = await attach(docker, "catter", "")          # the default: ctrl-p,ctrl-q
        await typed(reader, writer, b"second-line")
        writer.write(b"\x10")
        await typed(reader, writer, b"x-after-a-lone-ctrl-p")      # a broken sequence goes through
        assert await detaches(reader, writer, b"\x10\x11") == b""
        _, out, _ = await docker.run("ps", "--format", "{{.Names}} {{.State}}")
        assert out == "catter running\n"
        _, out, _ = await docker.run("logs", "catter")
        assert "first-line" in out and "second-line" in out and "^X" not in out and "^Q" not in out
        path = docker.env["DOCKER_HOST"].removeprefix("unix://")
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"POST /v1.47/containers/catter/attach?stream=1&detachKeys=ctrl-1 HTTP/1.1\r\n"
                     b"Host: docker\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(10):
            answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 400") and b"Invalid detach keys (ctrl-1) provided" in answer
    finally:
        await docker.run("rm", "-f", "catter")
