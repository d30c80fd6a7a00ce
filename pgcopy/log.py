"""Log lines in the reference tool's format: ``HH:MM:SS LEVEL message`` on stderr."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

LEVELS = ("DEBUG", "INFO", "DONE", "WARN", "ERROR")


def silence_broken_output(stream: TextIO) -> None:
    """Point ``stream`` (stdout or stderr) at /dev/null once its reader has gone, so later
    writes and the interpreter's final flush cannot fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stream.fileno())
    except (OSError, ValueError):
        pass
    os.close(devnull)


def safe_write(stream: TextIO, text: str) -> None:
    try:
        stream.write(text)
        stream.flush()
    except (BrokenPipeError, OSError, ValueError):
        silence_broken_output(stream)


@dataclass
class Logger:
    """Leveled log lines to a stream (or a live display's sink); warnings are kept for the report."""

    stream: TextIO | None = field(default_factory=lambda: sys.stderr)
    debug_enabled: bool = False
    warnings: list[str] = field(default_factory=list)
    # a live display takes the lines over while it runs (see pgcopy.ui)
    sink: Callable[[str], None] | None = None
    logfile: TextIO | None = None  # --log-file: every line, plain format
    # the coordinator and a display thread both log: one line at a time
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def emit(self, level: str, message: str) -> None:
        if level == "DEBUG" and not self.debug_enabled:
            return
        if level == "WARN":
            self.warnings.append(message)
        with self._lock:
            self._emit(level, message)

    def _emit(self, level: str, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        for i, line in enumerate(message.splitlines() or [""]):
            prefix = f"{stamp} {level:<5} " if i == 0 else " " * 15
            text = prefix + line
            if self.logfile is not None:
                self.logfile.write(text + "\n")
                self.logfile.flush()
            if self.sink is not None:
                self.sink(text)
            else:
                self._write(text + "\n")
        if self.sink is None:
            self._write(None)

    def _write(self, text: str | None) -> None:
        """A closed terminal or pipe (`| head`, a dropped SSH session) never stops a run:
        its lines are dropped from then on; --log-file keeps them."""
        if self.stream is None:
            return
        try:
            if text is not None:
                self.stream.write(text)
            else:
                self.stream.flush()
        except (BrokenPipeError, OSError, ValueError):
            silence_broken_output(self.stream)
            self.stream = None

    def debug(self, message: str) -> None:
        self.emit("DEBUG", message)

    def info(self, message: str) -> None:
        self.emit("INFO", message)

    def done(self, message: str) -> None:
        self.emit("DONE", message)

    def warn(self, message: str) -> None:
        self.emit("WARN", message)

    def error(self, message: str) -> None:
        self.emit("ERROR", message)
