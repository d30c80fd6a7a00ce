"""`pgcopy verify`: prove a destination holds the source's data, table by table.

Read-only on both sides: the source is read in one exported snapshot (each table in its
own short transaction that imports it), the destination in read-only sessions.  Per table,
row count and an order-independent content digest (:mod:`pgcopy.digest`), computed on the
servers in parallel; then sequences (``last_value``, ``is_called``) and the validity of FK
and CHECK constraints.  Useful after a copy by any tool.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace

from pgcopy import catalog, digest, patterns
from pgcopy.catalog import Key, qualname
from pgcopy.connections import (
    Session,
    common_encoding,
    connect,
    connect_asking,
    describe_conn,
    error_line,
    reconnect,
    session_relations,
)
from pgcopy.errors import EXIT_OK, EXIT_PARTIAL, PreflightError
from pgcopy.log import Logger


@dataclass(frozen=True)
class VerifyOptions:
    """The verify command's options."""

    source: str
    dest: str
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    parallel: int = 4
    report_file: str | None = None
    lock_timeout: str = "30s"  # per table read, either side: a locked table is an error, not a hang


@dataclass
class TableCheck:
    """One table's comparison: its status and each side's count and digest."""

    table: str
    status: str  # 'match', 'differ', 'missing', 'error', 'inexact'
    source: str | None = None
    dest: str | None = None
    detail: str | None = None
    seconds: float = 0.0


@dataclass
class VerifyReport:
    """Every table's comparison, and the sequence and constraint differences."""

    source: str = ""
    dest: str = ""
    tables: list[TableCheck] = field(default_factory=list)
    sequences: list[str] = field(default_factory=list)  # differences
    constraints: list[str] = field(default_factory=list)  # differences
    seconds: float = 0.0
    exit_code: int = 0


CONSTRAINTS_SQL = """
SELECT n.nspname, c.relname, con.conname, con.contype, con.convalidated
  FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE con.contype IN ('f', 'c') AND c.oid = ANY(%s::oid[])
"""


def _readers(opts: VerifyOptions, session: Session) -> tuple:
    """A source and a destination session for a thread's reads."""
    s = connect(opts.source, "source", session, readonly=True)
    try:
        s.set_session(isolation_level="REPEATABLE READ", readonly=True)
        d = connect(opts.dest, "destination", session, readonly=True)
    except BaseException:
        s.close()
        raise
    for conn in (s, d):
        conn.cursor().execute("SET lock_timeout = %s", (opts.lock_timeout,))
        conn.commit()
    return s, d


def _constraints(cur, oids: list[int]) -> dict[tuple, bool]:
    cur.execute(CONSTRAINTS_SQL, (catalog.oid_array(oids),))
    return {(s, t, name, kind): valid for s, t, name, kind, valid in cur.fetchall()}


class _Sides(threading.local):
    conns: tuple | None = None
    tables: int = 0  # read on these sessions: each server caches them all (see SESSION_RELATIONS)


