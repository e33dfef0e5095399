"""Detach keys: the key sequence that detaches a client from an attached TTY (`docker exec -it`,
`docker attach`) and leaves the process running.

Theory of operation: the sequence is written as dockerd reads it (`--detach-keys`, the CLI's
`detachKeys` setting): comma-separated keys, each one character or `ctrl-<c>` for `c` in `@`,
`a`-`z`, `[`, `\\`, `]`, `^`, `_` (codes 0-31), or `DEL` (127). The default is `ctrl-p,ctrl-q`.
`EscapeScanner` watches the client's input: bytes that could start the sequence are held back
until the sequence completes (detach: the held bytes are dropped) or breaks (they go through),
so the process sees exactly what the user typed minus a complete sequence. As in dockerd, only
a TTY's input is scanned.
"""

from __future__ import annotations

DEFAULT = "ctrl-p,ctrl-q"
_CTRL = "@abcdefghijklmnopqrstuvwxyz[\\]^_"


def parse(keys: str) -> bytes:
    """`ctrl-p,ctrl-q` → b"\\x10\\x11"; ValueError naming the key for anything else."""
    out = bytearray()
    for key in keys.split(","):
        if len(key) == 1:
            out.append(key.encode()[0])
        elif key == "DEL":
            out.append(127)
        elif len(key) == 6 and key.startswith("ctrl-") and key[5] in _CTRL:
            out.append(_CTRL.index(key[5]))
        else:
            raise ValueError(f"Unknown character: '{key}'")
    return bytes(out)


class EscapeScanner:
    def __init__(self, keys: bytes) -> None:
        self.keys = keys
        self._held = 0            # how many bytes of the sequence the input ended with

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """What to pass on from `data`, and whether the sequence completed (then the rest of
        `data` after it is dropped: the client has detached)."""
        out = bytearray()
        for byte in data:
            if byte == self.keys[self._held]:
                self._held += 1
                if self._held == len(self.keys):
                    self._held = 0
                    return bytes(out), True
                continue
            if self._held:
                out += self.keys[:self._held]      # a broken sequence: what was held goes through
                self._held = 0
                if byte == self.keys[0]:
                    self._held = 1
                    continue
            out.append(byte)
        return bytes(out), False
