"""Real throwaway clusters: one source and one destination per session, fresh databases per test."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

import psycopg2
import pytest
from pytest_postgresql.janitor import DatabaseJanitor

from pgcopy.errors import PgcopyError
from pgcopy.sandbox import FAST_SETTINGS, SUPERUSER, Cluster, start_cluster

_counter = itertools.count()

# The two sides differ where users' servers do: the session defaults that change how
# values are printed and parsed, which encoding a client gets, and the isolation of a
# transaction that sets none.  pgcopy pins what it depends on in its own sessions; every
# test that copies runs against these.  The tests' own sessions pin the same values
# (HELPER_OPTIONS), so that row checksums compare the rows, not the two servers' settings.
SOURCE_SETTINGS = {
    **FAST_SETTINGS,
    "TimeZone": "Pacific/Chatham",
    "DateStyle": "SQL, DMY",
    "IntervalStyle": "postgres_verbose",
    "extra_float_digits": "-3",
    "bytea_output": "escape",
    "default_transaction_isolation": "serializable",
    # a production role's limits, shorter than many a copy here: pgcopy's snapshot and its
    # COPYs must never meet them
    "idle_in_transaction_session_timeout": "3s",
    "statement_timeout": "1s",
}
DEST_SETTINGS = {
    **FAST_SETTINGS,
    "TimeZone": "Asia/Kathmandu",
    "DateStyle": "German, MDY",
    "IntervalStyle": "iso_8601",
    "extra_float_digits": "0",
    "client_encoding": "LATIN1",
    "lc_monetary": "C",
    "default_transaction_isolation": "repeatable read",
    # pgcopy's waits are bounded by --lock-timeout alone, never by the server's default
    "lock_timeout": "1s",
    "statement_timeout": "1s",
}
HELPER_OPTIONS = (
    "-c TimeZone=UTC -c DateStyle=ISO,MDY -c IntervalStyle=postgres -c extra_float_digits=1 "
    "-c bytea_output=hex -c default_transaction_isolation=read\\ committed -c client_encoding=UTF8 "
    "-c lock_timeout=0 -c statement_timeout=0 -c idle_in_transaction_session_timeout=0"
)


@pytest.fixture(scope="session")
def clusters():
    started = []
    try:
        for settings in (SOURCE_SETTINGS, DEST_SETTINGS):
            started.append(start_cluster(settings))
    except PgcopyError as exc:
        for c in started:
            c.destroy()
        pytest.exit(f"cannot start PostgreSQL clusters: {exc}", returncode=3)
    yield started
    for c in started:
        c.destroy()


@dataclass
class Db:
    cluster: Cluster
    dbname: str

    @property
    def dsn(self) -> str:
        return self.cluster.dsn(self.dbname)

    @property
    def uri(self) -> str:
        return self.cluster.uri(self.dbname)

    def connect(self, **kw):
        conn = psycopg2.connect(self.dsn, **{"options": HELPER_OPTIONS, **kw})
        conn.autocommit = True
        return conn

    def execute(self, query: str, params=None) -> None:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(query, params)
        conn.close()

    def query(self, query: str, params=None) -> list[tuple]:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
                return cur.fetchall()
        finally:
            conn.close()

    def scalar(self, query: str, params=None):
        return self.query(query, params)[0][0]


def _fresh_db(cluster: Cluster, prefix: str):
    name = f"{prefix}_{os.getpid()}_{next(_counter)}"
    janitor = DatabaseJanitor(user=SUPERUSER, host="127.0.0.1", port=cluster.port, dbname=name)
    janitor.init()
    try:
        yield Db(cluster, name)
    finally:
        janitor.drop()


@pytest.fixture
def src(clusters):
    yield from _fresh_db(clusters[0], "src")


@pytest.fixture
def dst(clusters):
    yield from _fresh_db(clusters[1], "dst")
