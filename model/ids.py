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
# 252 up are deleted first (252 = 7 * 36), so every digit is equally likely and independent.
# Reading the OS's CSPRNG costs a system call, so a block of bytes is drawn at once and cut into
# IDs kept in a pool; each ID is handed out exactly once (`list.pop` is atomic under the GIL, so
# threads never share one; a forked child starts with an empty pool, never with its parent's).
_TO_DIGIT = bytes(ord(_BASE36[b % 36]) for b in range(256))
_UNEVEN = bytes(range(7 * 36, 256))
_BLOCK = 4096  # bytes per draw: about 4,030 digits, 161 IDs

_id_pool: list[str] = []
os.register_at_fork(after_in_child=_id_pool.clear)


def _refill_ids() -> None:
    digits = os.urandom(_BLOCK).translate(_TO_DIGIT, _UNEVEN).decode("ascii")
    _id_pool.extend([digits[start:start + ID_LENGTH]
                     for start in range(0, len(digits) - ID_LENGTH + 1, ID_LENGTH)])


def new_id() -> str:
    """A fresh random 25-character base36 ID (from the OS's CSPRNG)."""
    while True:
        try:
            return _id_pool.pop()
        except IndexError:
            _refill_ids()


def is_id(text: str) -> bool:
    return len(text) == ID_LENGTH and all(c in _BASE36 for c in text)


# Callers often format one `now` many times, and many `now`s fall within one second: the last
# result is kept, and the "YYYY-MM-DDTHH:MM:SS" text of the last whole second, so `strftime`
# runs once per second of time formatted. Each cache is one tuple, replaced whole (thread-safe).
_last_formatted: tuple[float, str] = (float("nan"), "")
_last_second: tuple[int | None, str] = (None, "")


def format_time(seconds: float) -> str:
    """Unix seconds -> RFC3339Nano in UTC (always 9 fractional digits)."""
    global _last_formatted, _last_second
    last_seconds, last_text = _last_formatted
    if last_seconds == seconds:
        return last_text
    whole = int(seconds // 1)
    nanos = round((seconds - whole) * 1e9)
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    cached_whole, prefix = _last_second
    if cached_whole != whole:
        prefix = _second_text(whole)
        _last_second = (whole, prefix)
    text = f"{prefix}.{nanos:09d}Z"
    _last_formatted = (seconds, text)
    return text


def _second_text(whole: int) -> str:
    return datetime.datetime.fromtimestamp(whole, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")


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
