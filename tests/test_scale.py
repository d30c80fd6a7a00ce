"""Issue 11: thousands of tables on a server with default lock settings and few
connections; pgcopy's sessions stay inside their lock budget on both sides, and the source's
exporting transaction ends while the last tables are still loading."""

from __future__ import annotations

import json
import re
import sys
import threading
import time

import psycopg2
import pytest

from pgcopy import datasets
from pgcopy.connections import Renewing
from pgcopy.errors import PgcopyError
from pgcopy.packed import Appended, Chunked, Chunks
from pgcopy.sandbox import FAST_SETTINGS, throwaway_cluster
from tests.fix_clusters import Db
from tests.helpers import (
    OWNER,
    OWNER_PW,
    checksums,
    copy,
    role_with_limit,
    sessions_at_limits,
    sessions_opened,
)

TABLES = 600  # with max_connections = 30 the lock table holds 64 x 30 = 1,920 entries


@pytest.fixture(scope="module")
def small_clusters():
    settings = dict(FAST_SETTINGS, max_connections="30", max_locks_per_transaction="64")
    with throwaway_cluster(settings) as a, throwaway_cluster(settings) as b:
        yield a, b


def _fresh(cluster, name: str, owner: str | None) -> Db:
    conn = psycopg2.connect(cluster.dsn("postgres"))
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    cur.execute(f"CREATE DATABASE {name}")
    if owner:
        cur.execute(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{owner}') THEN "
            f"CREATE ROLE {owner} LOGIN PASSWORD '{OWNER_PW}'; END IF; END $$"
        )
        cur.execute(f"ALTER DATABASE {name} OWNER TO {owner}")
    conn.close()
    return Db(cluster, name)


# every lock a session holds, one row per mode
ALL_LOCKS = """SELECT coalesce(max(n), 0) FROM (
                 SELECT count(*) n FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                  WHERE a.application_name LIKE 'pgcopy:%%' GROUP BY l.pid) x"""
# the entries a session takes in the shared lock table: one per locked object, whatever
# the modes, fast-path locks (weak relation locks, 16 per backend) left out
SHARED_ENTRIES = """SELECT coalesce(max(n), 0) FROM (
                      SELECT count(DISTINCT (l.locktype, l.database, l.relation, l.page, l.tuple,
                                             l.virtualxid, l.transactionid::text, l.classid, l.objid, l.objsubid)) n
                        FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                       WHERE a.application_name LIKE 'pgcopy:%%' AND NOT l.fastpath GROUP BY l.pid) x"""


# on the destination only: which backends ran pgcopy's FK drops and adds (superuser's
# event trigger, writing for any role)
FK_DDL_LOG = """
CREATE SCHEMA audit;
CREATE TABLE audit.fk_ddl (pid int, what text);
GRANT USAGE ON SCHEMA audit TO PUBLIC;
GRANT INSERT ON audit.fk_ddl TO PUBLIC;
CREATE FUNCTION audit.log_fk_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
  IF current_query() LIKE '%DROP CONSTRAINT%' THEN
    INSERT INTO audit.fk_ddl VALUES (pg_backend_pid(), 'drop');
  ELSIF current_query() LIKE '%FOREIGN KEY%' THEN
    INSERT INTO audit.fk_ddl VALUES (pg_backend_pid(), 'add');
  END IF;
END $$;
CREATE EVENT TRIGGER log_fk_ddl ON ddl_command_end WHEN TAG IN ('ALTER TABLE') EXECUTE FUNCTION audit.log_fk_ddl();
"""


class LockWatch(threading.Thread):
    """Samples pg_locks: the most locks any pgcopy session held."""

    def __init__(self, db: Db, query: str = ALL_LOCKS):
        super().__init__(daemon=True)
        self.db, self.query, self.peak, self.stop, self.error = db, query, 0, False, None

    def run(self) -> None:
        conn = psycopg2.connect(self.db.dsn)
        conn.autocommit = True
        cur = conn.cursor()
        while not self.stop:
            try:
                cur.execute(self.query)
            except psycopg2.Error as exc:
                self.error = exc  # the test fails on it: a watch that stopped proves nothing
                break
            self.peak = max(self.peak, cur.fetchone()[0])
            time.sleep(0.02)
        conn.close()


@pytest.mark.parametrize("as_owner", [True, False], ids=["owner", "superuser"])
def test_many_tables_on_a_default_lock_table(small_clusters, tmp_path, as_owner):
    owner = OWNER if as_owner else None
    src = _fresh(small_clusters[0], "scale_src", owner)
    dst = _fresh(small_clusters[1], "scale_dst", owner)
    prefix = f"SET ROLE {owner};\n" if owner else ""
    for db in (src, dst):
        db.execute(prefix + datasets.many_tables_schema(TABLES))
    src.execute(prefix + datasets.many_tables_seed(TABLES))
    fks = dst.scalar("SELECT count(*) FROM pg_constraint WHERE contype = 'f'")
    assert fks > 600
    dst.execute(FK_DDL_LOG)
    watch, dwatch = LockWatch(src), LockWatch(dst, SHARED_ENTRIES)
    watch.start()
    dwatch.start()
    try:
        dsn = (
            (lambda db: db.cluster.dsn(db.dbname, user=OWNER, password=OWNER_PW))
            if owner
            else (lambda db: db.dsn)
        )
        r = copy(dsn(src), dsn(dst), "--yes", "-p", "4", "--debug", state_dir=tmp_path / "state", timeout=600)
    finally:
        watch.stop = dwatch.stop = True
        watch.join(5)
        dwatch.join(5)
    assert r.returncode == 0, r.stderr[-3000:]
    assert watch.error is None and dwatch.error is None, (watch.error, dwatch.error)
    assert {k: v for k, v in checksums(dst).items() if not k.startswith("audit.")} == checksums(src)
    assert dst.scalar("SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND convalidated") == fks
    assert dst.scalar("SELECT last_value FROM t0_id_seq") == 5
    # one table at a time per worker, and the coordinator's catalog reads: well inside 64
    assert 0 < watch.peak <= 40, watch.peak
    # on the destination, a batch of small tables takes at most half of a session's share
    # of the lock table (its relations and sequences), plus the session's own
    assert 0 < dwatch.peak <= 40, dwatch.peak
    assert "small tables in" in r.stderr
    # what the coordinator keeps per table through the load was in its file (pgcopy.spill)
    spilled = int(
        re.search(r"packed plan: ([0-9,]+) bytes in a temporary file", r.stderr)[1].replace(",", "")
    )
    assert spilled > 40 * TABLES, spilled
    # FKs were dropped and re-added on several sessions at once, without deadlocks
    sessions = dict(dst.query("SELECT what, count(DISTINCT pid) FROM audit.fk_ddl GROUP BY what"))
    assert sessions.get("drop", 0) >= 2 and sessions.get("add", 0) >= 2, sessions
    assert "deadlock" not in r.stderr
    # the exporting transaction ended before the load did
    lines = r.stderr.splitlines()
    released = next(i for i, line in enumerate(lines) if "source snapshot released" in line)
    last_done = max(i for i, line in enumerate(lines) if "Completed" in line)
    assert released < last_done


