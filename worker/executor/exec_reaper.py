"""The parent of a TTY exec's process: `python -m worker.executor.exec_reaper PIDFILE RUNC_ARGV...`.

A `docker exec -t` runs `runc exec --tty --detach --console-socket S`: runc hands the container
pty's master to the daemon over S (one terminal, one ONLCR translation, as dockerd's shim) and
exits once the process runs. The process is then an orphan; this helper, a child subreaper
(PR_SET_CHILD_SUBREAPER), inherits it, waits for it and exits with its exit code (128+N when a
signal N ended it), so the daemon learns the code by waiting for the helper. When runc fails
(it could not start the process) the helper exits with runc's code; runc's stderr is the
helper's. Only the exec's own process comes here: orphans inside the container's pid namespace
go to the container's init.
"""

from __future__ import annotations

import ctypes
import os
import sys

PR_SET_CHILD_SUBREAPER = 36


def _code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: exec_reaper PIDFILE RUNC_ARGV...", file=sys.stderr)
        return 2
    pid_file, runc_argv = argv[0], argv[1:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"exec: cannot become a subreaper: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        return 255
    runc = os.posix_spawn(runc_argv[0], runc_argv, dict(os.environ))
    ended: dict[int, int] = {}            # children reaped before their turn came
    target = 0
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            print("exec: the process was lost", file=sys.stderr)
            return 255
        ended[pid] = status
        if pid == runc:
            code = _code(status)
            if code != 0:
                return code
            with open(pid_file) as f:
                target = int(f.read().strip())
        if target and target in ended:
            return _code(ended[target])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
