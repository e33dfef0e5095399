"""Engine API multiplexed log streams: `[stream, 0, 0, 0, len32be] + payload` frames.

`docker logs`, `docker service logs` and attach read stdout and stderr interleaved in these
frames when there is no TTY. Pure functions: build a frame, split a byte stream back into
frames, and spell the `--details` prefix ("k=v,..." with URL-escaped keys and values).
"""

from __future__ import annotations

import struct
from urllib.parse import quote

STDOUT, STDERR = 1, 2
_HEADER = struct.Struct(">BxxxL")


def frame(stream_id: int, payload: bytes) -> bytes:
    """An Engine API multiplexed stream frame."""
    return _HEADER.pack(stream_id, len(payload)) + payload


def details_text(details: dict[str, str]) -> str:
    """The `--details` prefix of a log line: `k=v,...`, keys and values URL-escaped."""
    return ",".join(f"{quote(k, safe='.')}={quote(v, safe='.')}" for k, v in details.items())


def parse_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Split a multiplexed stream into (stream id, payload) frames, plus an incomplete rest."""
    out, pos = [], 0
    while len(data) - pos >= _HEADER.size:
        stream_id, length = _HEADER.unpack_from(data, pos)
        if len(data) - pos - _HEADER.size < length:
            break
        start = pos + _HEADER.size
        out.append((stream_id, data[start:start + length]))
        pos = start + length
    return out, data[pos:]