def test_no_server_session_goes_through_every_table(small_clusters, tmp_path, monkeypatch):
    """A server keeps every relation a session opens in that session's caches until it
    ends (70-160 MB a session at 40,000 tables): the workers, the FK restore and the
    size reads replace their sessions as they go, within the same connection slots
    (max_connections = 30 here).  The same copy twice, renewing at 1,000,000 relations
    (never, here) and at 40."""
    src = _fresh(small_clusters[0], "renew_src", None)
    dst = _fresh(small_clusters[1], "renew_dst", None)
    for db in (src, dst):
        db.execute(datasets.many_tables_schema(200))
    src.execute(datasets.many_tables_seed(200))

    def run() -> None:
        r = copy(src.dsn, dst.dsn, "--yes", "-p", "2", state_dir=tmp_path / "state")
        assert r.returncode == 0, r.stderr[-3000:]
        assert checksums(dst) == checksums(src)
        assert dst.scalar("SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND NOT convalidated") == 0

    opened = sessions_at_limits((src, dst), ("1000000", "40"), monkeypatch, run)
    grew = [n - m for n, m in zip(opened["40"], opened["1000000"], strict=True)]
    # on the source: the size reads, 10 chunks of 20 tables (60 relations each), and the
    # workers' loads (200 tables of 2 relations)
    assert grew[0] >= 15, opened
    # on the destination the same, and the FK drops, adds and checks (200 FKs)
    assert grew[1] >= grew[0] + 15, opened


def test_the_catalog_reads_on_renewed_source_sessions_stay_in_the_snapshot(src, dst, monkeypatch):
    """The planning measures and reads the source's tables on sessions renewed as they go
    (each caches what it reads), each in the run's snapshot: a column added after the
    snapshot stays out of the plan, which is the plan read on one session."""
    from psycopg2 import sql

    from pgcopy import plan as planmod
    from pgcopy.connections import Session
    from pgcopy.log import Logger
    from pgcopy.plan import PlanInputs
    from pgcopy.planner import PlanRequest, read_plan
    from tests.helpers import load_fidelity

    load_fidelity(src, dst)
    monkeypatch.setattr(planmod, "PLAN_CHUNK", 3)
    exporter = psycopg2.connect(src.dsn)
    exporter.set_session(isolation_level="REPEATABLE READ", readonly=True)
    watch = src.connect()
    try:
        cur = exporter.cursor()
        cur.execute("SELECT pg_export_snapshot()")
        req = PlanRequest(
            src.dsn, dst.dsn, Session("renewtest"), cur.fetchone()[0], "5s", PlanInputs(), readonly_dest=True
        )
        monkeypatch.setenv("PGCOPY_SESSION_RELATIONS", "1000000")
        one = read_plan(req, Logger(stream=None))
        last = one.tasks[len(one.tasks) - 1].key  # in the last chunk
        src.execute(sql.SQL("ALTER TABLE {} ADD COLUMN late int").format(sql.Identifier(*last)))
        monkeypatch.setenv("PGCOPY_SESSION_RELATIONS", "3")
        before = sessions_opened(watch)
        renewed = read_plan(req, Logger(stream=None))
        opened = sessions_opened(watch) - before
    finally:
        exporter.close()
        watch.close()
    chunks = -(-len(one.tasks) // 3)
    assert len(one.tasks) > 12 and opened >= chunks, (opened, chunks)
    assert list(renewed.tasks) == list(one.tasks) and renewed == one
    assert "late" not in next(t for t in renewed.tasks if t.key == last).columns


def test_a_renewing_session_is_replaced_once_it_has_opened_its_share(src, monkeypatch):
    monkeypatch.setenv("PGCOPY_SESSION_RELATIONS", "10")
    opened = []

    def open_session():
        opened.append(psycopg2.connect(src.dsn))
        return opened[-1]

    session = Renewing(open_session)
    first = session.using(6)
    assert session.using(4) is first and len(opened) == 1
    second = session.using(1)  # 11 > 10: a new session, the old one closed first
    assert second is not first and first.closed and not second.closed
    assert session.conn is second and session.using(9) is second
    second.close()


class _SlotTaker:
    """Another client of the role: takes the connection slot a renewal gives back,
    before the renewal reconnects, and leaves it ``hold`` seconds later."""

    def __init__(self, dsn: str, hold: float = 0.6):
        self.dsn, self.hold, self.took = dsn, hold, None
        self.timer: threading.Timer | None = None

    def take(self) -> None:
        deadline = time.monotonic() + 10
        while self.took is None:
            try:
                self.took = psycopg2.connect(self.dsn)
            except psycopg2.OperationalError:  # the closed session's backend is still exiting
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        self.timer = threading.Timer(self.hold, self.took.close)
        self.timer.start()

    def gone(self) -> None:
        """Left (no thread of ours outlives the test: the planning forks only alone)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer.join()
        if self.took is not None:
            self.took.close()


@pytest.fixture
def one_slot(src):
    """A role of the source with CONNECTION LIMIT 1: its DSN."""
    return role_with_limit(src, "one_slot", 1)


def test_a_renewal_waits_for_the_slot_another_client_took(one_slot, monkeypatch):
    """A session is renewed by closing it first; on a server (or a role, or a database)
    at its connection limit another client may take the slot in between.  The renewal
    waits for one (connections.reconnect) instead of failing what it was opened for."""
    from pgcopy.connections import Session, connect

    monkeypatch.setenv("PGCOPY_SESSION_RELATIONS", "10")
    other = _SlotTaker(one_slot)
    opened = []

    def open_session():
        if opened and other.took is None:  # the first session is closed: the other client is quicker
            other.take()
        opened.append(connect(one_slot, "source", Session("slots")))
        return opened[-1]

    session = Renewing(open_session)
    first = session.using(10)
    started = time.monotonic()
    try:
        second = session.using(1)
    finally:
        other.gone()
    assert first.closed and not second.closed
    assert time.monotonic() - started >= 0.5  # it waited for the other client to leave
    second.close()


def test_a_worker_renewing_its_sessions_waits_for_a_taken_slot(one_slot, dst, monkeypatch):
    from pgcopy.connections import Session
    from pgcopy.progress import NullSlot
    from pgcopy.stream import StreamSpec
    from pgcopy.worker import Worker, WorkerSpec

    class Line:  # the coordinator's end, as far as opening sessions goes
        def stopped(self) -> bool:
            return False

    spec = WorkerSpec(one_slot, dst.dsn, None, StreamSpec(), Session("slots"))
    worker = Worker(0, spec, Line(), NullSlot())
    worker.src, worker.dst = worker._connect()
    worker._renew()
    assert worker.src is None
    other = _SlotTaker(one_slot)
    other.take()
    try:
        worker.src, worker.dst = worker._connect()
    finally:
        other.gone()
    assert not worker.src.closed
    worker._reset()
    # a failure that is not a renewal's is not waited for: the item fails at once
    other = _SlotTaker(one_slot, hold=30)
    other.take()
    try:
        with pytest.raises(PgcopyError, match="too many connections for role"):
            worker._connect()
    finally:
        other.gone()


def test_an_fk_session_renewed_alone_waits_for_a_taken_slot(dst, monkeypatch):
    from pgcopy import fkeys as fkmod
    from pgcopy.connections import Session

    monkeypatch.setenv("PGCOPY_SESSION_RELATIONS", "2")
    dsn = role_with_limit(dst, "fk_one", 1)
    sessions = fkmod.Sessions(fkmod.RestoreTarget(dsn, "5s", Session("slots"), parallel=1))
    try:
        with sessions.session(1) as first:  # two relations: retired when given back
            pass
        assert first.closed
        other = _SlotTaker(dsn)
        other.take()
        try:
            with sessions.session() as second:
                second.cursor().execute("SELECT 1")
        finally:
            other.gone()
    finally:
        sessions.close()


def test_verify_renewing_its_readers_waits_for_a_taken_slot(src, dst, monkeypatch, capsys):
    """verify's reader replaces its pair of sessions every few tables; another client of
    the source's role takes the slot it gives back, and verify waits for it."""
    from pgcopy.cli import main
    from pgcopy.commands import verify

    dsn = role_with_limit(src, "one_pair", 2)  # the run's own session and one reader
    src.execute("CREATE SCHEMA vp AUTHORIZATION one_pair")
    dst.execute("CREATE SCHEMA vp")
    tables = "".join(
        f"CREATE TABLE vp.t{i} (id int PRIMARY KEY); INSERT INTO vp.t{i} VALUES ({i});" for i in range(6)
    )
    src.execute("SET ROLE one_pair;" + tables)
    dst.execute(tables)
    monkeypatch.setenv("PGCOPY_SESSION_RELATIONS", "4")  # a new pair every 2 tables
    others, readers, opened = [], verify._readers, []

    def readers_after_another_client(opts, session):
        if len(opened) > len(others):  # a pair was closed since: the other client is quicker
            others.append(_SlotTaker(dsn))
            others[-1].take()
        pair = readers(opts, session)
        opened.append(pair)
        return pair

    monkeypatch.setattr(verify, "_readers", readers_after_another_client)
    try:
        code = main(["verify", "-s", dsn, "-d", dst.dsn, "-p", "1", "--include", "vp.*"])
    finally:
        for other in others:
            other.gone()
    err = capsys.readouterr().err
    assert code == 0, err
    assert "6 tables match" in err, err
    assert len(others) >= 2 and len(opened) == len(others) + 1  # each renewal waited for the other client


def test_catalog_names_arrive_interned(src):
    """Names from the catalog are interned on the coordinator's catalog sessions: the
    schema's name is one object for every table, FK and sequence that names it (at 3,000
    tables the plan otherwise held each name in up to ten copies)."""
    from pgcopy import catalog

    src.execute(
        "CREATE TABLE p (id serial PRIMARY KEY); CREATE TABLE q (id serial PRIMARY KEY, p int REFERENCES p)"
    )
    conn = src.connect()
    try:
        catalog.intern_names(conn)
        cur = conn.cursor()
        tables = {t.key[1]: t for t in catalog.read_tables(cur)}
        fk = catalog.read_foreign_keys(cur)[0]
        seqs = list(catalog.read_sequences(cur))
    finally:
        conn.close()
    schema = tables["p"].key[0]
    assert tables["q"].key[0] is schema and fk.table[0] is schema and fk.ref_table[0] is schema
    assert all(s.schema is schema for s in seqs)
    assert fk.ref_table[1] is tables["p"].key[1] and fk.columns[0] == "p"


def test_tasks_and_results_cross_the_line_without_filling_free_lists():
    """What crosses a worker's line pickles by position: dataclasses' own pickling of a
    slotted class left a tuple on CPython's free list per object, up to 2,000 per size
    (0.8 MB more in every worker at 10,000 tables).  Thousands of round trips now leave
    the process's allocated blocks where they were.  The plan's FKs and sequences, made
    again from their packed chunks at each pass over them (235 chunks a run at 1,000
    tables), pickle the same way: twice as fast to read as dataclasses' own."""
    import gc
    import pickle
    import sys

    from pgcopy.catalog import CheckConstraint, ForeignKey, Index, Sequence, Trigger
    from pgcopy.stream import TableResult
    from pgcopy.task import CopyTask

    key = ("public", "t")
    task = CopyTask(
        key=key,
        columns=("id",),
        triggers=(Trigger(key, "trg", "O"),),
        est_rows=1.0,
        est_bytes=8192,
        dest_est_rows=0.0,
        dest_est_bytes=0,
        indexes=(Index("i", "CREATE INDEX i ON public.t (id)", None, None, False, False, None, None),),
        checks=(CheckConstraint("c", "CHECK (id > 0) NOT VALID", None),),
        sequences=(("public", "t_id_seq"),),
    )
    result = TableResult(key, rows=3, bytes=10, seconds=0.5, format="binary")
    fk = ForeignKey(
        "t_p", key, ("public", "p"), "FOREIGN KEY (p) REFERENCES public.p(id)", True, ("p",), ("id",)
    )
    seq = Sequence(("public", "t_id_seq"), key)
    for obj in (task, result, fk, seq):
        assert pickle.loads(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)) == obj

    gc.collect()  # a full collection empties the free lists
    before = sys.getallocatedblocks()
    for _ in range(3000):
        pickle.loads(pickle.dumps([(1, task)], pickle.HIGHEST_PROTOCOL))
        pickle.loads(pickle.dumps(("done", 0, result), pickle.HIGHEST_PROTOCOL))
        pickle.loads(pickle.dumps([fk, seq], pickle.HIGHEST_PROTOCOL))
    gc.collect(1)  # not a full collection: it would empty them again
    assert sys.getallocatedblocks() - before < 500


