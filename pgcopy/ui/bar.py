"""--output progress: a bar pinned on the top line, log lines scrolling underneath.

To make room, the screen first scrolls up one line (the top line goes to the terminal's
scrollback, not overwritten) and a blank line is inserted at the top, so what was on the
screen stays where it was.  The scroll region is then every line but the first: log lines
written at the bottom scroll inside it and the bar on line 0 never moves.  Long log lines
are wrapped, not cut.  Only the renderer thread writes to the terminal; log lines reach it
through a queue.
"""

from __future__ import annotations

from collections import deque

from blessed import Terminal

from pgcopy.progress import duration
from pgcopy.ui.base import LiveView


def wrap(line: str, width: int) -> list[str]:
    """A log line as screen rows of at most ``width`` characters."""
    width = max(width, 1)
    return [line[i : i + width] for i in range(0, len(line), width)] or [""]


def bar(fraction: float, width: int) -> str:
    width = max(width, 5)
    full = int(fraction * width)
    return "█" * full + "░" * (width - full)


class BarView(LiveView):
    def __init__(self, *args, term: Terminal | None = None, **kw):
        super().__init__(*args, **kw)
        self.term = term or Terminal()
        self.pending: deque[str] = deque()
        self.size = (0, 0)

    def _sink(self, line: str) -> None:
        self.pending.append(line)  # never blocks the caller
        self.recent.append(line)

    def _region(self) -> None:
        t = self.term
        self.size = (t.height, t.width)
        out = t.csr(1, t.height - 1) + t.move_xy(0, t.height - 1)
        self.term.stream.write(out)

    def setup(self) -> None:
        t = self.term
        # make room without losing a line: scroll the whole screen up one line (its top
        # line goes to the scrollback), then insert a blank line at the top (the bottom
        # line, blank after the scroll, drops off)
        t.stream.write(t.move_xy(0, t.height - 1) + "\n" + t.move_xy(0, 0) + t.il1)
        self._region()
        t.stream.flush()
        self.log_.sink = self._sink

    def status(self) -> str:
        s = self.snapshot()
        head = f" {s.fraction * 100:5.1f}% "
        fks = f", {s.fks_done}/{s.fks_total} FKs" if s.fks_total else ""
        tail = (
            f" {self.phase_label(s)} | {s.tables_done}/{s.tables_total} tables{fks}  {s.rows:,.0f} rows  "
            f"{s.rate / 1e6:.1f} MB/s  ETA {duration(s.eta)}"
        )
        width = max(self.term.width - len(head) - len(tail) - 2, 10)
        return head + bar(s.fraction, width) + tail

    def tick(self) -> None:
        t = self.term
        out = []
        if (t.height, t.width) != self.size:  # window resized
            self._region()
            out.append(t.move_xy(0, 0) + t.clear_eol)
        while self.pending:
            for row in wrap(self.pending.popleft(), t.width):
                out.append(t.move_xy(0, t.height - 1) + "\n" + row)
        out.append(t.save + t.move_xy(0, 0) + t.reverse(self.status()[: t.width]) + t.clear_eol + t.restore)
        t.stream.write("".join(out))
        t.stream.flush()

    def teardown(self) -> None:
        self.log_.sink = None
        t = self.term
        rest = list(self.pending)
        self.pending.clear()
        out = "".join(t.move_xy(0, t.height - 1) + "\n" + row for line in rest for row in wrap(line, t.width))
        # the whole screen scrolls again; leave the cursor on a fresh bottom line
        t.stream.write(out + t.csr(0, t.height - 1) + t.move_xy(0, t.height - 1) + "\n" + t.normal_cursor)
        t.stream.flush()
