"""The line between the coordinator and one worker process.

    coordinator                                   worker
        ── WorkerStart ─────────────────────────▶  once, first
        ◀─ ("ready", wid, None) ──────────────────  idle: asks for its next item
        ── item | None | STOP ──────────────────▶  a list of (index, task); None: no more work;
                                                   STOP: stop now (may come at any time)
        ◀─ ("start"/"done"/"failed"/"log"/"exit", wid, payload)  start: the task's index;
                                                   done/failed: (index, TableResult)

A worker is a plain child process (``python -P -S -c 'from pgcopy.worker import main; main()'``,
see pgcopy.child) holding one end of a socket pair that carries pickled messages, each
behind its length, and, for the progress bus, the memfd of its shared memory.

Why not multiprocessing: its spawn method starts a resource-tracker process for every run
(a whole interpreter: 13 MB of RSS, measured), its queues and events are named semaphores
that a killed coordinator leaves behind, and importing multiprocessing.connection alone
costs each process 1.9 MB more than pickle and socket.  A socket pair and a memfd vanish
with the last process holding them; a worker whose coordinator died reads end-of-file
(and is killed by PR_SET_PDEATHSIG anyway, see pgcopy.child).
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import struct
import sys
import threading
import time

STOP = "stop"
_LENGTH = struct.Struct("!I")


# A message this big (a batch of very wide tables' tasks) is written after its length, not
# joined to it, which held it twice while sent.  The many small ones stay one write.
BIG = 1 << 16


def send(sock: socket.socket, obj) -> None:
    data = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    if len(data) < BIG:
        sock.sendall(_LENGTH.pack(len(data)) + data)
        return
    sock.sendall(_LENGTH.pack(len(data)))
    sock.sendall(data)


def recv(sock: socket.socket):
    """The next message; EOFError when the other end has closed (or exited)."""
    (n,) = _LENGTH.unpack(_exactly(sock, _LENGTH.size))
    return pickle.loads(_exactly(sock, n))


def readable(sock: socket.socket) -> bool:
    """A message (or end-of-file) is waiting."""
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)  # b"" at end-of-file
    except BlockingIOError:
        return False
    except OSError:
        pass  # broken: the next recv says so
    return True


def _exactly(sock: socket.socket, n: int) -> bytearray:
    """``n`` bytes, received into one buffer (chunks joined, then copied to bytes, held a
    big message three times)."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            raise EOFError
        got += k
    view.release()
    return buf


def die_with_parent(parent_pid: int, guard: str) -> None:
    """Never outlive the coordinator.  ``guard`` "kernel": it sends us SIGKILL when our
    parent exits (armed by pgcopy.child before exec); "watch": a thread watches the
    parent's pid."""
    if guard != "kernel":

        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os._exit(1)


def child_start() -> tuple[socket.socket, list[str]]:
    """A child's first steps (argv from pgcopy.child: socket fd, parent pid, guard, the
    rest): its socket to the parent, and the rest of its argv."""
    # The parent owns Ctrl-C and hangups: it cancels our statements, then stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    fd, parent_pid, guard, *rest = sys.argv[1:]
    die_with_parent(int(parent_pid), guard)
    os.set_inheritable(int(fd), False)
    return socket.socket(fileno=int(fd)), rest


def first_message(sock: socket.socket):
    """The parent's first message, or None when the parent is gone already."""
    try:
        return recv(sock)
    except (EOFError, OSError):
        return None


class Line:
    """The worker's end: asks for items, sends messages (from any thread), sees STOP."""

    def __init__(self, sock: socket.socket, wid: int):
        self._sock, self._wid = sock, wid
        self._lock = threading.Lock()  # a message is written whole
        self._stopped = False

    def put(self, kind: str, payload) -> None:
        with self._lock:
            try:
                send(self._sock, (kind, self._wid, payload))
            except OSError:
                pass  # the coordinator is gone: PR_SET_PDEATHSIG ends us

    def next_item(self):
        """The next item, or None when there is no more work or the run stops."""
        if self.stopped():
            return None
        self.put("ready", None)
        return self._take()

    def _take(self):
        try:
            msg = recv(self._sock)
        except (EOFError, OSError):
            msg = STOP  # the coordinator is gone
        if isinstance(msg, str) and msg == STOP:
            self._stopped = True
            return None
        return msg

    def stopped(self) -> bool:
        """Has the coordinator said STOP?  (Between items only STOP can arrive.)"""
        if not self._stopped and readable(self._sock):
            self._take()
        return self._stopped
