"""Entry point of the `shoal` console script (also `python -m cli.main`).

Errors end as one line on stderr. A bug (an exception no command expected) is reported as one
line too, naming the exception; `SHOAL_DEBUG=1` shows the traceback.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    from cli.commands import shoal

    try:
        shoal(standalone_mode=True)
    except Exception as e:  # click handles its own errors and exits; anything else is a bug
        if os.environ.get("SHOAL_DEBUG"):
            raise
        print(f"shoal: internal error: {type(e).__name__}: {e} (set SHOAL_DEBUG=1 for details)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