def verify(opts: VerifyOptions, log: Logger) -> int:
    started = time.monotonic()
    session = Session.new()
    src, source = connect_asking(opts.source, "source", session, readonly=True)
    dst, dest = connect_asking(opts.dest, "destination", session, readonly=True)
    opts = replace(opts, source=source, dest=dest)
    report = VerifyReport(describe_conn(src), describe_conn(dst))
    opened: list = []
    try:
        enc = common_encoding(src, dst)
        session = session.with_encoding(enc).with_sessions_checked()
        for conn in (src, dst):
            conn.set_client_encoding(enc)
        to_utf8 = src.get_parameter_status("server_encoding") != dst.get_parameter_status("server_encoding")
        log.info(f"verifying {report.dest} against {report.source} (client_encoding {enc})")
        src.set_session(isolation_level="REPEATABLE READ", readonly=True)
        scur, dcur = src.cursor(), dst.cursor()
        for cur in (scur, dcur):  # sessions pin lock_timeout = 0 (see connections)
            cur.execute("SET lock_timeout = %s", (opts.lock_timeout,))
        scur.execute("SELECT pg_export_snapshot()")
        snapshot = scur.fetchone()[0]
        src_tables = catalog.read_tables(scur, catalog.Sizes())
        dst_tables = {t.key: t for t in catalog.read_tables(dcur, catalog.Sizes())}
        dst.commit()
        selected = [
            t
            for t in patterns.select_or_refuse(src_tables, opts.include, opts.exclude, log.warn)
            if t.kind != "partitioned parent"
        ]
        if not selected:
            raise PreflightError(["no table matches the selection"])
        columns = catalog.read_columns(scur, [t.oid for t in selected])
        src_major, dst_major = src.server_version // 10000, dst.server_version // 10000
        local, limit = _Sides(), session_relations()

        def sides():
            # a table and its TOAST table a read: renewed before the servers' caches grow
            renewing = local.conns is not None and 2 * local.tables >= limit
            if renewing:
                for conn in local.conns:
                    conn.close()
                    opened.remove(conn)
                local.conns = None
            if local.conns is None:
                pair = functools.partial(_readers, opts, session)
                # after a renewal, the slots given back may be taken for a moment
                s, d = reconnect(pair) if renewing else pair()
                local.conns, local.tables = (s, d), 0
                opened.extend((s, d))
            local.tables += 1
            return local.conns

        def check(t: catalog.Table) -> TableCheck:
            t0 = time.monotonic()
            if t.key not in dst_tables:
                return TableCheck(t.qualname, "missing", detail="table does not exist on the destination")
            cols = [c for c in columns.get(t.oid, []) if not c.generated]
            names = tuple(c.name for c in cols)
            s, d = sides()
            try:
                s.rollback()
                s.cursor().execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))
                sd, dd = digest.both(s.cursor(), d.cursor(), t.key, names, to_utf8)
                s.rollback()
                d.rollback()
            except Exception as exc:
                s.rollback()
                d.rollback()
                return TableCheck(t.qualname, "error", detail=error_line(exc), seconds=time.monotonic() - t0)
            why = digest.inexact(src_major, dst_major, tuple(c.type for c in cols))
            status = "match" if sd == dd else ("inexact" if why else "differ")
            return TableCheck(t.qualname, status, str(sd), str(dd), why, time.monotonic() - t0)

        with ThreadPoolExecutor(max_workers=max(1, opts.parallel)) as pool:
            for result in pool.map(check, sorted(selected, key=lambda t: -t.reltuples)):
                report.tables.append(result)
                _log_table(log, result)
        report.sequences = _sequences(scur, dcur, selected, opts)
        dst_oids = [dst_tables[t.key].oid for t in selected if t.key in dst_tables]
        report.constraints = _compare_constraints(scur, dcur, [t.oid for t in selected], dst_oids)
        for line in report.sequences + report.constraints:
            log.error(line)
    finally:
        for conn in (src, dst, *opened):
            conn.close()
    report.seconds = time.monotonic() - started
    bad = [t for t in report.tables if t.status != "match"]
    report.exit_code = EXIT_PARTIAL if bad or report.sequences or report.constraints else EXIT_OK
    summary = (
        f"{len(report.tables) - len(bad)}/{len(report.tables)} tables match, "
        f"{len(report.sequences)} sequence and {len(report.constraints)} constraint differences, "
        f"{report.seconds:.1f}s"
    )
    (log.done if report.exit_code == EXIT_OK else log.error)(summary)
    if opts.report_file:
        _write(report, opts.report_file)
    return report.exit_code


def _log_table(log: Logger, r: TableCheck) -> None:
    if r.status == "match":
        log.done(f"match  {r.table}: {r.source}")
    elif r.status == "inexact":
        log.warn(f"inexact {r.table}: {r.detail}; source {r.source}, destination {r.dest}")
    elif r.status == "differ":
        log.error(f"DIFFER {r.table}: source {r.source}, destination {r.dest}")
    else:
        log.error(f"{r.status.upper()} {r.table}: {r.detail}")


def _sequences(scur, dcur, selected, opts: VerifyOptions) -> list[str]:
    keys = {t.key for t in selected} | {a for t in selected for a in t.ancestors}
    inc, exc = patterns.parse_patterns(opts.include), patterns.parse_patterns(opts.exclude)
    seqs: list[Key] = []
    for s in catalog.read_sequences(scur):
        if s.owner_table is not None:
            if s.owner_table in keys:
                seqs.append(s.key)
        elif (not inc or any(p.matches(*s.key) for p in inc)) and not any(p.matches(*s.key) for p in exc):
            seqs.append(s.key)
    out = []
    for key in seqs:
        values = []
        for cur in (scur, dcur):
            try:
                cur.execute(
                    "SELECT last_value, is_called FROM " + catalog.regclass_literal(key)  # quoted parts
                )
                values.append(cur.fetchone())
            except Exception as exc:
                cur.connection.rollback()
                values.append(error_line(exc))
        dcur.connection.commit()
        if values[0] != values[1]:
            out.append(f"sequence {qualname(key)}: source {values[0]}, destination {values[1]}")
    return out


def _compare_constraints(scur, dcur, src_oids: list[int], dst_oids: list[int]) -> list[str]:
    s, d = _constraints(scur, src_oids), _constraints(dcur, dst_oids)
    kinds = {"f": "foreign key", "c": "check constraint"}
    out = []
    for key in sorted(s.keys() | d.keys()):
        schema, table, name, kind = key
        what = f"{kinds[kind]} {name} on {qualname((schema, table))}"
        if key not in d:
            out.append(f"{what} is missing on the destination")
        elif key not in s:
            out.append(f"{what} exists only on the destination")
        elif s[key] != d[key]:
            state = lambda v: "valid" if v else "NOT VALID"  # noqa: E731
            out.append(f"{what} is {state(s[key])} on the source but {state(d[key])} on the destination")
    return out


def _write(report: VerifyReport, path: str) -> None:
    text = json.dumps(asdict(report), indent=2)
    if path == "-":
        print(text)
    else:
        with open(path, "w") as fh:
            fh.write(text + "\n")
