"""A bounded HTTP load client for the routing-mesh lab tests, run inside a lab host's namespace:

    python mesh_client.py URL STOP_FILE MAX_SECONDS MAX_REQUESTS

Sends GET requests one after the other, each on a new connection, paced 20 ms apart, until
STOP_FILE exists or a bound is hit; then prints one JSON line: {"requests", "failures",
"errors" (the first 20), "answered_by" (hostname -> count)}. It writes "started" to STOP_FILE.started
once its first request succeeded, so the test knows the client runs before it changes anything."""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path

PACE = 0.02


def main() -> None:
    url, stop, seconds, limit = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    started = stop.with_name(stop.name + ".started")
    deadline = time.monotonic() + seconds
    requests = failures = 0
    errors: list[str] = []
    answered: dict[str, int] = {}
    while requests < limit and time.monotonic() < deadline and not stop.exists():
        requests += 1
        try:
            body = urllib.request.urlopen(url, timeout=3).read().decode().strip()
            name = body.split(" ", 1)[0]
            answered[name] = answered.get(name, 0) + 1
            if not started.exists():
                started.write_text("started")
        except Exception as exc:      # every failure counts, whatever its kind
            failures += 1
            if len(errors) < 20:
                errors.append(f"{time.monotonic():.3f} {exc!r}")
        time.sleep(PACE)
    print(json.dumps({"requests": requests, "failures": failures, "errors": errors, "answered_by": answered}))


if __name__ == "__main__":
    main()
