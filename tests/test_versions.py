"""Copies between major versions, on real servers: this machine's PostgreSQL 15 and the
PostgreSQL 16 server that the pgserver wheel carries (a test dependency; Debian 12 has
only 15).  Moving a database to a new major version is what many users run pgcopy for."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import psycopg2
import pytest

from pgcopy.sandbox import start_cluster
from tests.fix_clusters import _fresh_db
from tests.helpers import (
    checksums,
    copy,
    fk_state,
    index_state,
    load_fidelity,
    owner_dsn,
    pgcopy,
    sequence_state,
    trigger_state,
)


def _pg16_bindir(tmp: Path) -> Path:
    spec = importlib.util.find_spec("pgserver")  # not imported: it sets up state of its own
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("pgserver is not installed: bin/setup-venv installs the test extras")
    package = Path(spec.submodule_search_locations[0])
    # the server account (as root: postgres) must reach the binaries, which a checkout
    # under /root would hide: a copy in a world-readable directory, with the wheel's
    # shared libraries beside it where the binaries' RUNPATH looks ($ORIGIN/../../../)
    shutil.copytree(package / "pginstall", tmp / "pgserver" / "pginstall", symlinks=True)
    libs = package.parent / "pgserver.libs"
    if libs.is_dir():
        shutil.copytree(libs, tmp / "pgserver.libs", symlinks=True)
    os.chmod(tmp, 0o755)
    return tmp / "pgserver" / "pginstall" / "bin"


@pytest.fixture(scope="module")
def pg16():
    tmp = Path(tempfile.mkdtemp(prefix="pgcopy-pg16-"))
    cluster = start_cluster(bins=_pg16_bindir(tmp))
    try:
        conn = psycopg2.connect(cluster.dsn())
        assert conn.server_version // 10000 == 16, conn.server_version
        conn.close()
        yield cluster
    finally:
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def db16(pg16):
    yield from _fresh_db(pg16, "v16")


def assert_same(src, dst) -> None:
    assert checksums(dst) == checksums(src)
    for state in (fk_state, trigger_state, sequence_state):
        assert state(dst) == state(src), state.__name__
    # the same indexes, with their marks and comments (definitions print alike on 15 and 16)
    assert index_state(dst) == index_state(src)


@pytest.mark.parametrize("direction", ["15 to 16", "16 to 15"])
def test_the_fidelity_database_across_major_versions(src, dst, db16, tmp_path, direction):
    """Every table of the fidelity schema (partitions, generated and identity columns, enums,
    composites, arrays, domains, ranges, NOT VALID checks, FK cycles, triggers, comments):
    as the table owner, not a superuser, as a move to a new server is usually run."""
    old, new = (src, db16) if direction == "15 to 16" else (db16, dst)
    load_fidelity(old, new, owner="app_owner")
    r = copy(owner_dsn(old), owner_dsn(new), "--yes", "-p", "3", state_dir=tmp_path / "state")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert_same(old, new)
    # and verify, whose digests the two servers compute each in its own version
    v = pgcopy("verify", "-s", owner_dsn(old), "-d", owner_dsn(new), state_dir=None)
    assert v.returncode == 0, v.stdout + v.stderr
