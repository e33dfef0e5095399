"""Object IDs and timestamps in the Engine API's forms.

IDs are 25 random base36 characters (lowercase letters and digits), as swarm objects
have; times are RFC 3339 strings with nanoseconds in UTC ("2026-11-28T03:05:47.123456789Z").
"""

from __future__ import annotations

import datetime
import os

_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"
ID_LENGTH = 25

# Random bytes map to base36 digits by `bytes.translate`: byte b -> _BASE36[b % 36]. Bytes from
# 252 up are deleted first (252 = 7 * 36), so every digit is equally likely; 32 bytes almost
# always leave at least 25 (about 129 random bits per ID).
_TO_DIGIT = bytes(ord(_BASE36[b % 36]) for b in range(256))
_UNEVEN = bytes(range(7 * 36, 256))
_DRAW = 32


def new_id() -> str:
    """A fresh random 25-character base36 ID."""
    while True:
        digits = os.urandom(_DRAW).translate(_TO_DIGIT, _UNEVEN)
        if len(digits) >= ID_LENGTH:
            return digits[:ID_LENGTH].decode("ascii")


def is_id(text: str) -> bool:
    return len(text) == ID_LENGTH and all(c in _BASE36 for c in text)


_last_formatted: tuple[float, str] = (float("nan"), "")  # callers often format one `now` many times


def format_time(seconds: float) -> str:
    """Unix seconds -> RFC3339Nano in UTC (always 9 fractional digits)."""
    global _last_formatted
    if _last_formatted[0] == seconds:
        return _last_formatted[1]
    text = _format_time(seconds)
    _last_formatted = (seconds, text)
    return text


def _format_time(seconds: float) -> str:
    whole = int(seconds // 1)
    nanos = round((seconds - whole) * 1e9)
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    stamp = datetime.datetime.fromtimestamp(whole, tz=datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def parse_time(text: str) -> float:
    """RFC3339(Nano) -> Unix seconds. Raises ValueError naming the bad text."""
    try:
        body = text.rstrip("Z")
        frac = 0.0
        offset = 0
        if "+" in body[10:] or "-" in body[10:]:
            cut = max(body.rfind("+"), body.rfind("-"))
            sign = 1 if body[cut] == "+" else -1
            hours, minutes = body[cut + 1:].split(":")
            offset = sign * (int(hours) * 3600 + int(minutes) * 60)
            body = body[:cut]
        if "." in body:
            body, digits = body.split(".")
            frac = int(digits) / 10 ** len(digits)
        stamp = datetime.datetime.strptime(body, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.UTC)
    except (ValueError, IndexError) as exc:
        raise ValueError(f"invalid time {text!r}") from exc
    return stamp.timestamp() + frac - offset