def test_a_big_message_is_held_once_while_sent_and_whole_when_received():
    """A big message on a worker's line is written after its length, not joined to it
    (which held it twice), and received into one buffer.  Small messages, big ones and an
    end of file in the middle all read back as sent."""
    import os
    import socket
    import threading
    import tracemalloc

    from pgcopy import channel

    payload = bytes(8 << 20)
    a, b = socket.socketpair()
    drained = []

    def drain() -> None:  # reads without keeping: only the sender's memory is traced
        buf, n = bytearray(1 << 16), 0
        while k := b.recv_into(buf):
            n += k
        drained.append(n)

    reader = threading.Thread(target=drain)
    reader.start()
    tracemalloc.start()
    try:
        channel.send(a, payload)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        a.close()
        reader.join()
        b.close()
    assert drained[0] > len(payload)
    assert peak < 1.75 * len(payload)  # the pickle (pickle.dumps grows by half), no copy of it

    a, b = socket.socketpair()
    try:
        sender = threading.Thread(target=lambda: [channel.send(a, m) for m in ("small", payload, [1, 2])])
        sender.start()
        assert [channel.recv(b), channel.recv(b), channel.recv(b)] == ["small", payload, [1, 2]]
        sender.join()
        a.sendall(channel._LENGTH.pack(100) + os.urandom(10))  # cut short
        a.close()
        with pytest.raises(EOFError):
            channel.recv(b)
    finally:
        b.close()


