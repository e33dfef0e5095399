"""Pure: would a `conntrack -D` filter (the forms plan.py writes) delete any of these entries?

A namespace's conntrack table is listed in /proc/net/nf_conntrack, one entry a line:
  ipv4 2 tcp 6 117 TIME_WAIT src=A dst=B sport=P dport=Q src=C dst=D sport=R dport=S [ASSURED] ...
the first src/dst/sport/dport being the original direction, the second the reply. Running
`conntrack -D` costs a process (nsenter, conntrack); a task's table is small and rarely holds a
connection to the backend being flushed, so a look at the listing first saves nearly all of them.
"""

from __future__ import annotations

from collections.abc import Sequence

# option -> (direction: 0 original, 1 reply; field)
_FIELDS = {"-d": (0, "dst"), "-r": (1, "src"), "--orig-port-dst": (0, "dport"), "--reply-port-src": (1, "sport")}


def _entry(line: str) -> tuple[str, list[dict[str, str]]] | None:
    words = line.split()
    if len(words) < 4:
        return None
    sides: list[dict[str, str]] = [{}, {}]
    for word in words[3:]:
        key, eq, value = word.partition("=")
        if not eq or key not in ("src", "dst", "sport", "dport"):
            continue
        side = 0 if key not in sides[0] else 1
        sides[side].setdefault(key, value)
    return words[2], sides


def any_match(listing: str, args: Sequence[str]) -> bool | None:
    """Whether `conntrack -D <args>` would delete an entry of `listing`; None when `args` has an
    option this does not know (then only running it tells)."""
    if len(args) % 2:
        return None
    proto = None
    wanted: list[tuple[int, str, str]] = []
    for option, value in zip(args[::2], args[1::2], strict=True):
        if option == "-p":
            proto = value
        elif option in _FIELDS:
            side, field = _FIELDS[option]
            wanted.append((side, field, value))
        else:
            return None
    for line in listing.splitlines():
        entry = _entry(line)
        if entry is None:
            continue
        name, sides = entry
        if (proto is None or name == proto) and all(sides[s].get(f) == v for s, f, v in wanted):
            return True
    return False
