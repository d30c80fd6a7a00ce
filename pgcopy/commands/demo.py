"""`pgcopy demo`: a real copy between two throwaway clusters, verified by checksums."""

from __future__ import annotations

import tempfile
from pathlib import Path

import psycopg2

from pgcopy import datasets, sandbox, verify
from pgcopy.commands.copy import copy
from pgcopy.errors import EXIT_OK, PgcopyError
from pgcopy.log import Logger
from pgcopy.options import CopyOptions
from pgcopy.ui import resolve_output


def demo(scale: int, keep: bool, parallel: int, log: Logger) -> int:
    log.info("starting two throwaway PostgreSQL clusters (source and destination)")
    source = sandbox.start_cluster()
    dest = sandbox.start_cluster()
    try:
        src_conn = psycopg2.connect(source.dsn())
        dst_conn = psycopg2.connect(dest.dsn())
        try:
            datasets.SHOP.create(src_conn)
            datasets.SHOP.create(dst_conn)
            n = sum(datasets.sizes("shop", scale).values())
            log.info(f"seeding the shop dataset at scale {scale} (~{n:,} rows) on the source")
            datasets.SHOP.seed(src_conn, scale)
            with tempfile.TemporaryDirectory(prefix="pgcopy-demo-state-") as state:
                opts = CopyOptions(
                    source.dsn(),
                    dest.dsn(),
                    parallel=parallel,
                    yes=True,
                    state_dir=Path(state),
                    output=resolve_output("auto", log),  # the bar on a terminal, plain otherwise
                )
                code = copy(opts, log)
            if code != EXIT_OK:
                return code
            diffs = verify.differences(verify.checksums(src_conn), verify.checksums(dst_conn))
        finally:
            src_conn.close()
            dst_conn.close()
        if diffs:
            raise PgcopyError("verification failed: " + "; ".join(diffs))
        log.done("verified: every destination table has the same row count and checksum as the source")
        if keep:
            source.keep()
            dest.keep()
            print(f"source:      {source.dsn('postgres')}")
            print(f"destination: {dest.dsn('postgres')}")
            print(f"stop them with: pg_ctl -D {source.datadir} stop; pg_ctl -D {dest.datadir} stop")
        return EXIT_OK
    finally:
        if not keep:
            source.destroy()
            dest.destroy()
