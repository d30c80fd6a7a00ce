"""How a run stops: the signal flag the phases poll, and the run's own server sessions.

A stop never just kills processes: the run's statements are cancelled on the destination
server (its sessions are found by the run's ``application_name``), and the coordinator
waits until none is active before it restores anything.
"""

from __future__ import annotations

import signal
import time

from pgcopy.connections import Session
from pgcopy.errors import EXIT_SIGHUP, EXIT_SIGINT, EXIT_SIGTERM
from pgcopy.fkearly import EarlyRestorer

SIGNAL_EXIT = {signal.SIGINT: EXIT_SIGINT, signal.SIGTERM: EXIT_SIGTERM, signal.SIGHUP: EXIT_SIGHUP}


class StopFlag:
    """Signal handlers only record the signal; the phases poll it.

    A second signal raises KeyboardInterrupt, which abandons the restore phase."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def _handler(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def install(self) -> None:
        for sig in SIGNAL_EXIT:
            self._old[sig] = signal.signal(sig, self._handler)

    def uninstall(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def request(self, signum: int) -> None:
        """A stop asked for from inside (the interactive view's q)."""
        if self.signum is None:
            self.signum = signum

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return SIGNAL_EXIT.get(self.signum, EXIT_SIGINT)


class RunBackends:
    """The run's own sessions on the destination, found by its application_name.

    ``before_cancel``/``before_wait`` stop the coordinator's own helper threads (the early
    FK restore) around the cancel, so nothing starts new server work meanwhile."""

    def __init__(self, conn, session: Session, before_cancel=None, before_wait=None):
        self.conn, self.app = conn, session.app_name
        self.before_cancel, self.before_wait = before_cancel, before_wait

    def _each(self, fn: str) -> int:
        """Apply ``fn`` to our busy sessions (idle ones hold no locks); count them."""
        cur = self.conn.cursor()
        cur.execute(
            f"SELECT count({fn}(pid)) FROM pg_stat_activity "  # fn is one of our own names
            "WHERE application_name = %s AND pid <> pg_backend_pid() AND state IS DISTINCT FROM 'idle'",
            (self.app,),
        )
        n = cur.fetchone()[0]
        self.conn.commit()
        return n

    def cancel(self) -> None:
        if self.before_cancel is not None:
            self.before_cancel()
        try:
            self._each("pg_cancel_backend")
        except Exception:
            self.conn.rollback()

    def wait_gone(self, timeout: float = 10.0) -> None:
        """Until no statement of ours runs on the server; terminate what outlives the wait."""
        if self.before_wait is not None:
            self.before_wait()
        end = time.monotonic() + timeout
        try:
            while self._each("") and time.monotonic() < end:
                time.sleep(0.1)
            self._each("pg_terminate_backend")
        except Exception:
            self.conn.rollback()


class Tee:
    """The load's reporter: the display, plus the early FK restore hearing of finished tables."""

    def __init__(self, view, early: EarlyRestorer):
        self._view, self._early = view, early

    def table_done(self, result, position: int | None = None) -> None:
        self._early.table_finished(result.key, position)
        self._view.table_done(result, position)

    def table_failed(self, result, position: int | None = None) -> None:
        self._early.table_finished(result.key, position)
        self._view.table_failed(result, position)

    def __getattr__(self, name):
        return getattr(self._view, name)
