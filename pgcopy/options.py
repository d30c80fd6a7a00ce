"""CopyOptions: everything `copy` was asked to do, checked before any connection."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from pgcopy.connections import parse


@dataclass(frozen=True)
class CopyOptions:
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


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "pgcopy"


def copy_options(args: argparse.Namespace) -> CopyOptions:
    parse(args.source)  # a malformed string is a usage error before anything else
    parse(args.dest)
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
    )
