"""Choosing the display for --output."""

from __future__ import annotations

import sys

from pgcopy.log import Logger
from pgcopy.ui.base import FkEstimate, LogReporter

OUTPUTS = ("auto", "plain", "progress", "interactive")


def resolve_output(requested: str, log: Logger) -> str:
    """auto: progress on a terminal, plain otherwise; a live view without a TTY falls back."""
    tty = sys.stdout.isatty() and sys.stdin.isatty()
    if requested == "auto":
        return "progress" if tty else "plain"
    if requested in ("progress", "interactive") and not tty:
        log.info(f"note: --output {requested} needs a terminal on stdin and stdout; using plain output")
        return "plain"
    return requested


def make_view(
    output: str,
    log: Logger,
    tasks,
    bus,
    request_stop,
    interval: float,
    fkeys=(),
    fk_bytes=(),
    small=frozenset(),
    index=None,
) -> LogReporter:
    """For the ETA: ``fk_bytes``, per FK of ``fkeys``, the referencing table's size;
    ``small``, the tables between which FKs are added validated in one statement (on one
    connection); ``index``, each task's position (made from ``tasks`` if not given)."""
    fk = FkEstimate(fkeys, fk_bytes, small)
    if output == "progress":
        from pgcopy.ui.bar import BarView

        return BarView(log, tasks, bus, request_stop, fk, index)
    if output == "interactive":
        from pgcopy.ui.interactive import InteractiveView

        return InteractiveView(log, tasks, bus, request_stop, fk, index)
    from pgcopy.ui.plain import PlainView

    return PlainView(log, tasks, bus, request_stop, fk, index, interval=interval)
