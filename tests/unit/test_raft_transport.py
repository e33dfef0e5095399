"""Transport: framing of large messages, mutual TLS, reconnect, slow-peer isolation, snapshot lane."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from raft.transport import Transport, parse_address, tls_contexts
from raft.types import Entry, Message, MessageType


async def wait_for(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)


def msg(to: int, frm: int, typ: MessageType = MessageType.APPEND, data: bytes = b"", index: int = 0) -> Message:
    return Message(type=typ, to=to, frm=frm, term=1, index=index,
                   entries=(Entry(1, 1, data=data),) if data else ())


class Inbox:
    def __init__(self) -> None:
        self.got: list[Message] = []

    def __call__(self, m: Message) -> None:
        self.got.append(m)


def test_parse_address_rejects_garbage() -> None:
    assert parse_address("127.0.0.1:7001") == ("127.0.0.1", 7001)
    for bad in ("127.0.0.1", "host:port", ":80", "h:99999"):
        with pytest.raises(ValueError, match="bad address"):
            parse_address(bad)


async def test_large_messages_cross_without_a_size_cap() -> None:
    inbox = Inbox()
    b = Transport(2, ("127.0.0.1", 0), inbox)
    a = Transport(1, ("127.0.0.1", 0), lambda m: None)
    addr = await b.start()
    await a.start()
    try:
        a.set_peer(2, addr)
        big = bytes(range(256)) * 20000        # ~5 MB, far above any datagram limit
        for i in range(3):
            a.send(msg(2, 1, data=big, index=i))
        await wait_for(lambda: len(inbox.got) == 3)
        assert [m.index for m in inbox.got] == [0, 1, 2]
        assert all(m.entries[0].data == big for m in inbox.got)
    finally:
        await a.close()
        await b.close()


async def test_reconnects_after_the_peer_restarts() -> None:
    inbox = Inbox()
    unreachable: list[int] = []
    b = Transport(2, ("127.0.0.1", 0), inbox)
    addr = await b.start()
    a = Transport(1, ("127.0.0.1", 0), lambda m: None, on_unreachable=unreachable.append)
    await a.start()
    try:
        a.set_peer(2, addr)
        a.send(msg(2, 1, index=1))
        await wait_for(lambda: len(inbox.got) == 1)
        await b.close()
        await wait_for(lambda: not a.is_connected(2))
        assert 2 in unreachable
        b = Transport(2, addr, inbox)
        await b.start()
        await wait_for(lambda: a.is_connected(2))
        a.send(msg(2, 1, index=2))
        await wait_for(lambda: [m.index for m in inbox.got][-1:] == [2])
    finally:
        await a.close()
        await b.close()


async def test_slow_peer_does_not_block_others_and_drops_when_full() -> None:
    # A "slow" peer accepts the connection and never reads.
    stalled: list[asyncio.StreamWriter] = []

    async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stalled.append(writer)

    slow = await asyncio.start_server(never_read, "127.0.0.1", 0)
    slow_addr = slow.sockets[0].getsockname()[:2]
    inbox = Inbox()
    fast = Transport(3, ("127.0.0.1", 0), inbox)
    fast_addr = await fast.start()
    unreachable: list[int] = []
    a = Transport(1, ("127.0.0.1", 0), lambda m: None, on_unreachable=unreachable.append, queue_size=8)
    await a.start()
    try:
        a.set_peer(2, slow_addr)
        a.set_peer(3, fast_addr)
        await wait_for(lambda: a.is_connected(2) and a.is_connected(3))
        payload = b"x" * (1 << 20)
        for i in range(64):                    # 64 MB towards the stalled peer: its queue overflows
            a.send(msg(2, 1, data=payload, index=i))
            a.send(msg(3, 1, index=i))
            await asyncio.sleep(0)
        await wait_for(lambda: len(inbox.got) == 64)
        assert a.dropped > 0 and set(unreachable) == {2}
    finally:
        await a.close()
        await fast.close()
        for w in stalled:
            w.close()
        slow.close()
        await slow.wait_closed()


async def test_heartbeats_pass_a_stalled_snapshot_transfer() -> None:
    inbox = Inbox()
    b = Transport(2, ("127.0.0.1", 0), inbox)
    addr = await b.start()
    a = Transport(1, ("127.0.0.1", 0), lambda m: None)
    await a.start()
    try:
        a.set_peer(2, addr)
        chunk = b"s" * (8 << 20)
        for i in range(6):
            a.send(Message(type=MessageType.SNAPSHOT, to=2, frm=1, term=1, offset=i, chunk=chunk))
        a.send(msg(2, 1, typ=MessageType.HEARTBEAT))
        await wait_for(lambda: sum(m.type == MessageType.SNAPSHOT for m in inbox.got) == 6, timeout=20)
        kinds = [m.type for m in inbox.got]
        # The heartbeat, queued after 48 MB of snapshot chunks, overtook them on its own connection.
        assert kinds.index(MessageType.HEARTBEAT) < len(kinds) - 1
    finally:
        await a.close()
        await b.close()


# -- mutual TLS --------------------------------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, issuer_key: ec.EllipticCurvePrivateKey,
          *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=1))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(dir: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    c, k = dir / f"{name}.crt", dir / f"{name}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return str(c), str(k)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, tuple[ssl.SSLContext, ssl.SSLContext]]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("raft-test-ca", ca_key, "raft-test-ca", ca_key, ca=True)
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out = {}
    for node in ("n1", "n2"):
        key = ec.generate_private_key(ec.SECP256R1())
        c, k = _write(tmp_path, node, _cert(node, key, "raft-test-ca", ca_key, ca=False), key)
        out[node] = tls_contexts(c, k, str(ca_file))
    # An intruder: a self-signed cert (not from the CA), trusting the real CA so it can reach the server.
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rc, rk = _write(tmp_path, "rogue", _cert("rogue", rogue_key, "rogue", rogue_key, ca=False), rogue_key)
    out["rogue"] = tls_contexts(rc, rk, str(ca_file))
    return out


async def test_mutual_tls_delivers_between_ca_signed_nodes(pki) -> None:
    inbox = Inbox()
    b = Transport(2, ("127.0.0.1", 0), inbox, server_ssl=pki["n2"][0], client_ssl=pki["n2"][1])
    addr = await b.start()
    a = Transport(1, ("127.0.0.1", 0), lambda m: None, server_ssl=pki["n1"][0], client_ssl=pki["n1"][1])
    await a.start()
    try:
        a.set_peer(2, addr)
        a.send(msg(2, 1, index=7))
        await wait_for(lambda: [m.index for m in inbox.got] == [7])
    finally:
        await a.close()
        await b.close()


async def test_mutual_tls_refuses_a_client_without_a_ca_signed_cert(pki) -> None:
    inbox = Inbox()
    b = Transport(2, ("127.0.0.1", 0), inbox, server_ssl=pki["n2"][0], client_ssl=pki["n2"][1])
    addr = await b.start()
    # The rogue presents its self-signed cert: the server must refuse it.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        reader, writer = await asyncio.open_connection(*addr, ssl=pki["rogue"][1])
        writer.write(b"\0\0\0\1\x90")
        await writer.drain()
        assert await reader.read(1) == b""     # TLS 1.3: refusal shows on first read
        raise ConnectionError("refused after handshake")
    # A plaintext client does not get through either.
    _, plain = await asyncio.open_connection(*addr)
    plain.write(b"\0\0\0\1\x90")
    await plain.drain()
    plain.close()
    # A real transport with the rogue identity never delivers anything.
    rogue = Transport(1, ("127.0.0.1", 0), lambda m: None, client_ssl=pki["rogue"][1])
    try:
        rogue.set_peer(2, addr)
        rogue.send(msg(2, 1, index=1))
        good = Transport(3, ("127.0.0.1", 0), lambda m: None, client_ssl=pki["n1"][1])
        try:
            good.set_peer(2, addr)
            good.send(msg(2, 3, index=99))
            await wait_for(lambda: any(m.index == 99 for m in inbox.got))
        finally:
            await good.close()
        assert [m.frm for m in inbox.got] == [3]
    finally:
        await rogue.close()
        await b.close()


async def test_hearing_from_a_restarted_peer_cuts_the_redial_backoff_short() -> None:
    inbox_a, inbox_b = Inbox(), Inbox()
    a = Transport(1, ("127.0.0.1", 0), inbox_a, backoff_min=2.0, backoff_max=30.0)
    await a.start()
    b = Transport(2, ("127.0.0.1", 0), inbox_b)
    addr = await b.start()
    await b.close()                     # peer 2 is down: a's first dial fails, then it sleeps >= 1 s
    a.set_peer(2, addr)
    a.send(msg(2, 1, index=1))
    await wait_for(lambda: 2 in a._lanes and not a.is_connected(2))
    b = Transport(2, addr, inbox_b)
    await b.start()
    assert a.bound is not None
    b.set_peer(1, a.bound)              # the restarted peer dials us first
    b.send(msg(1, 2, index=5))
    try:
        await wait_for(lambda: [m.index for m in inbox_a.got] == [5])
        loop = asyncio.get_running_loop()
        started = loop.time()
        await wait_for(lambda: a.is_connected(2), timeout=0.9)   # well inside the 1 s minimum sleep
        assert loop.time() - started < 0.9
        a.send(msg(2, 1, index=2))
        await wait_for(lambda: [m.index for m in inbox_b.got] == [2])
    finally:
        await a.close()
        await b.close()


async def test_flush_writes_a_batch_at_once_and_send_alone_flushes_on_the_next_turn() -> None:
    inbox = Inbox()
    b = Transport(2, ("127.0.0.1", 0), inbox)
    addr = await b.start()
    a = Transport(1, ("127.0.0.1", 0), lambda m: None)
    await a.start()
    try:
        a.set_peer(2, addr)
        await wait_for(lambda: a.is_connected(2))
        lane = a._lanes[2][0]
        for i in range(5):
            a.send(msg(2, 1, index=i))
        assert len(lane.backlog) == 5
        a.flush()                               # written now, as one write, without a task switch
        assert lane.backlog == []
        a.send(msg(2, 1, index=5))              # no explicit flush: the scheduled one sends it
        await asyncio.sleep(0)
        assert lane.backlog == []
        await wait_for(lambda: len(inbox.got) == 6)
        assert [m.index for m in inbox.got] == list(range(6))
    finally:
        await a.close()
        await b.close()