def test_the_plan_names_each_table_with_one_tuple(src, dst):
    """A table's key is one tuple in the plan's objects: its task and, within a packed
    chunk, its FKs' ends name it with the same object, and equal lists of column names are
    one tuple (a plan of 10,000 tables held each key four times over, 4.5 MB of tuples);
    the FKs and sequences are packed as they are read."""
    from pgcopy import catalog
    from pgcopy.log import Logger
    from pgcopy.plan import PlanInputs, build_plan

    schema = """CREATE TABLE p (id serial PRIMARY KEY, v text);
                CREATE TABLE p2 (id int PRIMARY KEY, v text);
                CREATE TABLE q (id serial PRIMARY KEY, v text, p int REFERENCES p);
                CREATE TABLE r (id serial PRIMARY KEY, v text, p int REFERENCES p, q int REFERENCES q)"""
    src.execute(schema)
    dst.execute(schema)
    sconn, dconn = src.connect(), dst.connect()
    try:
        for conn in (sconn, dconn):
            catalog.intern_names(conn)
        sizes = catalog.read_sizes(sconn), catalog.read_sizes(dconn)
        plan = build_plan(sconn.cursor(), dconn.cursor(), PlanInputs(), Logger(stream=None), *sizes)
        # tables of one shape share one tuple of columns in the planning's catalog reads
        tables = {t.key[1]: t.oid for t in catalog.read_tables(sconn.cursor(), sizes[0])}
        cols = catalog.read_columns(sconn.cursor(), tables.values())
        assert cols[tables["p"]] is cols[tables["p2"]] and [c.name for c in cols[tables["p"]]] == ["id", "v"]
        assert cols[tables["q"]][:2] == cols[tables["p"]] and cols[tables["q"]][0] is cols[tables["p"]][0]
    finally:
        sconn.close()
        dconn.close()
    keys = {t.key[1]: t.key for t in plan.tasks}
    assert {fk.ref_table[1] for fk in plan.fkeys} == {"p", "q"}
    # the FKs are packed as they are read; in a chunk, one key tuple names a table
    assert isinstance(plan.fkeys, Chunked)
    fks = plan.fkeys.chunks.open(0)
    assert [fk.name for fk in fks] == ["q_p_fkey", "r_p_fkey", "r_q_fkey"]
    assert fks[0].ref_table is fks[1].ref_table and fks[1].table is fks[2].table
    seqs = plan.sequences.open()  # packed until needed (pgcopy.packed.Packed)
    assert isinstance(seqs.sequences, Chunked)  # and packed as they were read
    assert len(seqs.sequences) == 3
    assert {s.owner_table for s in seqs.sequences} <= set(keys.values())
    # the role owns them all: each loaded table is handed the sequences it owns by the
    # plan, not after it
    assert all(s.in_load for s in seqs.sequences)
    assert {t.key[1]: t.sequences for t in plan.tasks} == {
        "p": (("public", "p_id_seq"),),
        "p2": (),
        "q": (("public", "q_id_seq"),),
        "r": (("public", "r_id_seq"),),
    }
    assert len({id(fk.ref_columns) for fk in fks}) == 1  # ("id",) for all three
    tasks = {t.key[1]: t for t in plan.tasks}
    assert tasks["p"].columns == ("id", "v") and tasks["p2"].columns is tasks["p"].columns
    assert tasks["p2"].column_types is tasks["p"].column_types


def test_the_plan_from_the_planning_process_is_the_plan_read_here(src, dst):
    """STEP 3 runs in a forked process that pickles the plan back (pgcopy.planner): what
    arrives equals what reading the catalogs in this process yields, warnings included,
    its tasks and FKs packed (pgcopy.packed.Chunked), so the coordinator unpickles bytes."""
    from pgcopy.connections import Session
    from pgcopy.log import Logger
    from pgcopy.plan import PlanInputs
    from pgcopy.planner import PlanRequest, plan_apart, read_plan
    from tests.helpers import load_fidelity

    load_fidelity(src, dst)
    inputs = PlanInputs(exclude=("no_such_table",))
    req = PlanRequest(src.dsn, dst.dsn, Session("plantest"), None, "5s", inputs, readonly_dest=True)
    here, there = Logger(stream=None), Logger(stream=None)
    expected = read_plan(req, here)
    assert threading.active_count() == 1  # else plan_apart reads in this process, unforked
    got = plan_apart(req, there)
    assert len(got.tasks) > 10 and got.fkeys and got.sequences.open().sequences
    assert got == expected
    assert there.warnings == here.warnings and any("no_such_table" in w for w in there.warnings)
    assert isinstance(got.tasks, Chunked) and isinstance(got.fkeys, Chunked)
    assert list(got.tasks) == list(expected.tasks) and list(got.fkeys) == list(expected.fkeys)


def test_the_plan_is_handed_over_without_a_whole_copy_of_its_pickle(monkeypatch):
    """The planning process streams its pickled plan and the coordinator makes the objects
    as it arrives: a plan holding 8 MB arrives with 8 MB more in the coordinator, where a
    message received whole held its pickle beside it (16 MB)."""
    import tracemalloc

    from pgcopy import planner
    from pgcopy.log import Logger

    big = 8 << 20
    monkeypatch.setattr(planner, "read_plan", lambda req, log: bytearray(big))  # the child's
    assert threading.active_count() == 1  # else plan_apart reads in this process, unforked
    tracemalloc.start()
    try:
        got = planner.plan_apart(None, Logger(stream=None))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == bytearray(big)
    assert peak < 1.25 * big


def test_big_catalog_reads_come_through_a_server_side_cursor(src, monkeypatch):
    """Reads that grow with the table count (catalog.streamed) fetch FETCH_ROWS rows at a
    time from a cursor of their own, closed once read; on a connection in autocommit (no
    transaction to hold a cursor) they come at once."""
    from pgcopy import catalog

    monkeypatch.setattr(catalog, "FETCH_ROWS", 100)
    query = "SELECT g FROM generate_series(1, 1000) g"
    conn = src.connect()
    conn.autocommit = False
    try:
        probe = conn.cursor()
        rows = catalog.streamed(conn.cursor(), query)
        first = next(rows)
        probe.execute("SELECT count(*) FROM pg_cursors WHERE name LIKE 'pgcopy_read_%'")
        assert probe.fetchone()[0] == 1
        assert [first[0], *(r[0] for r in rows)] == list(range(1, 1001))
        probe.execute("SELECT count(*) FROM pg_cursors")
        assert probe.fetchone()[0] == 0
        conn.rollback()
        conn.autocommit = True
        assert [r[0] for r in catalog.streamed(conn.cursor(), query)] == list(range(1, 1001))
    finally:
        conn.close()


def test_array_literals_and_sizes_read_back_as_given(src):
    """oid[] and text[] parameters as one literal each (psycopg2 adapts a list item by
    item): names with quotes, backslashes, commas, braces and spaces read back unchanged,
    and oids sent back end to end as int8send values too;
    the sizes' arrays answer by oid whatever order they were given in."""
    from pgcopy import catalog

    names = ["plain", 'with "quotes"', "back\\slash", "a,b", "{braces}", " spaced ", "NULL", "", "é"]
    conn = src.connect()
    try:
        cur = conn.cursor()
        cur.execute(
            "SELECT %s::text[], %s::oid[]", (catalog.text_array(names), catalog.oid_array([4294967295, 1, 0]))
        )
        assert cur.fetchone() == (names, [4294967295, 1, 0])
        # the oids read in one value (catalog.read_sizes lists every table so)
        cur.execute(
            "SELECT string_agg(int8send(o::int8), ''::bytea ORDER BY o) FROM unnest(%s::oid[]) o",
            (catalog.oid_array([4294967295, 1, 0, 70000]),),
        )
        assert list(catalog.int8s(cur.fetchone()[0])) == [0, 1, 70000, 4294967295]
        cur.execute("SELECT string_agg(int8send(o::int8), ''::bytea) FROM unnest('{}'::oid[]) o")
        assert list(catalog.int8s(cur.fetchone()[0])) == []
    finally:
        conn.close()
    sizes = catalog.Sizes([(30, 3, 1), (10, 1, 0), (20, 2, 2)])
    assert list(sizes.oids) == [10, 20, 30] and len(sizes) == 3
    assert sizes.get(20) == (2, 2) and sizes.get(30) == (3, 1) and sizes.get(15) == (0, 0)
    assert catalog.Sizes().get(1, (7, 7)) == (7, 7)


