"""--output interactive: a full-screen live view; q asks, then cancels like Ctrl-C."""

from __future__ import annotations

from blessed import Terminal

from pgcopy import fmt
from pgcopy.catalog import qualname
from pgcopy.progress import duration
from pgcopy.ui.bar import bar
from pgcopy.ui.base import LiveView


class InteractiveView(LiveView):
    def __init__(self, *args, term: Terminal | None = None, **kw):
        super().__init__(*args, **kw)
        self.term = term or Terminal()
        self.asking = False
        self.cancelled = False
        self._cbreak = None

    def _sink(self, line: str) -> None:
        self.recent.append(line)

    def setup(self) -> None:
        t = self.term
        self._cbreak = t.cbreak()
        self._cbreak.__enter__()
        t.stream.write(t.enter_fullscreen + t.hide_cursor + t.clear)
        t.stream.flush()
        self.log_.sink = self._sink

    def wait(self, seconds: float) -> None:
        # stdin is a terminal here (checked before choosing this view), so inkey sleeps
        key = self.term.inkey(timeout=seconds)
        if not key:
            return
        if self.asking:
            self.asking = False
            if key.lower() == "y":
                self.cancelled = True
                self.recent.append("cancel requested from the keyboard: stopping like Ctrl-C")
                self.request_stop()
        elif key.lower() == "q" and not self.cancelled:
            self.asking = True

    def lines(self) -> list[str]:
        t, s = self.term, self.snapshot()
        w = max(t.width, 40)
        out = [
            t.bold("pgcopy copy")
            + f"  {s.tables_done}/{s.tables_total} tables done, {s.tables_failed} failed, "
            f"{s.tables_total - s.tables_done - s.tables_failed - len(s.in_flight)} queued"
        ]
        head = f" {s.fraction * 100:5.1f}% "
        tail = f" {s.rate / 1e6:.1f} MB/s  {s.rows_rate:,.0f} rows/s  ETA {duration(s.eta)}"
        out.append(head + bar(s.fraction, w - len(head) - len(tail) - 1) + tail)
        out.append(
            f" now: {self.phase_label(s)}"
            + (f"  ({s.fks_done}/{s.fks_total} foreign keys settled)" if s.fks_total else "")
        )
        out.append(f" {fmt.size(s.bytes)} of ~{fmt.size(s.total_bytes)} streamed, {s.rows:,.0f} rows")
        out.append("")
        out.append(t.underline(" workers"))
        for f in s.in_flight:
            name = self.tasks[f.task].qualname
            what = "rebuilding indexes" if f.indexing else f"{f.rate / 1e6:6.1f} MB/s"
            out.append(
                f"  {name[:36]:<36} {bar(f.fraction, 12)} {f.fraction * 100:3.0f}% {what} {duration(f.seconds):>7}"
            )
        for _ in range(self.bus.nworkers - len(s.in_flight)):
            out.append("  (idle)")
        busy = {f.task for f in s.in_flight}
        queued = [i for i in range(len(self.tasks)) if i not in busy and not self.model.settled(i)]
        if queued:
            # by the model's sizes (the stream expected of each), one task read for its name
            largest = self.tasks[max(queued, key=self.model.exp_bytes.__getitem__)]
            out.append(f" largest remaining: {qualname(largest.key)} (~{fmt.size(largest.data_bytes)})")
        if s.in_flight:
            slow = min(s.in_flight, key=lambda f: f.rate)
            out.append(f" slowest in flight: {self.tasks[slow.task].qualname} ({slow.rate / 1e6:.1f} MB/s)")
        out.append("")
        footer = t.reverse(" Cancel the copy? y = yes, any other key = no ") if self.asking else " q: cancel"
        room = t.height - len(out) - 2
        if room > 0:
            out.append(t.underline(" log"))
            out.extend("  " + line for line in list(self.recent)[-(room - 1) :] if room > 1)
        out = out[: t.height - 1]
        out += [""] * (t.height - 1 - len(out))
        out.append(footer)
        return [line[: w + 40] for line in out]

    def tick(self) -> None:
        t = self.term
        lines = self.lines()
        t.stream.write(t.home + "".join(t.move_xy(0, i) + line + t.clear_eol for i, line in enumerate(lines)))
        t.stream.flush()

    def teardown(self) -> None:
        self.log_.sink = None
        t = self.term
        t.stream.write(t.exit_fullscreen + t.normal_cursor)
        t.stream.flush()
        if self._cbreak is not None:
            self._cbreak.__exit__(None, None, None)
        # keep the run's log on the normal screen
        for line in self.recent:
            t.stream.write(line + "\n")
        t.stream.flush()
