"""The command line: build_parser() is the one place it is defined (the man page reads it)."""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import traceback
from collections.abc import Sequence

import psycopg2

from pgcopy import __version__, config
from pgcopy.codec import CODECS
from pgcopy.errors import EXIT_CODES, PgcopyError, UsageError
from pgcopy.log import Logger, safe_write
from pgcopy.ui import OUTPUTS

EPILOG = "exit codes:\n" + "\n".join(f"  {code:<4} {text}" for code, text in EXIT_CODES)


def _number(convert, kind: str, ok, rule: str):
    """An argparse type: ``convert`` the text, then check it with ``ok``."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{rule}, got {value}")
        return value

    return parse


_positive = _number(int, "an integer", lambda v: v >= 1, "must be at least 1")
MAX_PARALLEL = 64
_parallel = _number(int, "an integer", lambda v: 1 <= v <= MAX_PARALLEL, f"must be 1 to {MAX_PARALLEL}")

# PostgreSQL's time units for lock_timeout; a bare number is milliseconds
_DURATION = re.compile(r"\s*\d+(\.\d+)?\s*(us|ms|s|min|h|d)?\s*")


def _duration(text: str) -> str:
    if not _DURATION.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 30s, 500ms, 2min)")
    return text.strip()


SOURCE_HELP = (
    "source connection string (URI, key=value, or a bare database name); default $PGCOPY_SOURCE, "
    "else libpq's PG* environment, as psql"
)
DEST_HELP = (
    "destination connection string (URI, key=value, or a bare database name); default "
    "$PGCOPY_DEST, else libpq's PG* environment"
)
_positive_float = _number(float, "a number", lambda v: v > 0, "must be above 0")
_nonnegative_float = _number(float, "a number", lambda v: v >= 0, "must not be negative")


def _add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--include",
        action="append",
        metavar="PATTERNS",
        default=[],
        help="only these tables: comma-separated globs (* and ?), 'name' in any schema or "
        "'schema.name'; double-quote names with capitals or dots; repeatable",
    )
    p.add_argument(
        "--exclude",
        action="append",
        metavar="PATTERNS",
        default=[],
        help="leave these tables out (same syntax; wins over --include); repeatable",
    )


def _add_parallel(p: argparse.ArgumentParser, help: str) -> None:
    """-p (the reference tool's), -j/--jobs (pg_dump's), --parallel: one bounded option."""
    p.add_argument(
        "-p", "-j", "--parallel", "--jobs", dest="parallel", type=_parallel, default=4, metavar="N", help=help
    )


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file of option defaults and [profiles.NAME] (default $PGCOPY_CONFIG, else ./pgcopy.toml "
        "when present); the command line wins",
    )
    p.add_argument("--profile", metavar="NAME", help="use [profiles.NAME] of the config file")


def _add_debug(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: a subcommand's --debug only overrides the top-level one when given
    p.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks and debug lines"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgcopy",
        description="Copy all the data of one PostgreSQL database into another with the same "
        "schema: in parallel, from one snapshot, foreign-key safe. Destination tables that are "
        "selected are TRUNCATED and overwritten.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug lines")
    parser.add_argument("-V", "--version", action="version", version=f"pgcopy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    cp = sub.add_parser(
        "copy",
        help="replace the rows of the selected destination tables with the source's",
        description="Replace the rows of every selected destination table with the source's "
        "rows, read from one snapshot. Each table is loaded in one transaction "
        "(TRUNCATE ONLY + COPY FREEZE; small tables DELETE + COPY, several to a transaction), "
        "so it ends fully old or fully new.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cp.add_argument("-s", "--source", metavar="DSN", help=SOURCE_HELP + "; only read")
    cp.add_argument("-d", "--dest", metavar="DSN", help=DEST_HELP + "; its selected tables are overwritten")
    _add_parallel(
        cp,
        f"worker processes, each with one source and one destination connection (default 4, at most "
        f"{MAX_PARALLEL}; checked against both servers' free connections)",
    )
    _add_selection(cp)
    cp.add_argument(
        "--dry-run", action="store_true", help="run the preflight checks and print the plan; change nothing"
    )
    cp.add_argument(
        "--skip-backup",
        "--yes",
        "-y",
        dest="yes",
        action="store_true",
        help="do not ask for confirmation (required when stdin is not a terminal); --skip-backup is the "
        "reference tool's name for it: pgcopy takes no backup",
    )
    cp.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where the foreign-key journal is kept, and the run's temporary file of per-table data, unlinked when made (default $XDG_STATE_HOME/pgcopy or ~/.local/state/pgcopy)",
    )
    cp.add_argument(
        "--lock-timeout",
        default="30s",
        type=_duration,
        metavar="DURATION",
        help="lock_timeout for destination DDL and TRUNCATE and for each table's source read (default 30s)",
    )
    cp.add_argument(
        "--no-snapshot",
        action="store_true",
        help="allow a source that cannot export snapshots; tables are then read at different moments",
    )
    stream = cp.add_argument_group("stream options")
    pipe = stream.add_mutually_exclusive_group()
    pipe.add_argument(
        "--copy-pipe",
        dest="copy_pipe",
        action="store_true",
        default=True,
        help="stream each table with COPY TO | COPY FROM (the default; accepted for compatibility)",
    )
    pipe.add_argument(
        "--no-copy-pipe",
        dest="copy_pipe",
        action="store_false",
        help="row mode: a server-side cursor on the source and batched INSERTs on the destination, "
        "for proxies or poolers that do not pass COPY through; slower",
    )
    stream.add_argument(
        "--batch-size",
        type=_positive,
        metavar="N",
        help="rows per batch in row mode (default 1000; a batch is also cut at 8 MiB of values)",
    )
    stream.add_argument(
        "--compress",
        nargs="?",
        const="gzip",
        choices=CODECS,
        metavar="{gzip,zstd}",
        help="compress the COPY stream inside each worker (bare --compress means gzip). Both database "
        "connections still carry uncompressed data, so this costs CPU and saves no network bytes; "
        "measured on 5M rows (README, Performance): zstd level 1 cost ~1 s CPU and no wall time, "
        "gzip level 1 cost 4.4 s CPU and 19%% more wall time",
    )
    stream.add_argument(
        "--compress-level", type=int, metavar="N", help="codec level (gzip 1-9, zstd 1-22; default 1)"
    )
    stream.add_argument(
        "--index-rebuild-threshold",
        type=_nonnegative_float,
        default=64.0,
        metavar="MB",
        help="for tables of at least MB megabytes (heap+TOAST on the source) whose destination the role owns, "
        "drop the indexes after the TRUNCATE and rebuild them after the COPY, in the same transaction "
        "(default 64; 0 = every table)",
    )
    stream.add_argument(
        "--no-index-rebuild", action="store_true", help="keep indexes in place during every load"
    )
    stream.add_argument(
        "--format",
        choices=("auto", "text"),
        default="auto",
        help="COPY format: auto (binary unless unsafe for a table, see README) or text for every table",
    )
    out = cp.add_argument_group("output")
    out.add_argument(
        "--output",
        choices=OUTPUTS,
        default="auto",
        help="auto (default): progress when stdin and stdout are terminals, plain otherwise; plain: "
        "timestamped log lines on stderr plus a progress line every --progress-interval seconds; "
        "progress: a bar pinned at the top above scrolling logs; interactive: a full-screen live view (q cancels)",
    )
    out.add_argument(
        "--progress-interval",
        type=_positive_float,
        default=10.0,
        metavar="SECONDS",
        help="plain output: seconds between progress lines (default 10)",
    )
    out.add_argument("--log-file", metavar="FILE", help="also write every log line, in plain format, to FILE")
    out.add_argument(
        "--report",
        metavar="FILE",
        help="write a JSON report (options without passwords, per-table results, totals, exit code) to FILE",
    )
    cp.add_argument(
        "--verify",
        action="store_true",
        help="before each table commits, compare its row count and content digest with the source's "
        "in the run's snapshot (computed on the servers); a mismatch rolls the table back (exit 4)",
    )
    cp.add_argument(
        "--dest-allow",
        action="append",
        default=[],
        metavar="PATTERNS",
        help="refuse (exit 2, even with --yes) a destination whose host, as connected, matches none of "
        "these comma-separated globs (e.g. 'staging-*.internal'); usually set in a config file",
    )
    cp.add_argument("--no-analyze", action="store_true", help="do not ANALYZE loaded tables")
    cp.add_argument(
        "--no-refresh-matviews",
        action="store_true",
        help="do not refresh populated materialized views on the destination",
    )

    rc = sub.add_parser(
        "recover",
        help="restore foreign keys a crashed or killed copy left dropped",
        description="Re-create every foreign key recorded in the journal of an interrupted copy "
        "to this destination, then remove the journal.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rc.add_argument("-d", "--dest", metavar="DSN", help=DEST_HELP)
    rc.add_argument(
        "-s", "--source", metavar="DSN", help="source to read definitions from when the journal lacks one"
    )
    rc.add_argument("--state-dir", metavar="DIR", help="where the journal is kept (as for copy)")
    rc.add_argument(
        "--lock-timeout",
        default="30s",
        type=_duration,
        metavar="DURATION",
        help="lock_timeout for the DDL (default 30s)",
    )

    ls = sub.add_parser(
        "list",
        help="list the tables copy would consider, with row estimates and sizes",
        description="One row per table: schema, name, kind, rows (pg_class.reltuples estimate, "
        "or count(*) with --exact) and total size, then a totals line. Views, foreign tables, "
        "temporary tables and sequences are not listed.",
    )
    ls.add_argument("-s", "--source", metavar="DSN", help=SOURCE_HELP)
    ls.add_argument("--schema", metavar="NAME", help="only this schema")
    _add_selection(ls)
    ls.add_argument("--exact", action="store_true", help="count rows with count(*) instead of estimates")
    ls.add_argument("--json", action="store_true", help="print a JSON array instead of a table")

    vf = sub.add_parser(
        "verify",
        help="compare a destination with its source: per-table digests, sequences, constraint validity",
        description="Read-only on both sides. The source is read in one exported snapshot. Per table: "
        "row count and an order-independent content digest computed on the servers, in parallel; then "
        "sequences (last_value, is_called) and the validity of FK and CHECK constraints. Exit 0 only "
        "when everything matches, 4 when something differs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    vf.add_argument("-s", "--source", metavar="DSN", help=SOURCE_HELP)
    vf.add_argument("-d", "--dest", metavar="DSN", help=DEST_HELP)
    _add_selection(vf)
    _add_parallel(vf, "tables compared at once (default 4)")
    vf.add_argument(
        "--lock-timeout",
        default="30s",
        type=_duration,
        metavar="DURATION",
        help="how long a table's read waits for a lock on either side before it is reported as an error (default 30s)",
    )
    vf.add_argument("--report", metavar="FILE", help="write the results as JSON to FILE ('-' for stdout)")

    sub.add_parser("version", help="print pgcopy, Python, psycopg2 and libpq versions")

    dm = sub.add_parser(
        "demo",
        help="copy a generated dataset between two throwaway local clusters",
        description="Start a source and a destination throwaway PostgreSQL cluster, seed the "
        "source, run a real copy, verify every table by checksum, then remove the clusters.",
    )
    dm.add_argument(
        "--scale",
        type=_positive,
        default=1,
        metavar="N",
        help="dataset size factor (default 1: about 100k rows)",
    )
    dm.add_argument(
        "--keep", action="store_true", help="leave the clusters running and print their connection strings"
    )
    _add_parallel(dm, "workers for the copy (default 4)")
    cf = sub.add_parser(
        "config",
        help="show the options a config file and profile give a command",
        description="Print the effective options of `copy` (or COMMAND) after the config file and "
        "profile are applied, passwords masked.",
    )
    cf.add_argument("action", choices=("show",))
    cf.add_argument("target", nargs="?", default="copy", choices=("copy", "verify"), metavar="COMMAND")
    for sp in (cp, vf, cf):
        _add_config(sp)
    for sp in (cp, rc, ls, dm, vf, cf):
        _add_debug(sp)
    return parser


def version_text() -> str:
    import psycopg2
    import psycopg2.extensions

    libpq = psycopg2.extensions.libpq_version()
    return (
        f"pgcopy {__version__}\n"
        f"Python {platform.python_version()}\n"
        f"psycopg2 {psycopg2.__version__.split()[0]}\n"
        f"libpq {libpq // 10000}.{libpq % 10000}"
    )


def _resolve_connections(args: argparse.Namespace) -> None:
    """--source/--dest default to $PGCOPY_SOURCE/$PGCOPY_DEST, then to libpq's environment."""
    from pgcopy.connections import resolve

    if hasattr(args, "source"):
        args.source = resolve(args.source, "PGCOPY_SOURCE")
    if hasattr(args, "dest"):
        args.dest = resolve(args.dest, "PGCOPY_DEST")


