"""The run's outcome, from measured numbers only: the statistics box and the JSON report."""

from __future__ import annotations

import json
import os
import sys
import time
from array import array
from dataclasses import dataclass, field, fields
from typing import TextIO

from pgcopy import fmt
from pgcopy.catalog import qualname
from pgcopy.keys import KeyIndex, TaskKeys
from pgcopy.packed import Appended

# 2: the dry-run plan lost replica_mode (load transactions no longer use replica mode)
REPORT_VERSION = 2


TABLE_FIELDS = (
    "table",
    "status",
    "rows",
    "bytes",
    "wire_bytes",
    "seconds",
    "format",
    "format_reason",
    "codec",
    "emptied_by",
    "batched",
    "error",
    "side",
    "verified",
    "verify_seconds",
)


class TableEntries(Appended):
    """The per-table entries of the report: dicts in and out, kept packed as tuples of
    TABLE_FIELDS (40,000 entries as dicts held about 23 MB in the coordinator to the end)."""

    __slots__ = ()

    def append(self, entry: dict) -> None:
        super().append(tuple(entry[k] for k in TABLE_FIELDS))

    def __iter__(self):
        for values in super().__iter__():
            yield dict(zip(TABLE_FIELDS, values, strict=True))


@dataclass
class RunReport:
    """What the run did, measured, for the summary box and the JSON report."""

    options: dict = field(default_factory=dict)  # with connections described, never passwords
    tables_total: int = 0
    tables: TableEntries = field(default_factory=TableEntries)  # one entry per selected table
    rows: int = 0  # COPY's own counts
    bytes: int = 0  # COPY data before the codec, counted per chunk
    wire_bytes: int = 0  # after the codec (equal to bytes without --compress)
    seconds: float = 0.0  # from after the confirmation to the end
    formats: dict[str, int] = field(default_factory=dict)  # tables per format
    worker_peak_rss_kb: int = 0  # the largest worker's peak RSS (getrusage)
    worker_cpu_seconds: float = 0.0  # all workers' user + system CPU
    fkeys_dropped: Appended[str] = field(default_factory=Appended)  # packed: one per FK
    fkeys_restored: Appended[str] = field(default_factory=Appended)  # packed: one per FK
    fkeys_not_valid: Appended[str] = field(default_factory=Appended)  # packed: one per FK
    fkeys_missing: Appended[str] = field(default_factory=Appended)  # packed: one per FK
    triggers_held: int = 0
    sequences_set: Appended[str] = field(default_factory=Appended)  # packed: one per sequence
    matviews_refreshed: list[str] = field(default_factory=list)
    large_objects: int = 0  # on the source; not copied
    warnings: list[str] = field(default_factory=list)
    exit_code: int | None = None
    error: str | None = None
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase, in run order
    plan: dict | None = None  # a dry run's full plan (see plan_dict)
    problems: list[str] = field(default_factory=list)  # a refused preflight's problems
    _current: tuple[str, float] | None = field(default=None, repr=False)

    def mark(self, phase: str | None) -> None:
        """Close the running phase's timer and start ``phase`` (None: just close)."""
        now = time.monotonic()
        if self._current is not None:
            name, t0 = self._current
            self.phases[name] = round(self.phases.get(name, 0.0) + now - t0, 3)
        self._current = (phase, now) if phase else None

    @property
    def tables_done(self) -> int:
        return sum(1 for t in self.tables if t["status"] == "copied")

    @property
    def tables_failed(self) -> list[tuple[str, str]]:
        return [(t["table"], t["error"] or "") for t in self.tables if t["status"] == "failed"]

    @property
    def tables_not_copied(self) -> list[str]:
        return [t["table"] for t in self.tables if t["status"] in ("rolled back", "not started")]

    def add_load(self, outcome, tasks, codec, index: KeyIndex | None = None) -> None:
        """Fill the per-table entries and totals from the load phase's outcome.

        A table's result is found by its position (``index``, the run's), in an array:
        a dict of every result by key was 5.5 MB at 20,000 tables."""
        index = index if index is not None else KeyIndex(TaskKeys(tasks))
        where = array("i", [-1]) * len(tasks)  # position -> its result's in outcome.done
        for j, r in enumerate(outcome.done):
            where[index[r.key]] = j
        failed = {r.key: r for r in outcome.failed}
        rolled_back = set(outcome.rolled_back)
        for i, task in enumerate(tasks):
            r = outcome.done[where[i]] if where[i] >= 0 else failed.get(task.key)
            if r is not None and r.error is None:
                status = "copied"
            elif r is not None:
                status = "failed"
            elif task.key in rolled_back:
                status = "rolled back"
            else:
                status = "not started"
            self.tables.append(
                {
                    "table": qualname(task.key),
                    "status": status,
                    "rows": r.rows if r else 0,
                    "bytes": r.bytes if r else 0,
                    "wire_bytes": r.wire_bytes if r else 0,
                    "seconds": round(r.seconds, 3) if r else 0.0,
                    "format": (r.format if r and r.format else task.format),
                    "format_reason": task.format_reason,
                    # small tables loaded in a batch are spooled, not piped: no codec
                    "codec": f"{codec.name}:{codec.level}" if codec and not (r and r.batched) else None,
                    "emptied_by": task.clear,
                    "batched": r.batched if r else False,
                    "error": r.error if r else None,
                    "side": r.side if r else None,
                    "verified": r.verified if r else False,
                    "verify_seconds": round(r.verify_seconds, 3) if r else 0.0,
                }
            )
        done = outcome.done
        self.rows = sum(r.rows for r in done)
        self.bytes = sum(r.bytes for r in done)
        self.wire_bytes = sum(r.wire_bytes for r in done)
        self.formats = {f: sum(1 for r in done if r.format == f) for f in {r.format for r in done}}
        self.worker_peak_rss_kb = max((u["maxrss_kb"] for u in outcome.worker_usage), default=0)
        self.worker_cpu_seconds = sum(u["cpu_seconds"] for u in outcome.worker_usage)

    def set_plan(self, plan, snapshot: bool, checks: list[str]) -> None:
        """The machine-readable plan of a dry run: everything the run would do, in order."""
        self.plan = {
            "tables": [
                {
                    "table": t.qualname,
                    "order": i + 1,
                    "bytes": t.est_bytes,
                    "rows_estimate": t.est_rows,
                    "destination_rows_estimate": t.dest_est_rows,
                    "format": t.format,
                    "format_reason": t.format_reason,
                    "emptied_by": t.clear,
                    "columns": list(t.columns),
                    "triggers_held_off": [{"name": tr.name, "state": tr.enabled} for tr in t.triggers],
                    "indexes_rebuilt": [ix.name for ix in t.indexes],
                    "not_valid_checks_set_aside": [c.name for c in t.checks],
                }
                for i, t in enumerate(plan.tasks)
            ],
            "fkeys": [
                {
                    "name": fk.name,
                    "table": qualname(fk.table),
                    "references": qualname(fk.ref_table),
                    "definition": fk.definition,
                    "validated": fk.validated,
                }
                for fk in plan.fkeys
            ],
            "sequences": [qualname(s.key) for s in plan.sequences.open().sequences],
            "matviews": [qualname(m) for m in plan.matviews],
            "large_objects": plan.large_objects,
            "snapshot": snapshot,
            "checks_passed": checks,
            "problems": [],
        }
        self.tables_total = len(plan.tasks)

    def to_dict(self) -> dict:
        # the fields as they are, for json to encode (asdict's deep copy of every table's
        # entry took 0.09 s at 1,000 tables)
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_current"}
        d["report_version"] = REPORT_VERSION
        d["totals"] = {
            "tables": self.tables_total,
            "tables_copied": self.tables_done,
            "tables_failed": len(self.tables_failed),
            "tables_not_copied": len(self.tables_not_copied),
            "rows": self.rows,
            "bytes": self.bytes,
            "wire_bytes": self.wire_bytes,
            "seconds": round(self.seconds, 3),
        }
        return d

    def write(self, path: str) -> None:
        if path == "-":
            _write_lines(self.to_dict(), sys.stdout)
            return
        tmp = f"{path}.tmp"
        with open(tmp, "w") as fh:
            _write_lines(self.to_dict(), fh)
        os.replace(tmp, path)

    def box(self) -> str:
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        mbps = self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0
        lines = [
            ("Tables processed", f"{self.tables_done}/{self.tables_total}"),
            ("Rows copied", f"{self.rows:,}"),
            ("Data streamed", fmt.size(self.bytes)),
            *([("After codec", fmt.size(self.wire_bytes))] if self.wire_bytes != self.bytes else []),
            ("Formats", ", ".join(f"{n} {f}" for f, n in sorted(self.formats.items())) or "-"),
            ("Duration", f"{self.seconds:.1f}s"),
            ("Average speed", f"{rate:,.0f} rows/s, {mbps:.1f} MB/s"),
            ("Worker peak RSS", f"{self.worker_peak_rss_kb / 1024:.1f} MB"),
            ("Worker CPU", f"{self.worker_cpu_seconds:.1f}s"),
            (
                "Foreign keys",
                f"{len(self.fkeys_restored)}/{len(self.fkeys_dropped)} restored valid as before",
            ),
            ("Triggers held off", str(self.triggers_held)),
            ("Sequences set", str(len(self.sequences_set))),
            ("Matviews refreshed", str(len(self.matviews_refreshed))),
        ]
        if self.tables_failed:
            lines.append(("Tables failed", str(len(self.tables_failed))))
        if self.tables_not_copied:
            lines.append(("Tables not copied", str(len(self.tables_not_copied))))
        if self.fkeys_not_valid:
            lines.append(("FKs left NOT VALID", str(len(self.fkeys_not_valid))))
        if self.warnings:
            lines.append(("Warnings", str(len(self.warnings))))
        width = 62
        out = ["╔" + "═" * width + "╗", "║" + "COPY STATISTICS".center(width) + "║", "╠" + "═" * width + "╣"]
        for label, value in lines:
            out.append("║" + f"  {label + ':':<22}{value:>{width - 26}}  " + "║")
        out.append("╚" + "═" * width + "╝")
        return "\n".join(out)


def _write_lines(d: dict, out: TextIO) -> None:
    """The report as JSON: top-level keys one per line, lists one item per line, each
    encoded by json's C encoder (indent= is pure Python: 0.2 s per 1,000 tables) and
    written as made (the report of a run of 40,000 tables is 17 MB of text)."""
    out.write("{\n")
    for n, (k, v) in enumerate(d.items()):
        out.write(",\n" if n else "")
        if not isinstance(v, (list, Appended)):
            out.write(f"  {json.dumps(k)}: {json.dumps(v)}")
        elif not len(v):
            out.write(f"  {json.dumps(k)}: []")
        else:
            out.write(f"  {json.dumps(k)}: [\n    ")
            for i, item in enumerate(v):
                out.write(",\n    " + json.dumps(item) if i else json.dumps(item))
            out.write("\n  ]")
    out.write("\n}\n")
