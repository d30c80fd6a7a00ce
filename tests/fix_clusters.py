"""Real throwaway clusters: one source and one destination per session, fresh databases per test."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

import psycopg2
import pytest
from pytest_postgresql.janitor import DatabaseJanitor

from pgcopy.errors import PgcopyError
from pgcopy.sandbox import SUPERUSER, Cluster, start_cluster

_counter = itertools.count()


@pytest.fixture(scope="session")
def clusters():
    started = []
    try:
        for _ in range(2):
            started.append(start_cluster())
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
        conn = psycopg2.connect(self.dsn, **kw)
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
