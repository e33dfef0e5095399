"""Drive an interactive program (e.g. `docker exec -it … sh`) through a pseudo-terminal, as a
user at a terminal would: `send` keystrokes, `expect` output, `wait` for the exit code. Every
wait is bounded; leaving the block kills the program if it is still there."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import struct
import termios
from types import TracebackType


class PtySession:
    def __init__(self, argv: list[str], env: dict[str, str] | None = None, *, rows: int = 24,
                 cols: int = 80, timeout: float = 20.0) -> None:
        self.argv, self.env, self.size, self.timeout = argv, env, (rows, cols), timeout
        self.output = b""
        self._seen = 0
        self._master = -1
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> PtySession:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *self.size, 0, 0))
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=slave, stdout=slave, stderr=slave, env=self.env, start_new_session=True)
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self._master = master
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await self._proc.wait()
        if self._master >= 0:
            os.close(self._master)
            self._master = -1

    async def send(self, data: bytes) -> None:
        os.write(self._master, data)

    async def _read_more(self) -> bool:
        """Read what the program wrote next; False once the terminal is closed (EIO)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except BlockingIOError:
                ready: asyncio.Future[None] = loop.create_future()
                loop.add_reader(self._master, _wake, ready)
                try:
                    await ready
                finally:
                    loop.remove_reader(self._master)
                continue
            except OSError as e:
                if e.errno == errno.EIO:
                    return False
                raise
            self.output += chunk
            return bool(chunk)

    async def expect(self, pattern: bytes) -> bytes:
        """Until `pattern` appears after what earlier expects matched; all output so far."""
        try:
            async with asyncio.timeout(self.timeout):
                while (at := self.output.find(pattern, self._seen)) < 0:
                    if not await self._read_more():
                        raise AssertionError(f"{pattern!r} never came; output: {self.output!r}")
        except TimeoutError:
            raise AssertionError(f"{pattern!r} not seen within {self.timeout}s; output: {self.output!r}") from None
        self._seen = at + len(pattern)
        return self.output

    async def wait(self) -> int:
        """Read to the end of the output, then the program's exit code."""
        assert self._proc is not None
        async with asyncio.timeout(self.timeout):
            while await self._read_more():
                pass
            return await self._proc.wait()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
