"""--output progress: a bar pinned on the top line, log lines scrolling underneath.

The terminal's scroll region is set to every line but the first, so log lines written at
the bottom scroll inside it and the bar on line 0 never moves.  Only the renderer thread
writes to the terminal; log lines reach it through a queue.
"""

from __future__ import annotations

from collections import deque

from blessed import Terminal

from pgcopy.progress import duration
from pgcopy.ui.base import LiveView


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
        self.names = [t.qualname for t in self.tasks]

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
        # make room: the first line belongs to the bar from now on
        t.stream.write("\n" + t.move_xy(0, 0) + t.clear_eol)
        self._region()
        t.stream.flush()
        self.log_.sink = self._sink

    def status(self) -> str:
        s = self.snapshot()
        if self.phase_text:
            return f" {self.phase_text}  ({s.tables_done}/{s.tables_total} tables, {s.rows:,.0f} rows copied)"
        head = f" {s.fraction * 100:5.1f}% "
        tail = (
            f" {s.tables_done}/{s.tables_total} tables  {s.rows:,.0f} rows  "
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
            line = self.pending.popleft()
            out.append(t.move_xy(0, t.height - 1) + "\n" + line[: t.width])
        out.append(t.save + t.move_xy(0, 0) + t.reverse(self.status()[: t.width]) + t.clear_eol + t.restore)
        t.stream.write("".join(out))
        t.stream.flush()

    def teardown(self) -> None:
        self.log_.sink = None
        t = self.term
        rest = list(self.pending)
        self.pending.clear()
        out = "".join(t.move_xy(0, t.height - 1) + "\n" + line for line in rest)
        # the whole screen scrolls again; leave the cursor on a fresh bottom line
        t.stream.write(out + t.csr(0, t.height - 1) + t.move_xy(0, t.height - 1) + "\n" + t.normal_cursor)
        t.stream.flush()
