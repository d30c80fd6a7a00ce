"""A pgcopy child process and the parent's end of its line (pgcopy.channel).

Workers are fresh interpreters started with ``python -P -S -c``: they
inherit no open psycopg2 connection, socket or locked mutex (fork would copy the parent's
live libpq sockets), and they end when the parent does: on Linux the kernel kills them
(PR_SET_PDEATHSIG, armed here between fork and exec, so a child needs no ctypes: 0.35 MB
of RSS less each); elsewhere a thread of theirs watches (pgcopy.channel.die_with_parent).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence

from pgcopy import channel

# The child finds pgcopy where we did (a checkout run by bin/pgcopy is on no path of its
# own), and everything else on our path; its argv: its socket's fd, our pid, then ``args``
# (see pgcopy.channel.child_start).  ``inspect`` is deferred before anything imports
# dataclasses (see pgcopy.lean).
_BOOT = (
    "import sys; sys.path[:] = {path!r}; import pgcopy.lean; pgcopy.lean.defer_inspect(); "
    "from {module} import main; main()"
)


def _child_path(root: str) -> list[str]:
    """pgcopy's root, then our sys.path without its first entry when that is the script's
    directory or the working directory (which -P keeps off the child's).  The child runs
    without the site module (-S): site's work (site-packages, .pth files) is already in
    our path, and importing it cost every worker 0.8 MB of RSS (measured at 3,000 tables)."""
    inherited = sys.path if sys.flags.safe_path else sys.path[1:]
    return [root, *(p for p in inherited if p != root)]


PR_SET_PDEATHSIG, PR_GET_PDEATHSIG = 1, 2


def death_signal(libc=None) -> Callable[[], None] | None:
    """What the forked child runs before exec to be killed when we exit (Linux), or None
    (the child then watches for our exit itself).

    It makes one libc call and touches no lock of ours, which is what is safe between fork
    and exec while our other threads (display, FK restore) may hold some.  The setting
    survives exec: it is cleared only for set-user-ID programs.  prctl is tried here first
    (reading the setting changes nothing): where it fails, say under a seccomp filter that
    refuses it, a child told the kernel guards it would be guarded by nothing."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = (libc or ctypes.CDLL(None, use_errno=True)).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    current = ctypes.c_int(0)
    if prctl(PR_GET_PDEATHSIG, ctypes.addressof(current), 0, 0, 0) != 0:
        return None
    sig = int(signal.SIGKILL)

    def arm() -> None:
        if prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            # raised in the child before exec: Popen fails rather than start it unguarded
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")

    return arm


class ChildProcess:
    """``module``'s ``main()`` in a new interpreter, holding ``fds`` too, with ``env``
    added to our environment."""

    def __init__(
        self,
        module: str,
        args: Sequence[str] = (),
        fds: Sequence[int] = (),
        env: Mapping[str, str] | None = None,
    ):
        self.sock, theirs = socket.socketpair()
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        boot = _BOOT.format(path=_child_path(root), module=module)
        arm = death_signal()
        # the child watches for our exit itself where the kernel will not kill it
        guard = "kernel" if arm else "watch"
        try:
            self.proc = subprocess.Popen(
                # -P: `-c` would put the working directory first on sys.path, where a
                # stray socket.py or pickle.py would shadow the standard library's
                [
                    sys.executable,
                    "-P",
                    "-S",
                    "-c",
                    boot,
                    str(theirs.fileno()),
                    str(os.getpid()),
                    guard,
                    *args,
                ],
                stdin=subprocess.DEVNULL,
                pass_fds=[theirs.fileno(), *fds],
                env={**os.environ, **env} if env else None,
                preexec_fn=arm,
            )
        except BaseException:
            self.sock.close()
            raise
        finally:
            theirs.close()  # the child holds its own copy: its exit is our end-of-file
        self.closed = False  # end-of-file read, or closed by us

    def send(self, obj) -> bool:
        """False when the child is gone."""
        try:
            channel.send(self.sock, obj)
            return True
        except OSError:
            return False

    def recv(self):
        """The next message, or None at end-of-file (the child has exited or died)."""
        try:
            return channel.recv(self.sock)
        except (EOFError, OSError):
            self.closed = True
            return None

    def pending(self) -> list:
        """Every message already sent, without waiting."""
        out = []
        while not self.closed and channel.readable(self.sock):
            msg = self.recv()
            if msg is not None:
                out.append(msg)
        return out

    def is_alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def exitcode(self) -> int | None:
        return self.proc.poll()

    def join(self, timeout: float | None = None) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def terminate(self) -> None:
        if self.is_alive():
            self.proc.terminate()

    def kill(self) -> None:
        if self.is_alive():
            self.proc.kill()

    def close(self) -> None:
        self.closed = True
        self.sock.close()
