"""The run's outcome, from measured numbers only, and the statistics box."""

from __future__ import annotations

from dataclasses import dataclass, field

from pgcopy import fmt


@dataclass
class RunReport:
    tables_total: int = 0
    tables_done: int = 0
    tables_failed: list[tuple[str, str]] = field(default_factory=list)  # (table, error)
    tables_not_copied: list[str] = field(default_factory=list)
    rows: int = 0  # COPY's own counts
    bytes: int = 0  # COPY data before the codec, counted per chunk
    wire_bytes: int = 0  # after the codec (equal to bytes without --compress)
    formats: dict[str, int] = field(default_factory=dict)  # tables per format
    worker_peak_rss_kb: int = 0  # the largest worker's peak RSS (getrusage)
    worker_cpu_seconds: float = 0.0  # all workers' user + system CPU
    seconds: float = 0.0  # from after the confirmation to the end
    fkeys_dropped: int = 0
    fkeys_restored: int = 0
    fkeys_not_valid: list[str] = field(default_factory=list)
    fkeys_missing: list[str] = field(default_factory=list)
    triggers_held: int = 0
    sequences_set: int = 0
    matviews_refreshed: int = 0
    replica_mode: bool = False
    warnings: list[str] = field(default_factory=list)

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
            ("Foreign keys", f"{self.fkeys_restored}/{self.fkeys_dropped} restored valid as before"),
            ("Triggers held off", str(self.triggers_held)),
            ("Sequences set", str(self.sequences_set)),
            ("Matviews refreshed", str(self.matviews_refreshed)),
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
            text = f"  {label + ':':<22}{value:>{width - 26}}  "
            out.append("║" + text + "║")
        out.append("╚" + "═" * width + "╝")
        return "\n".join(out)
