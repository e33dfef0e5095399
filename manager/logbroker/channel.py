"""A bounded, closable channel of log item batches between publishers and one reader.

Invariant: at most `limit` batches wait; a publisher past the bound waits for room (the agent's
`logs.publish` call is held, so a slow reader slows the workers instead of growing memory).
Warnings bypass the bound: they are few and must not be lost. `finish()` lets the reader drain
what is queued and then see the end; `close()` (the reader went away) drops everything and
wakes every waiting publisher, which then learns that nobody listens.
"""

from __future__ import annotations

import asyncio
from collections import deque

from manager.logbroker.types import LogItem

DEFAULT_LIMIT = 64


class ChannelEnded(Exception):
    """The channel finished and everything queued was read."""


class LogChannel:
    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self._limit = limit
        self._batches: deque[list[LogItem]] = deque()
        self._readable = asyncio.Event()
        self._room = asyncio.Event()
        self.finished = False     # no more batches will come
        self.closed = False       # the reader is gone

    async def put(self, batch: list[LogItem]) -> bool:
        """Queue a batch, waiting for room; False when the reader is gone or the channel ended."""
        while len(self._batches) >= self._limit and not (self.closed or self.finished):
            self._room.clear()
            await self._room.wait()
        if self.closed or self.finished:
            return False
        if batch:
            self._batches.append(batch)
            self._readable.set()
        return True

    def put_unbounded(self, batch: list[LogItem]) -> None:
        if not (self.closed or self.finished) and batch:
            self._batches.append(batch)
            self._readable.set()

    async def get(self, timeout: float | None = None) -> list[LogItem]:
        """The next batch; [] when `timeout` passes first; ChannelEnded at the end."""
        if not self._batches and not self.finished and not self.closed:
            self._readable.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._readable.wait()
            except TimeoutError:
                return []
        if self._batches:
            batch = self._batches.popleft()
            self._room.set()
            return batch
        raise ChannelEnded

    def finish(self) -> None:
        self.finished = True
        self._readable.set()
        self._room.set()

    def close(self) -> None:
        self.closed = True
        self._batches.clear()
        self._readable.set()
        self._room.set()
