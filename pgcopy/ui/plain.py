"""--output plain: log lines as they come, plus one progress line every interval."""

from __future__ import annotations

import time

from pgcopy.ui.base import LiveView, progress_line


class PlainView(LiveView):
    def __init__(self, *args, interval: float = 10.0, **kw):
        super().__init__(*args, **kw)
        self.interval = interval
        self._next = time.monotonic() + interval

    def tick(self) -> None:
        if time.monotonic() >= self._next:
            self._next += self.interval
            s = self.snapshot()
            self.log_.info(progress_line(s, self.tasks, self.phase_label(s)))

    def teardown(self) -> None:
        pass
