"""aio: how shoal owns asyncio tasks (a leaf: it imports nothing of shoal).

`cancel_and_wait` is the one way to stop children: cancel them, wait until they have finished,
and let a cancellation of the caller itself propagate (awaiting a cancelled child under
`suppress(CancelledError)` would swallow the caller's own cancellation). `Backoff` spaces the
restarts of a loop that crashed.
"""

from aio.tasks import Backoff, cancel_and_wait

__all__ = ["Backoff", "cancel_and_wait"]
