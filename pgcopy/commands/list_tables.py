"""`pgcopy list`: the tables `copy` would consider, with row estimates and sizes."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from psycopg2 import sql

from pgcopy import catalog, fmt, patterns
from pgcopy.connections import connect_asking
from pgcopy.errors import PreflightError
from pgcopy.log import Logger


@dataclass(frozen=True)
class ListOptions:
    """The list command's options."""

    source: str
    schema: str | None
    include: list[str]
    exclude: list[str]
    exact: bool
    as_json: bool


def list_tables(opts: ListOptions, log: Logger) -> int:
    conn, _ = connect_asking(opts.source, "source", readonly=True)
    try:
        cur = conn.cursor()
        tables = [t for t in catalog.read_tables(cur) if opts.schema is None or t.schema == opts.schema]
        if not tables:
            raise PreflightError([f"no tables in schema {opts.schema!r}" if opts.schema else "no tables"])
        tables = patterns.select_or_refuse(tables, opts.include, opts.exclude, log.warn)
        rows: dict[int, int | None] = {}
        for t in tables:
            if opts.exact:
                only = sql.SQL("") if t.kind == "partitioned parent" else sql.SQL("ONLY ")
                cur.execute(sql.SQL("SELECT count(*) FROM {}{}").format(only, t.ident))
                rows[t.oid] = cur.fetchone()[0]
            else:
                rows[t.oid] = None if t.reltuples < 0 else int(t.reltuples)
        conn.rollback()
    finally:
        conn.close()
    if opts.as_json:
        out = [
            {
                "schema": t.schema,
                "name": t.name,
                "kind": t.kind,
                "unlogged": t.unlogged,
                "rows": rows[t.oid],
                "rows_exact": opts.exact,
                "total_bytes": t.total_bytes,
                "partition_of": ".".join(t.ancestors[0]) if t.ancestors else None,
            }
            for t in tables
        ]
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    _print_table(tables, rows, opts.exact)
    return 0


def _print_table(tables, rows, exact: bool) -> None:
    def shown(t) -> str:
        n = rows[t.oid]
        if exact:
            return f"{n:,}"
        return fmt.estimate(-1 if n is None else n)

    body = [
        (t.schema, t.name, t.kind + (", unlogged" if t.unlogged else ""), shown(t), fmt.size(t.total_bytes))
        for t in tables
    ]
    head = ("SCHEMA", "TABLE", "KIND", "ROWS" if exact else "ROWS (est.)", "SIZE")
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(5)]
    for r in [head, *body]:
        print(
            "  ".join(
                c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
            ).rstrip()
        )
    # partitioned parents show their partitions' sums: count leaves only in the totals
    leaves = [t for t in tables if t.kind != "partitioned parent"]
    total_rows = sum(rows[t.oid] or 0 for t in leaves)
    unknown = sum(1 for t in leaves if rows[t.oid] is None)
    rows_txt = f"{total_rows:,} rows" if exact else f"~{fmt.count(total_rows)} rows (estimated"
    if not exact:
        rows_txt += f"; {unknown} never analyzed)" if unknown else ")"
    print(f"{len(leaves)} tables, {rows_txt}, {fmt.size(sum(t.total_bytes for t in leaves))}")
