"""CopyOptions: everything `copy` was asked to do, checked before any connection."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from pgcopy.codec import DEFAULT_LEVEL, Codec
from pgcopy.connections import parse
from pgcopy.errors import UsageError

LEVELS = {"gzip": range(1, 10), "zstd": range(1, 23)}
DEFAULT_BATCH_SIZE = 1000


def _codec(args: argparse.Namespace) -> Codec | None:
    if args.compress is None:
        if args.compress_level is not None:
            raise UsageError("--compress-level needs --compress")
        return None
    if not args.copy_pipe:
        raise UsageError("--compress needs the COPY pipe; it cannot be combined with --no-copy-pipe")
    level = DEFAULT_LEVEL[args.compress] if args.compress_level is None else args.compress_level
    if level not in LEVELS[args.compress]:
        r = LEVELS[args.compress]
        raise UsageError(f"--compress-level for {args.compress} must be {r.start}-{r.stop - 1}, got {level}")
    return Codec(args.compress, level)


@dataclass(frozen=True)
class CopyOptions:
    """The copy command's options, as parsed and checked."""

    source: str
    dest: str
    parallel: int = 4
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    dry_run: bool = False
    yes: bool = False
    state_dir: Path | None = None
    lock_timeout: str = "30s"
    snapshot: bool = True
    analyze: bool = True
    refresh_matviews: bool = True
    codec: Codec | None = None
    batch_size: int | None = None  # row mode when set
    format: str = "auto"
    output: str = "plain"  # resolved: plain, progress or interactive
    progress_interval: float = 10.0
    report_file: str | None = None
    index_rebuild_bytes: int | None = 64 << 20  # None: never rebuild indexes
    verify: bool = False
    dest_allow: tuple[str, ...] = ()  # host globs the destination must match


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "pgcopy"


def copy_options(args: argparse.Namespace) -> CopyOptions:
    parse(args.source)  # a malformed string is a usage error before anything else
    parse(args.dest)
    codec = _codec(args)
    if not args.copy_pipe and args.format != "auto":
        raise UsageError("--format applies to the COPY pipe; row mode always moves values as text")
    return CopyOptions(
        source=args.source,
        dest=args.dest,
        parallel=args.parallel,
        include=tuple(args.include),
        exclude=tuple(args.exclude),
        dry_run=args.dry_run,
        yes=args.yes,
        state_dir=Path(args.state_dir) if args.state_dir else default_state_dir(),
        lock_timeout=args.lock_timeout,
        snapshot=not args.no_snapshot,
        analyze=not args.no_analyze,
        refresh_matviews=not args.no_refresh_matviews,
        codec=codec,
        batch_size=None if args.copy_pipe else (args.batch_size or DEFAULT_BATCH_SIZE),
        format=args.format,
        output=args.output,
        progress_interval=args.progress_interval,
        report_file=args.report,
        index_rebuild_bytes=None if args.no_index_rebuild else int(args.index_rebuild_threshold * (1 << 20)),
        verify=args.verify,
        dest_allow=tuple(p.strip() for v in args.dest_allow for p in v.split(",") if p.strip()),
    )