def _check_output_files(args: argparse.Namespace, log: Logger) -> None:
    """File options are opened or checked now, before anything changes anywhere."""
    report = getattr(args, "report", None)
    if report and report != "-":
        parent = os.path.dirname(os.path.abspath(report))
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            raise UsageError(f"--report {report}: directory {parent} does not exist or is not writable")
    log_file = getattr(args, "log_file", None)
    if log_file:
        try:
            log.logfile = open(log_file, "a")  # noqa: SIM115 -- closed at exit by main()
        except OSError as exc:
            raise UsageError(f"--log-file {log_file}: {exc.strerror}") from None


def _dispatch(args: argparse.Namespace, log: Logger) -> int:
    _resolve_connections(args)
    _check_output_files(args, log)
    if args.command == "version":
        print(version_text())
        return 0
    if args.command == "list":
        from pgcopy.commands.list_tables import ListOptions, list_tables

        opts = ListOptions(args.source, args.schema, args.include, args.exclude, args.exact, args.json)
        return list_tables(opts, log)
    if args.command == "copy":
        from pgcopy.commands.copy import copy
        from pgcopy.options import copy_options
        from pgcopy.ui import resolve_output

        args.output = resolve_output(args.output, log)
        opts = copy_options(args)
        if args.batch_size and args.copy_pipe:
            log.warn("--batch-size applies only to row mode (--no-copy-pipe); ignored")
        return copy(opts, log)
    if args.command == "recover":
        from pgcopy.commands.recover import recover

        return recover(args.dest, args.source, args.state_dir, args.lock_timeout, log)
    if args.command == "verify":
        from pgcopy.commands.verify import VerifyOptions, verify

        vopts = VerifyOptions(
            args.source,
            args.dest,
            tuple(args.include),
            tuple(args.exclude),
            args.parallel,
            args.report,
            args.lock_timeout,
        )
        return verify(vopts, log)
    if args.command == "config":
        return _config_show(args)
    if args.command == "demo":
        from pgcopy.commands.demo import demo

        return demo(args.scale, args.keep, args.parallel, log)
    raise NotImplementedError(args.command)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _with_config(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Apply the config file's defaults to the subcommand about to be parsed."""
    subs = _subparsers(parser)
    command = next((a for a in argv if a in subs), None)
    if command not in ("copy", "verify", "config"):
        return
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--profile")
    known, _ = pre.parse_known_args(argv)
    path = config.locate(known.config)
    if path is None:
        if known.profile:
            raise UsageError("--profile needs a config file (--config, $PGCOPY_CONFIG or ./pgcopy.toml)")
        return
    target = command
    if command == "config":
        rest = argv[argv.index("config") + 1 :]
        target = next((a for a in rest if a in ("copy", "verify")), "copy")
    config.apply(subs[target], config.load(path, known.profile), path)


def _config_show(args: argparse.Namespace) -> int:
    parser = build_parser()
    argv = [args.target] + (["--config", args.config] if args.config else [])
    argv += ["--profile", args.profile] if args.profile else []
    _with_config(parser, argv)
    shown = vars(parser.parse_args(argv))
    for key in sorted(shown):
        if key in ("command", "config", "profile", "debug"):
            continue
        value = shown[key]
        print(f"{key} = {config.mask(value) if isinstance(value, str) else value}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _with_config(parser, argv)
    except UsageError as exc:
        parser.exit(exc.exit_code, f"pgcopy: error: {exc}\n")
    args = parser.parse_args(argv)
    debug = args.debug or bool(os.environ.get("PGCOPY_DEBUG"))
    log = Logger(debug_enabled=debug)
    try:
        code = _dispatch(args, log)
    except UsageError as exc:
        _to_logfile(log, f"pgcopy: error: {exc}")
        parser.exit(exc.exit_code, f"pgcopy: error: {exc}\n")
    except PgcopyError as exc:
        if debug:
            traceback.print_exc()
        safe_write(sys.stderr, f"pgcopy: error: {exc}\n")
        _to_logfile(log, f"pgcopy: error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        safe_write(sys.stderr, "pgcopy: interrupted\n")
        return 130
    except psycopg2.Error as exc:  # anywhere, unexpected: still one line
        if debug:
            traceback.print_exc()
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        safe_write(sys.stderr, f"pgcopy: error: {line}\n")
        _to_logfile(log, f"pgcopy: error: {line}")
        return 1
    finally:
        if log.logfile is not None:
            log.logfile.close()
            log.logfile = None
        safe_write(sys.stdout, "")  # a closed stdout must not fail the interpreter's last flush
    assert isinstance(code, int), f"command {args.command} returned {code!r}"
    return code


def _to_logfile(log: Logger, line: str) -> None:
    if log.logfile is not None:
        log.logfile.write(line + "\n")
