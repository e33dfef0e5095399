"""A test backend: an HTTP/1.1 keep-alive server on some TCP ports and a UDP echo on others.

Run inside a backend namespace: `python backend.py NAME --tcp 80,8080 --udp 5353`. Every
answer is `NAME PEER-ADDRESS` (the HTTP body, or the datagram), so a test sees which backend
answered and which source address it saw. Prints `ready` once every socket is bound.
"""

from __future__ import annotations

import argparse
import asyncio
import sys


async def serve_http(name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peername")[0]
    body = f"{name} {peer}\n".encode()
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"GET"):
                break
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


class Echo(asyncio.DatagramProtocol):
    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(f"{self.name} {addr[0]}\n".encode(), addr)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--tcp", default="")
    parser.add_argument("--udp", default="")
    args = parser.parse_args()
    loop = asyncio.get_running_loop()
    servers = []
    for port in filter(None, args.tcp.split(",")):
        servers.append(await asyncio.start_server(
            lambda r, w: serve_http(args.name, r, w), "0.0.0.0", int(port)))
    for port in filter(None, args.udp.split(",")):
        await loop.create_datagram_endpoint(lambda: Echo(args.name), local_addr=("0.0.0.0", int(port)))
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)   # until the test closes our stdin


if __name__ == "__main__":
    asyncio.run(main())
