"""msgpack encoding of the Raft contract types (raft/types.py) for the wire and the disk.
(Conf changes inside log entries use raft/confchange.py's encoding, owned by the core.)

Every value is encoded as a positional msgpack array (no field names), which keeps frames small and
decoding cheap. `to_wire(obj)` / `from_wire(kind, data)` are the generic pair; the per-type
`*_to_obj` / `*_from_obj` helpers work on the already-unpacked Python structures so that a message and
the entries inside it are unpacked by a single msgpack call. Decoding validates shapes and raises
`CodecError` naming what was wrong instead of letting a malformed frame surface as a TypeError.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgpack

from raft.types import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)

_T = TypeVar("_T")


class CodecError(ValueError):
    """Bytes that do not decode to the expected Raft value."""


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpack(data: bytes, what: str) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, use_list=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise CodecError(f"{what}: not valid msgpack ({exc})") from exc


# -- entries ------------------------------------------------------------------------------------------

def entry_to_obj(e: Entry) -> tuple[int, int, int, bytes]:
    return (e.term, e.index, int(e.type), e.data)


def entry_from_obj(o: Any) -> Entry:
    try:
        term, index, typ, data = o
        return Entry(term=term, index=index, type=EntryType(typ), data=data)
    except (TypeError, ValueError) as exc:
        raise CodecError(f"entry: malformed {o!r:.80}") from exc


def encode_entry(e: Entry) -> bytes:
    return _pack(entry_to_obj(e))


def decode_entry(data: bytes) -> Entry:
    return entry_from_obj(_unpack(data, "entry"))


# -- hard state, conf state, snapshot meta ---------------------------------------------------------------

def encode_hard_state(hs: HardState) -> bytes:
    return _pack((hs.term, hs.vote, hs.commit))


def decode_hard_state(data: bytes) -> HardState:
    o = _unpack(data, "hard state")
    try:
        term, vote, commit = o
        return HardState(term=int(term), vote=int(vote), commit=int(commit))
    except (TypeError, ValueError) as exc:
        raise CodecError(f"hard state: malformed {o!r:.80}") from exc


def conf_state_to_obj(cs: ConfState) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return (tuple(cs.voters), tuple(cs.learners))


def conf_state_from_obj(o: Any) -> ConfState:
    try:
        voters, learners = o
        return ConfState(voters=tuple(int(v) for v in voters), learners=tuple(int(v) for v in learners))
    except (TypeError, ValueError) as exc:
        raise CodecError(f"conf state: malformed {o!r:.80}") from exc


def snapshot_meta_to_obj(m: SnapshotMeta) -> tuple[int, int, Any]:
    return (m.index, m.term, conf_state_to_obj(m.conf))


def snapshot_meta_from_obj(o: Any) -> SnapshotMeta:
    try:
        index, term, conf = o
        return SnapshotMeta(index=int(index), term=int(term), conf=conf_state_from_obj(conf))
    except (TypeError, ValueError) as exc:
        raise CodecError(f"snapshot meta: malformed {o!r:.80}") from exc


def encode_snapshot(s: Snapshot) -> bytes:
    return _pack((snapshot_meta_to_obj(s.meta), s.data))


def decode_snapshot(data: bytes) -> Snapshot:
    o = _unpack(data, "snapshot")
    try:
        meta, payload = o
        if not isinstance(payload, bytes):
            raise TypeError("payload is not bytes")
        return Snapshot(meta=snapshot_meta_from_obj(meta), data=payload)
    except (TypeError, ValueError) as exc:
        raise CodecError(f"snapshot: malformed ({exc})") from exc


# -- messages ------------------------------------------------------------------------------------------

def message_to_obj(m: Message) -> tuple[Any, ...]:
    return (
        int(m.type), m.to, m.frm, m.term, m.log_term, m.index,
        [(e.term, e.index, int(e.type), e.data) for e in m.entries],
        m.commit, m.reject, m.reject_hint, m.context,
        snapshot_meta_to_obj(m.snapshot_meta) if m.snapshot_meta is not None else None,
        m.offset, m.chunk, m.done,
    )


def message_from_obj(o: Any) -> Message:
    try:
        (typ, to, frm, term, log_term, index, entries, commit, reject, reject_hint, context,
         meta, offset, chunk, done) = o
        return Message(
            type=MessageType(typ), to=to, frm=frm, term=term, log_term=log_term, index=index,
            entries=tuple(Entry(t, i, EntryType(ty), d) for (t, i, ty, d) in entries),
            commit=commit, reject=bool(reject), reject_hint=reject_hint, context=context,
            snapshot_meta=snapshot_meta_from_obj(meta) if meta is not None else None,
            offset=offset, chunk=chunk, done=bool(done),
        )
    except CodecError:
        raise
    except (TypeError, ValueError) as exc:
        raise CodecError(f"message: malformed ({exc})") from exc


def encode_message(m: Message) -> bytes:
    return _pack(message_to_obj(m))


def decode_message(data: bytes) -> Message:
    return message_from_obj(_unpack(data, "message"))


# -- generic pair ---------------------------------------------------------------------------------------

_ENCODERS: dict[type, Any] = {
    Message: encode_message,
    Entry: encode_entry,
    HardState: encode_hard_state,
    Snapshot: encode_snapshot,
}
_DECODERS: dict[type, Any] = {
    Message: decode_message,
    Entry: decode_entry,
    HardState: decode_hard_state,
    Snapshot: decode_snapshot,
}


def to_wire(obj: Message | Entry | HardState | Snapshot) -> bytes:
    try:
        return _ENCODERS[type(obj)](obj)
    except KeyError:
        raise CodecError(f"no wire encoding for {type(obj).__name__}") from None


def from_wire(kind: type[_T], data: bytes) -> _T:
    try:
        decoder = _DECODERS[kind]
    except KeyError:
        raise CodecError(f"no wire decoding for {kind.__name__}") from None
    return decoder(data)