def test_sizes_are_read_in_one_round_trip_per_few_tables(src):
    """Each SIZE_CHUNK tables are sized by one statement in its own transaction: no BEGIN
    and COMMIT around it (three round trips where one does), and the connection is given
    back as it came."""
    import math

    from pgcopy import catalog

    src.execute("".join(f"CREATE TABLE sized_{i} (id int PRIMARY KEY);" for i in range(45)))
    conn = psycopg2.connect(src.dsn)
    try:
        cur = conn.cursor()
        cur.execute("SET log_statement = 'all'; SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
        conn.commit()
        start = src.cluster.logfile.stat().st_size
        sizes = catalog.read_sizes(conn)
        assert conn.autocommit is False
        tables = dict(
            src.query("SELECT 'sized_' || i, ('sized_' || i)::regclass::oid FROM generate_series(0, 44) i")
        )
        assert all(sizes.get(oid, None) is not None for oid in tables.values())
    finally:
        conn.close()
    with open(src.cluster.logfile, "rb") as fh:
        fh.seek(start)
        ours = [line for line in fh.read().decode(errors="replace").splitlines() if f"[{pid}]" in line]
    statements = [line.split("statement: ", 1)[1] for line in ours if "statement: " in line]
    sized = [st for st in statements if "pg_table_size" in st]
    assert len(sized) == math.ceil(len(sizes) / catalog.SIZE_CHUNK)
    assert not [st for st in statements if st.strip().upper() in ("BEGIN", "COMMIT")]


def test_a_chunked_list_reads_like_a_list_and_keeps_little_as_objects(monkeypatch):
    """The plan's packed lists: indexing, slices and passes as a list's; a pickle carries
    only the compressed chunks.  A long list keeps at most RECENT chunks as objects, and
    a pass over all of them keeps none; a list of at most KEPT chunks keeps each chunk it
    has read, so passes after the first unpickle nothing."""
    import pickle

    n = 3 * Chunked.KEPT * Chunked.CHUNK // 2
    items = [(f"schema_{i % 7}", f"table_{i}", i * 1.5) for i in range(n)]
    c = Chunked(items)
    assert len(c) == n and len(c.chunks) == -(-n // Chunked.CHUNK) > Chunked.KEPT
    assert c == items and list(c) == items
    assert c._recent == ()  # whole passes go around the recent chunks
    assert c[:40] == items[:40] and c[5:900:97] == items[5:900:97]
    assert c[-1] == items[-1] and c[0] == items[0]
    with pytest.raises(IndexError):
        c[n]
    for i in range(0, 1000, 61):
        assert c[i] == items[i]
    assert [k for k, _ in c._recent] == [7, 6, 5, 4]  # the last RECENT chunks read, newest first
    back = pickle.loads(pickle.dumps(c))
    assert back == items and back._recent == ()
    assert len(pickle.dumps(c)) < len(pickle.dumps(items)) / 2
    assert Chunked() == [] and len(Chunked()) == 0

    short = Chunked(items[:1000])
    assert list(short) == items[:1000] and len(short._recent) == len(short.chunks)
    opened = []
    monkeypatch.setattr(Chunks, "open", lambda self, c: opened.append(c))  # any unpickling shows
    assert list(short) == items[:1000] and short[999] == items[999] and not opened
    assert pickle.loads(pickle.dumps(short))._recent == ()  # objects never cross a pickle


def test_spilled_arrays_read_and_write_like_the_arrays_they_replace(tmp_path):
    """pgcopy.spill: the run's per-table arrays in an unlinked file, a few pages in memory.
    Items, slices and passes read as the array's did, across pages and after pages were
    dropped and read back; writes survive a page's eviction; the file has no name."""
    import random
    from array import array
    from bisect import bisect_left

    from pgcopy import spill as sp

    s = sp.Spill(str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # unlinked at once: a killed run leaves nothing
    rnd = random.Random(5)
    per = sp.PAGE_BYTES // 4
    n = per * (sp.KEPT_PAGES + 3) + 17  # more pages than are kept, the last one partial
    plain = array("I", (rnd.randrange(1 << 30) for _ in range(n)))
    flags = bytearray(rnd.randrange(3) for _ in range(n))
    a, f = sp.FileArray(s, plain), sp.FileArray(s, flags)
    assert len(a) == n and a.typecode == "I" and f.typecode == "B" and len(f) == n
    for i in [0, per - 1, per, n - 1, -1, *rnd.sample(range(n), 200)]:
        assert a[i] == plain[i] and f[i] == flags[i]
    assert a[per - 3 : 3 * per + 5] == plain[per - 3 : 3 * per + 5] and a[n - 5 :] == plain[n - 5 :]
    for i in rnd.sample(range(n), 500):  # scattered writes: pages are dropped and read back
        plain[i] = rnd.randrange(1 << 30)
        a[i] = plain[i]
        flags[i] = 2
        f[i] = 2
    assert list(a) == list(plain) and list(f) == list(flags) and a == plain
    assert sp.unspilled(a) == plain and sp.unspilled(f) == flags and isinstance(sp.unspilled(f), bytearray)
    assert len(a.kept) <= sp.KEPT_PAGES
    with pytest.raises(IndexError):
        a[n]
    with pytest.raises(TypeError):  # it stays in this process
        import pickle

        pickle.dumps(a)

    hashes = array("q", sorted(rnd.randrange(-(1 << 62), 1 << 62) for _ in range(3 * per)))
    hashes[10:13] = array("q", [hashes[10]] * 3)  # equal values, as bisect_left finds them
    sorted_ = sp.SortedFileArray(s, hashes)
    for x in [
        hashes[0] - 1,
        hashes[0],
        hashes[-1],
        hashes[-1] + 1,
        hashes[10],
        *rnd.sample(list(hashes), 300),
    ]:
        assert sorted_.bisect_left(x) == bisect_left(hashes, x)
        assert sorted_.bisect_left(x + 1) == bisect_left(hashes, x + 1)

    data = bytes(rnd.randrange(256) for _ in range(5000))
    b = sp.SpilledBytes(s, data)
    assert b[:] == data and b[100:2000] == data[100:2000] and len(b) == 5000
    s.close()


def test_a_state_directory_refusing_the_runs_file_is_one_line(tmp_path):
    """The run's file is made before anything changes: a directory that refuses it (here
    gone; full or read-only alike) is a one-line error saying nothing was changed."""
    from pgcopy.spill import Spill

    with pytest.raises(PgcopyError, match="cannot make the run's temporary file in .*nothing was changed"):
        Spill(str(tmp_path / "gone"))


FREED_BLOCKS = """
import sys
from pgcopy.spill import unmap_big_frees

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024

import pgcopy.worker  # psycopg2 and the rest, in both runs
if sys.argv[1] == "fixed":
    unmap_big_frees()
big = bytearray(4 << 20)
del big  # glibc alone now raises its threshold past 4 MB
blocks = [bytearray(b"x") * 300_000 for _ in range(200)]
before = rss()
del blocks[::2]  # every other one: kept ones between, the freed cannot merge
print(before - rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_big_blocks_freed_go_back_to_the_system():
    """The coordinator (and the planning process it forks) gives a freed block of 128 kB
    or more back at once, as the workers do: 100 blocks of 300 kB, freed between blocks
    kept, all return (30 MB).  Without it glibc, having freed one 4 MB block, keeps them
    in its heap."""
    import subprocess

    def freed(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", FREED_BLOCKS, mode], capture_output=True, text=True, check=True
        )
        return int(out.stdout)

    assert freed("fixed") >= 25
    assert freed("default") < 10  # what the fix is for


def test_the_plan_and_index_read_the_same_once_spilled(tmp_path):
    """What the coordinator moves into its file before the load (the plan's packed lists,
    the index of positions, a plan's batches) answers as before (a spilled index searches
    one page a lookup), and the index again from memory once read back after the load."""
    from array import array

    from pgcopy.keys import KeyIndex
    from pgcopy.plan import Batches
    from pgcopy.spill import SortedFileArray, Spill

    keys = [(f"s{i % 9}", f"t{i}") for i in range(20000)]
    index = KeyIndex(keys)
    items = [(k, i * 2.5) for i, k in enumerate(keys)]
    chunked = Chunked(items)
    batches = Batches([[i, i + 1] for i in range(0, 20000, 2)])
    spill = Spill(str(tmp_path))
    index.spill_into(spill)
    chunked.spill_into(spill)
    batches.spill_into(spill)
    assert isinstance(index._hashes, SortedFileArray) and not isinstance(chunked.chunks.data, bytearray)
    assert all(index[k] == i for i, k in enumerate(keys)) and ("s0", "nope") not in index
    assert chunked == items and chunked[12345] == items[12345] and list(chunked)[-1] == items[-1]
    assert batches[0] == [0, 1] and batches[-1] == [19998, 19999] and len(batches) == 10000
    index.in_memory()  # after the load: lookups from memory again
    assert isinstance(index._hashes, array) and all(index[k] == i for i, k in enumerate(keys))
    spill.close()


def test_the_loads_results_are_packed_as_they_arrive():
    """The load's results (LoadOutcome.done) grow at the end and are read whole after the
    load: every full chunk is packed, fewer than a chunk are kept as objects, and a pass
    reads them back in order."""
    from pgcopy.coordinator import LoadOutcome
    from pgcopy.stream import TableResult

    out = LoadOutcome()
    results = [TableResult(("s", f"t{i}"), rows=i, bytes=i * 10, seconds=i / 7) for i in range(300)]
    for r in results:
        out.done.append(r)
    assert isinstance(out.done, Appended) and len(out.done) == 300
    assert len(out.done.chunks) == 300 // Chunked.CHUNK and len(out.done.tail) == 300 % Chunked.CHUNK
    assert list(out.done) == results and out.done == results and list(out.done) == list(out.done)
    assert out.done[5] == results[5] and out.done[299] == results[299] and out.done[130] == results[130]
    assert Appended(results[:5]) == results[:5] and not Appended()


def test_packed_results_leave_no_object_per_chunk():
    """The load's results are packed end to end in one buffer: a chunk packed leaves no
    Python object behind (one per chunk, made while the FK restore's threads fill pages
    for a moment, kept Python's allocator from giving those pages back)."""
    import gc

    from pgcopy.stream import TableResult

    done = Appended()
    results = (TableResult(("s", f"t{i}"), rows=i, seconds=i / 7) for i in range(Chunked.CHUNK * 200))
    gc.collect()
    before = sys.getallocatedblocks()
    for r in results:
        done.append(r)
    gc.collect()
    assert len(done.chunks) == 200 and not done.tail
    assert sys.getallocatedblocks() - before < 20, sys.getallocatedblocks() - before


@pytest.mark.parametrize("window", [4096, 4])
def test_the_fk_restore_reads_the_catalog_a_chunk_at_a_time_and_tells_every_case(dst, monkeypatch, window):
    """drop_all makes its batches' FKs when they run, restore_all compares FKs with the
    catalog PRESENT_CHUNK at a time and restores them WINDOW at a time: across chunk and
    window boundaries each case is still told apart (absent: re-created; present NOT
    VALID: validated; rows that break it: left NOT VALID; another constraint of its name:
    missing), and the display hears each settled FK's position in the whole list once."""
    from dataclasses import replace

    from pgcopy import catalog
    from pgcopy import fkeys as fkmod
    from pgcopy.connections import Session

    monkeypatch.setattr(fkmod, "PRESENT_CHUNK", 3)
    monkeypatch.setattr(fkmod, "WINDOW", window)
    n = 10
    dst.execute(
        "CREATE TABLE p (id int PRIMARY KEY); INSERT INTO p SELECT generate_series(1, 5);"
        + "".join(
            f"CREATE TABLE c{i} (id int PRIMARY KEY, p int CONSTRAINT c{i}_p REFERENCES p);"
            f"INSERT INTO c{i} VALUES (1, 1);"
            for i in range(n)
        )
    )
    conn = dst.connect()
    cur = conn.cursor()
    fkmod.session_setup(cur, "5s")  # definitions read as the run reads them (qualified)
    fks = sorted(catalog.read_foreign_keys(cur), key=lambda fk: fk.table)
    conn.close()
    assert [fk.table[1] for fk in fks] == [f"c{i}" for i in range(n)]
    target = fkmod.RestoreTarget(dst.dsn, "5s", Session("chunktest"), parallel=2)
    fkmod.drop_all(target, Chunked(fks))
    assert dst.scalar("SELECT count(*) FROM pg_constraint WHERE contype = 'f'") == 0
    dst.execute(
        "ALTER TABLE c2 ADD CONSTRAINT c2_p FOREIGN KEY (p) REFERENCES p NOT VALID;"
        "INSERT INTO c5 VALUES (2, 99);"
        "ALTER TABLE c7 ADD CONSTRAINT c7_p CHECK (p > 0)"
    )
    heard = []
    out = fkmod.restore_all(replace(target, on_settled=lambda i, s: heard.append(i)), Chunked(fks))
    assert sorted(fk.table[1] for fk in out.restored) == [f"c{i}" for i in range(n) if i not in (5, 7)]
    assert [fk.table[1] for fk, _ in out.not_valid] == ["c5"]
    assert [fk.table[1] for fk, _ in out.missing] == ["c7"]
    assert sorted(heard) == [i for i in range(n) if i != 7]
    assert dst.scalar("SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND convalidated") == n - 2
    assert isinstance(out.restored, Appended)  # packed as it grows


def test_the_per_fk_statements_are_composed_without_parsing_a_template(src, monkeypatch):
    """A run makes an ADD, a DROP and perhaps a VALIDATE for every FK, and a LOCK per
    batch: composed with ``+``, since SQL.format parses its template at each call.  The
    text is what it was: quoted identifiers, MATCH, actions, SET NULL columns,
    deferrability, the comment a literal."""
    from psycopg2 import sql

    from pgcopy import fkeys as fkmod
    from pgcopy.catalog import ForeignKey

    def refuse(self, *a, **k):
        raise AssertionError("SQL.format in a per-FK statement")

    fk = ForeignKey(
        'we"ird',
        ("s x", "T"),
        ("s2", "R"),
        "-",
        True,
        ("a", "B c"),
        ("id", "k"),
        "f",
        "c",
        "n",
        True,
        True,
        ("a",),
        "it's",
    )
    conn = psycopg2.connect(src.dsn)
    try:
        monkeypatch.setattr(sql.SQL, "format", refuse)
        made = [
            fkmod._add_statement(fk, validated_now=False),
            fkmod._alter(fk, "DROP CONSTRAINT IF EXISTS"),
            fkmod._alter(fk, "VALIDATE CONSTRAINT"),
            fkmod._lock_statement([fk], "SHARE ROW EXCLUSIVE"),
        ]
        made = [m.as_string(conn) for m in made]
    finally:
        conn.close()
    assert made == [
        'ALTER TABLE "s x"."T" ADD CONSTRAINT "we""ird" FOREIGN KEY ("a", "B c") REFERENCES "s2"."R" ("id", "k") '
        'MATCH FULL ON UPDATE CASCADE ON DELETE SET NULL ("a") DEFERRABLE INITIALLY DEFERRED NOT VALID; '
        """COMMENT ON CONSTRAINT "we""ird" ON "s x"."T" IS 'it''s'""",
        'ALTER TABLE "s x"."T" DROP CONSTRAINT IF EXISTS "we""ird"',
        'ALTER TABLE "s x"."T" VALIDATE CONSTRAINT "we""ird"',
        'LOCK TABLE ONLY "s x"."T", "s2"."R" IN SHARE ROW EXCLUSIVE MODE',
    ]


def test_fk_phases_go_on_with_the_sessions_they_could_open(dst):
    """The FK drops and restores use more sessions than --parallel (the workers' and the
    early restore's share); a server that refuses one more (here the role's CONNECTION
    LIMIT) leaves the phase on the sessions it has, and every FK comes back."""
    from pgcopy import catalog
    from pgcopy import fkeys as fkmod
    from pgcopy.connections import Session

    dsn = role_with_limit(dst, "fk_two", 2)
    dst.execute(
        "CREATE SCHEMA two AUTHORIZATION fk_two; SET ROLE fk_two;"
        "CREATE TABLE two.p (id int PRIMARY KEY); INSERT INTO two.p VALUES (1);"
        + "".join(f"CREATE TABLE two.c{i} (id int PRIMARY KEY, p int REFERENCES two.p); " for i in range(40))
    )
    conn = psycopg2.connect(dsn)
    cur = conn.cursor()
    fkmod.session_setup(cur, "5s")
    fks = [fk for fk in catalog.read_foreign_keys(cur) if fk.table[0] == "two"]
    conn.close()
    assert len(fks) == 40
    target = fkmod.RestoreTarget(dsn, "5s", Session("slots"), parallel=6)
    fkmod.drop_all(target, fks)
    assert (
        dst.scalar(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND connamespace = 'two'::regnamespace"
        )
        == 0
    )
    out = fkmod.restore_all(target, fks)
    assert out.complete and len(out.restored) == 40
    assert (
        dst.scalar(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND connamespace = 'two'::regnamespace"
        )
        == 40
    )


def test_the_planning_reads_the_source_beside_the_destination(src, dst, monkeypatch):
    """The source's catalog reads (tables, columns, sequences) run on a thread of their
    own while the destination's run: two servers answering at once, where the planning
    waited for one, then the other.  Shown by a source read that waits until the
    destination's columns have been read: in turn, it would never end."""
    import threading

    from pgcopy import catalog
    from pgcopy.log import Logger
    from pgcopy.plan import PlanInputs, build_plan

    schema = "CREATE TABLE a (id serial PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY, a int REFERENCES a)"
    src.execute(schema)
    dst.execute(schema)
    dst_read = threading.Event()
    threads: dict[str, str] = {}
    read_columns = catalog.read_columns

    def columns(cur, oids, shared=None):
        side = "source" if cur.connection.dsn == src_dsn else "destination"
        threads[side] = threading.current_thread().name
        if side == "source":
            assert dst_read.wait(10), "the source was read after the destination, not beside it"
        out = read_columns(cur, oids, shared)
        if side == "destination":
            dst_read.set()
        return out

    monkeypatch.setattr(catalog, "read_columns", columns)
    sconn, dconn = src.connect(), dst.connect()
    src_dsn = sconn.dsn
    try:
        sizes = catalog.read_sizes(sconn), catalog.read_sizes(dconn)
        plan = build_plan(sconn.cursor(), dconn.cursor(), PlanInputs(), Logger(stream=None), *sizes)
    finally:
        sconn.close()
        dconn.close()
    assert {t.key[1] for t in plan.tasks} == {"a", "b"} and len(plan.fkeys) == 1
    assert threads["source"] != threads["destination"] == threading.current_thread().name


def test_the_report_keeps_its_long_lists_packed_and_writes_them_whole(tmp_path):
    """Per-table entries and per-FK names stay packed until the report is written (at
    40,000 tables they held 35 MB as dicts and strings); the JSON has every one, in order."""
    from pgcopy.report import TABLE_FIELDS, RunReport

    rep = RunReport()
    entries = [{k: (f"public.t{i}" if k == "table" else i) for k in TABLE_FIELDS} for i in range(300)]
    for e in entries:
        rep.tables.append(e)
    rep.fkeys_restored = Appended(f"fk{i}" for i in range(200))
    assert len(rep.tables.chunks) == 2 and len(rep.fkeys_restored.chunks) == 1  # packed, tails as objects
    rep.write(str(tmp_path / "r.json"))
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["tables"] == entries and data["fkeys_restored"] == [f"fk{i}" for i in range(200)]
    assert (
        data["fkeys_dropped"] == [] and data["sequences_set"] == [] and data["totals"]["tables_copied"] == 0
    )


def _plan_here(src, dst, inputs=None):
    from pgcopy import catalog
    from pgcopy.log import Logger
    from pgcopy.plan import PlanInputs, build_plan

    sconn, dconn = src.connect(), dst.connect()
    try:
        for conn in (sconn, dconn):
            catalog.intern_names(conn)
        sizes = catalog.read_sizes(sconn), catalog.read_sizes(dconn)
        return build_plan(sconn.cursor(), dconn.cursor(), inputs or PlanInputs(), Logger(stream=None), *sizes)
    finally:
        sconn.close()
        dconn.close()


def test_the_planning_holds_one_chunk_of_tables_at_a_time(src, dst, monkeypatch):
    """Neither catalog is held whole (both were 2 KB a table, 100 MB at 40,000 tables): the
    tables are planned PLAN_CHUNK at a time, the selection kept as arrays of hashes, and
    the plan is the same whatever the chunk size, across every kind of table (partitions,
    sequences set in the load or after it, FKs, matviews)."""
    import gc

    from pgcopy import plan as planmod
    from pgcopy import preflight
    from pgcopy.catalog import Table
    from tests.helpers import load_fidelity

    load_fidelity(src, dst)
    # names the chunks' reads pass as array literals (by key on the destination)
    odd = 'CREATE SCHEMA "Sch.ema"; CREATE TABLE "Sch.ema"."odd ""name"", {x}\\" (id int PRIMARY KEY)'
    src.execute(odd)
    dst.execute(odd)
    whole = _plan_here(src, dst)
    assert len(whole.tasks) > 12 and whole.ancestors and whole.matviews
    assert ("Sch.ema", 'odd "name", {x}\\') in {t.key for t in whole.tasks}
    alive: list[int] = []
    run_checks = preflight.run_checks

    def counted(chunk, problems):
        alive.append(sum(type(o) is Table for o in gc.get_objects()))
        return run_checks(chunk, problems)

    monkeypatch.setattr(preflight, "run_checks", counted)
    monkeypatch.setattr(planmod, "PLAN_CHUNK", 3)
    chunked = _plan_here(src, dst)
    assert len(alive) == -(-len(whole.tasks) // 3)
    assert max(alive) <= 2 * 3  # the chunk's, on both sides
    assert list(chunked.tasks) == list(whole.tasks)  # largest first, then by name
    assert list(chunked.fkeys) == list(whole.fkeys)
    seqs, whole_seqs = chunked.sequences.open(), whole.sequences.open()
    assert list(seqs.sequences) == list(whole_seqs.sequences)
    assert any(s.in_load for s in seqs.sequences) and any(not s.in_load for s in seqs.sequences)
    assert seqs.values == whole_seqs.values
    assert (chunked.matviews, chunked.ancestors) == (whole.matviews, whole.ancestors)


def test_matviews_are_found_a_chunk_at_a_time_in_refresh_order(src, dst, monkeypatch):
    """The matviews to refresh are looked for a chunk of loaded tables at a time (one read
    of every loaded oid grew the planning by 9 MiB at 160,000 tables), each kept at its
    longest path from any loaded table: mv_2 reads mv_1 (3 steps from mv_big, through a
    view) and mv_small (1 step), whose chunk comes later (smaller), and still comes after
    mv_1.  Unpopulated matviews and those on tables not loaded are left out."""
    from pgcopy import plan as planmod
    from pgcopy.plan import PlanInputs

    ddl = """
        CREATE TABLE mv_big (id int); CREATE TABLE mv_small (id int); CREATE TABLE mv_other (id int);
        CREATE VIEW mv_big_view AS SELECT id FROM mv_big;
        CREATE MATERIALIZED VIEW mv_1 AS SELECT count(*) AS n FROM mv_big_view;
        CREATE MATERIALIZED VIEW mv_2 AS SELECT (SELECT n FROM mv_1) + (SELECT count(*) FROM mv_small) AS n;
        CREATE MATERIALIZED VIEW mv_0 AS SELECT count(*) AS n FROM mv_small;
        CREATE MATERIALIZED VIEW mv_unpopulated AS SELECT count(*) AS n FROM mv_small WITH NO DATA;
        CREATE MATERIALIZED VIEW mv_elsewhere AS SELECT count(*) AS n FROM mv_other;
    """
    for db in (src, dst):
        db.execute(ddl)
    src.execute("INSERT INTO mv_big SELECT generate_series(1, 20000); INSERT INTO mv_small VALUES (1)")
    inputs = PlanInputs(include=("public.mv_big", "public.mv_small"))
    whole = _plan_here(src, dst, inputs)
    monkeypatch.setattr(planmod, "PLAN_CHUNK", 1)
    chunked = _plan_here(src, dst, inputs)
    assert [t.key for t in chunked.tasks] == [("public", "mv_big"), ("public", "mv_small")]
    expected = [("public", "mv_0"), ("public", "mv_1"), ("public", "mv_2")]
    assert whole.matviews == chunked.matviews == expected


def test_preflight_reports_every_chunks_problems_by_check(src, dst, monkeypatch):
    """Problems found chunk by chunk, and by the FK and sequence passes beside them, are
    listed by check in one order, as one pass over whole catalogs listed them."""
    from pgcopy import plan as planmod
    from pgcopy.errors import PreflightError

    tables = "".join(f"CREATE TABLE t{i} (id serial PRIMARY KEY, v text);" for i in range(6))
    src.execute(tables + "CREATE TABLE r (id int PRIMARY KEY, t0 int REFERENCES t0)")
    dst.execute(
        tables
        + "DROP TABLE t1; ALTER TABLE t4 ALTER v TYPE int USING 0; DROP SEQUENCE t5_id_seq CASCADE;"
        + "CREATE TABLE r (id int PRIMARY KEY, t0 int REFERENCES t0);"
        + "CREATE TABLE other (id int, t2 int REFERENCES t2)"
    )
    found = {}
    for chunk in (1000, 2):
        monkeypatch.setattr(planmod, "PLAN_CHUNK", chunk)
        with pytest.raises(PreflightError) as err:
            _plan_here(src, dst)
        found[chunk] = err.value.problems
    assert found[2] == found[1000]
    assert [p.split(":")[0] for p in found[2]] == [
        "table public.t1 does not exist on the destination",
        "table public.t4",
        "destination table public.other is not selected but its foreign key other_t2_fkey references "
        "selected table public.t2",
        "sequence public.t1_id_seq does not exist on the destination",  # dropped with its table
        "sequence public.t5_id_seq does not exist on the destination",
    ]


def test_key_sets_and_indexes_answer_like_sets_and_dicts():
    """pgcopy.keys: 8 or 12 bytes a key instead of a tuple and a string each."""
    import pickle
    from array import array

    from pgcopy.keys import KeyIndex, KeySet, TaskKeys, argsort

    keys = [("public", f"t{i}") for i in range(500)] + [("other", "t1"), ("Öffentlich", "t1")]
    index = KeyIndex(keys)
    assert len(index) == len(keys)
    assert all(index[k] == i and index.get(k) == i and k in index for i, k in enumerate(keys))
    assert ("public", "t500") not in index and index.get(("public", "t500"), -1) == -1
    with pytest.raises(KeyError):
        index[("x", "y")]
    some = KeySet(keys[::2])
    some.add(("late", "one"))
    assert all((k in some) == (i % 2 == 0) for i, k in enumerate(keys)) and ("late", "one") in some

    class T:
        def __init__(self, key):
            self.key = key

    assert list(TaskKeys([T(k) for k in keys[:3]])) == keys[:3] and TaskKeys([T(keys[7])])[0] == keys[7]
    # sorted in runs and merged (no list of every position), stable
    values = array("q", [(i * 7919) % 101 - 50 for i in range(9000)])
    assert list(argsort(values)) == sorted(range(9000), key=lambda i: (values[i], i))
    # made from the hashes by the planning, pickled across, good where str hashes agree
    made = KeyIndex.from_hashes(array("q", map(hash, keys)))
    assert made == index and pickle.loads(pickle.dumps(made)) == index and made.usable()
    made.probe += 1  # as made by a process that salts str hashes otherwise
    assert not made.usable()


def test_load_batches_are_two_arrays_handed_out_in_order():
    """plan.batches keeps its task indices in arrays (no list per batch, no int per table),
    and the load hands them out from a place in them (coordinator._Todo), a batch a worker
    could not take going out next."""
    from pgcopy.coordinator import _Todo
    from pgcopy.plan import Batches

    b = Batches([[0], [1, 2, 3], [4]])
    assert b == [[0], [1, 2, 3], [4]] and len(b) == 3 and b[1] == [1, 2, 3] and b[-1] == [4]
    todo = _Todo(b)
    first = todo.popleft()
    todo.appendleft(first)  # the worker was gone
    assert todo.popleft() == [0] and todo.popleft() == [1, 2, 3]
    todo.clear()
    assert not todo


def test_the_load_report_finds_each_result_by_position():
    """report.add_load reads each table's result through an array of positions (no dict of
    every result: 5.5 MB at 20,000 tables), in the plan's order whatever order the tables
    finished in, reading the packed results roughly in order (packed.Appended[i])."""
    from pgcopy.coordinator import LoadOutcome
    from pgcopy.report import RunReport
    from pgcopy.stream import TableResult
    from pgcopy.task import CopyTask

    tasks = [CopyTask(("s", f"t{i}"), ("id",), (), 1.0, 8, 1.0, 8) for i in range(300)]
    out = LoadOutcome()
    for i in [*range(299, 150, -1), *range(0, 150)]:  # finished out of order; t150 failed
        if i != 150 and i not in (10, 11):
            out.done.append(TableResult(("s", f"t{i}"), rows=i, bytes=2 * i))
    out.failed = [TableResult(("s", "t150"), error="boom", side="destination")]
    out.rolled_back, out.not_started = [("s", "t10")], [("s", "t11")]
    assert len(out.done.chunks) == 2 and out.done[0].key == ("s", "t299") and out.done[296].rows == 149
    rep = RunReport()
    rep.add_load(out, tasks, None)
    entries = list(rep.tables)
    assert [e["table"] for e in entries] == [f"s.t{i}" for i in range(300)]
    assert [e["status"] for e in entries[9:12]] == ["copied", "rolled back", "not started"]
    assert entries[150]["status"] == "failed" and entries[150]["error"] == "boom"
    assert all(e["rows"] == i for i, e in enumerate(entries) if e["status"] == "copied")
    assert rep.rows == sum(range(300)) - 150 - 10 - 11
