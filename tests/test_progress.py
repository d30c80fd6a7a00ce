"""The progress bus and the ETA arithmetic, without a database."""

import subprocess
import sys

import pytest

from pgcopy.packed import Chunked
from pgcopy.progress import BYTES, COPYING, DONE, STATE, Expected, ProgressBus, ProgressModel, duration

WRITE_SLOT = """
import sys
from pgcopy.progress import Slot, attach
s = Slot(attach(int(sys.argv[1]), int(sys.argv[2])), 1)
s.begin(7)
for _ in range(3):
    s.add(1024, 512)
s.end(True, 42)
"""


def test_bus_slots_are_shared_with_a_child_process():
    """A worker maps the bus from the descriptor it inherits, as pgcopy.channel starts it."""
    bus = ProgressBus(3)
    subprocess.run(
        [sys.executable, "-c", WRITE_SLOT, str(bus.fd), str(bus.length)],
        pass_fds=[bus.fd],
        check=True,
        timeout=30,
    )
    slots = bus.read()
    assert slots[1][STATE] == DONE and slots[1][BYTES] == 3 * 1024 and slots[1][4] == 42
    assert slots[0][STATE] == slots[2][STATE] == 0


def slot(task, nbytes, started=0.0, state=COPYING):
    return (state, float(task), float(nbytes), float(nbytes), 0.0, started, 0.0)


def test_fraction_rate_and_eta():
    # no fixed cost per table: the bytes alone make the work
    m = ProgressModel([Expected(1000, 100), Expected(3000, 300)], now=0.0, table_fixed_s=0.0)
    s = m.snapshot([slot(0, 0), slot(1, 0)], now=0.0)
    assert s.fraction == 0 and s.eta is None and s.total_bytes == 4000
    s = m.snapshot([slot(0, 500), slot(1, 500)], now=1.0)
    assert s.fraction == pytest.approx(0.25)
    assert s.rate == pytest.approx(1000.0)  # 1000 bytes in 1 s
    assert s.eta == pytest.approx(3.0)  # 3000 bytes left at 1000 B/s
    assert s.rows == pytest.approx(100)  # 500 B at 10 B/row, twice
    assert [f.task for f in s.in_flight] == [0, 1]


def test_a_snapshot_reads_only_the_tables_in_flight_and_keeps_exact_totals():
    """The totals are kept as tables and FKs settle: a snapshot reads no other table's
    numbers (at every tick, every table's took 70 ms at 80,000 tables), and they equal
    the sums made from scratch."""
    n = 1000
    exp = [Expected(100.0 * (i + 1), 10.0, 50.0 * (i % 3)) for i in range(n)]
    m = ProgressModel(exp, fk_bytes=[1e6] * 500, workers=2, fk_workers=2, now=0.0, table_fixed_s=0.0)
    done = {i: 120.0 * (i + 1) for i in range(0, 600, 2)}
    for i, nbytes in done.items():
        m.finished(i, nbytes, 11)
        m.finished(i, 1, 1)  # told twice: counted once
    m.finished(1, 0, 0, ok=False)
    for i in range(0, 500, 3):
        m.fk_done(i, 0.0)

    read = set()

    class Watched:
        def __init__(self, items):
            self.items = items

        def __getitem__(self, i):
            read.add(i)
            return self.items[i]

        def __len__(self):
            return len(self.items)

    for name in ("exp_bytes", "exp_rows", "exp_index", "state"):
        setattr(m, name, Watched(getattr(m, name)))
    s = m.snapshot([slot(700, 500.0), slot(999, 200_000.0)], now=5.0)
    assert read == {700, 999}
    pending = [i for i in range(n) if i not in done and i not in (1, 700, 999)]
    assert s.total_bytes == sum(done.values()) + sum(100.0 * (i + 1) for i in pending) + 70100 + 200_000
    assert s.bytes == sum(done.values()) + 500 + 200_000
    assert s.rows == pytest.approx(11 * len(done) + 500 / 7010 + 200_000 / 10_000)  # bytes per row
    assert (s.tables_done, s.tables_failed, s.fks_done) == (300, 1, 167)
    fk_left = (500 - 167) * (0.003 + 1e6 / 150e6) / 2
    index_left = sum(50.0 * (i % 3) for i in range(n) if i not in done and i != 1) / 40e6 / 2
    assert s.post_seconds == pytest.approx(fk_left + index_left)


def test_finished_tables_correct_the_totals():
    m = ProgressModel([Expected(1000, 100), Expected(3000, 300)], now=0.0)
    m.finished(0, 1500, 120)  # streamed more than the estimate, COPY counted 120 rows
    s = m.snapshot([slot(1, 1500)], now=2.0)
    assert s.total_bytes == 1500 + 3000
    assert s.bytes == 3000 and s.rows == pytest.approx(120 + 150)
    assert s.tables_done == 1


def test_in_flight_table_larger_than_expected_never_exceeds_99_percent():
    m = ProgressModel([Expected(1000, 10)], now=0.0)
    s = m.snapshot([slot(0, 5000)], now=1.0)
    assert s.in_flight[0].fraction == 0.99
    assert s.fraction == 0.99 and s.total_bytes == 5000  # 100% only once COPY says it is done


def test_thousands_of_tiny_tables_are_counted_by_table_not_by_page():
    """A tiny table's estimate is a page or more, its stream a few rows: the ETA follows the
    tables done (their fixed cost), not the bytes, which would say 0% until the end."""
    m = ProgressModel([Expected(40_000, 5) for _ in range(100)], workers=2, now=0.0)
    m.snapshot([], now=0.0)
    for i in range(50):
        m.finished(i, 100, 5)
    s = m.snapshot([], now=1.0)  # half the tables in one second
    assert s.eta == pytest.approx(1.0, rel=0.2)  # the pages left still weigh a little
    assert s.fraction == pytest.approx(0.5, rel=0.1)


def test_failed_tables_leave_the_total_and_all_done_means_eta_zero():
    m = ProgressModel([Expected(1000, 10), Expected(1000, 10)], now=0.0)
    m.finished(0, 1000, 10)
    m.finished(1, 0, 0, ok=False)
    s = m.snapshot([], now=1.0)
    assert s.total_bytes == 1000 and s.fraction == 1.0 and s.eta == 0.0 and s.tables_failed == 1


def test_rate_uses_a_moving_window():
    m = ProgressModel([Expected(1e9, 1)], now=0.0)
    m.snapshot([slot(0, 0)], now=0.0)
    m.snapshot([slot(0, 100e6)], now=5.0)  # 20 MB/s at first
    m.snapshot([slot(0, 110e6)], now=15.0)
    s = m.snapshot([slot(0, 120e6)], now=25.0)  # 1 MB/s lately
    assert s.rate == pytest.approx(1e6)


def test_duration_format():
    assert duration(None) == "--:--"
    assert duration(75) == "1:15"
    assert duration(3723) == "1:02:03"


# --- the work after the rows: index rebuilds and FK validation ------------------------


def test_eta_covers_index_rebuilds_and_fk_validation():
    """Rows done is not the end: the ETA keeps the rebuilds and validations still to do."""
    from pgcopy.progress import FK_BYTES_PER_S, FK_FIXED_S, INDEX_BYTES_PER_S

    exp = [Expected(1000, 10, index_bytes=INDEX_BYTES_PER_S * 2), Expected(1000, 10)]
    m = ProgressModel(exp, fk_bytes=[FK_BYTES_PER_S * 3], workers=2, fk_workers=1, now=0.0)
    m.snapshot([slot(0, 0), slot(1, 0)], now=0.0)
    s = m.snapshot([slot(0, 500), slot(1, 500)], now=1.0)  # 1000 B/s, 1000 B to go
    index_s = 2 / 2  # 2 s of one connection's rebuild, over 2 workers
    fk_s = 3 + FK_FIXED_S
    assert s.eta == pytest.approx(1.0 + index_s + fk_s)
    assert s.post_seconds == pytest.approx(index_s + fk_s)
    # every row in: the ETA is what is left after the rows, never 0:00 yet
    m.finished(0, 1000, 10, index_seconds=2.0)
    m.finished(1, 1000, 10)
    s = m.snapshot([], now=4.0)
    assert s.eta == pytest.approx(fk_s) and s.fraction < 1.0
    assert s.fks_done == 0 and s.fks_total == 1
    m.fk_done(0, fk_s)
    s = m.snapshot([], now=7.0)
    assert s.eta == 0.0 and s.fraction == 1.0 and s.fks_done == 1


def test_post_data_rates_are_corrected_as_measured():
    from pgcopy.progress import FK_BYTES_PER_S, FK_FIXED_S, INDEX_BYTES_PER_S

    exp = [Expected(100, 1, index_bytes=1e6), Expected(100, 1, index_bytes=1e6)]
    fk_est = FK_FIXED_S + 1e6 / FK_BYTES_PER_S
    m = ProgressModel(exp, fk_bytes=[1e6] * 40, workers=1, fk_workers=1, now=0.0)
    assert m.index_rate.value == INDEX_BYTES_PER_S  # nothing measured yet
    m.finished(0, 100, 1, index_seconds=0.5)  # measured: 2 MB/s
    assert m.index_rate.value == pytest.approx(2e6)
    for i in range(5):
        m.fk_done(i, 3 * fk_est)  # too few timed to trust yet
    assert m.fk_factor == 1.0
    for i in range(5, 20):
        m.fk_done(i, 3 * fk_est)  # FKs take three times the estimate here
    m.fk_done(20, 0.0)  # settled without being timed: no evidence either way
    assert m.fk_factor == pytest.approx(3.0)
    m.snapshot([slot(1, 0)], now=0.0)
    s = m.snapshot([slot(1, 100)], now=1.0)  # table 1 streamed, not finished
    # table 1's rebuild at the measured 2 MB/s, the 19 FKs left at three times the estimate
    assert s.post_seconds == pytest.approx(0.5 + 19 * 3 * fk_est)
    m.fk_done(3, 99.0)  # settled twice (early restore, then STEP 6): counted once
    assert m.fk_factor == pytest.approx(3.0)


def test_a_rebuild_in_flight_counts_down_and_shows():
    from pgcopy.progress import INDEXING, INDEXING_SINCE

    exp = [Expected(1000, 10, index_bytes=4e6)]
    m = ProgressModel(exp, workers=1, now=0.0)
    m.index_rate.add(1e6, 1.0)  # 1 MB/s: a 4 s rebuild
    m.index_rate.add(0, 0)  # nothing measured is ignored
    building = [INDEXING, 0.0, 1000.0, 1000.0, 0.0, 0.0, 0.0]
    building[INDEXING_SINCE] = 10.0
    s = m.snapshot([tuple(building)], now=11.0)
    assert s.in_flight[0].indexing and s.in_flight[0].fraction == 0.99
    assert s.post_seconds == pytest.approx(3.0)
    s = m.snapshot([tuple(building)], now=20.0)  # slower than estimated: never below 0
    assert s.post_seconds == 0.0


def test_phase_label_and_progress_line():
    from pgcopy.task import CopyTask
    from pgcopy.ui.base import progress_line

    tasks = [CopyTask(("public", "t"), ("id",), (), 10.0, 1000, 0.0, 0)]
    m = ProgressModel([Expected(1000, 10)], fk_bytes=[10.0, 10.0], now=0.0)
    m.finished(0, 1000, 10)
    m.fk_done(0, 0.01)
    s = m.snapshot([], now=1.0)
    line = progress_line(s, tasks, "restoring and validating foreign keys")
    assert "restoring and validating foreign keys" in line and "1/1 tables" in line and "1/2 FKs" in line
    assert "ETA 0:00" in line  # one tiny FK left: under a second, but not --:--


def test_fks_added_validated_run_on_one_connection():
    """FKs between small tables are added validated one after another on one connection:
    the others' validations spread over the FK workers."""
    from pgcopy.progress import FK_FIXED_S

    m = ProgressModel(
        [Expected(100, 1)], fk_bytes=[0.0] * 4, workers=2, fk_workers=2, fk_serial={0, 1}, now=0.0
    )
    m.finished(0, 100, 1)
    s = m.snapshot([], now=1.0)
    assert s.post_seconds == pytest.approx(2 * FK_FIXED_S + 2 * FK_FIXED_S / 2)


def test_an_fk_waits_for_every_loaded_table_it_touches():
    """The early restorer takes an FK once its tables are loaded: a partitioned parent
    stands for all its loaded leaves; a table not loaded is never waited for."""
    from pgcopy.catalog import ForeignKey
    from pgcopy.fkearly import EarlyRestorer
    from pgcopy.keys import KeyIndex
    from pgcopy.plan import Ancestry

    a, p, p1, p2, x = ("s", "a"), ("s", "p"), ("s", "p1"), ("s", "p2"), ("s", "x")
    to_parent = ForeignKey("a_p", a, p, "", True)
    to_unloaded = ForeignKey("a_x", a, x, "", True)
    unloaded = ForeignKey("x_x", x, x, "", True)
    index = KeyIndex([a, p1, p2])  # the loaded tables' positions
    ancestors = Ancestry()
    ancestors.extend([(), (p,), (p,)])  # by position: p1 and p2 are p's partitions
    fkeys = Chunked([to_parent, to_unloaded, unloaded])  # the plan's, packed
    r = EarlyRestorer(None, fkeys, ancestors, index, None)
    assert list(r._ready()) == [2]  # positions in the plan's FKs
    r.table_finished(a)
    assert list(r._ready()) == [1]
    r.table_finished(p1)
    assert list(r._ready()) == []
    r.table_finished(p2)
    assert list(r._ready()) == [0]
    assert fkeys[0] == to_parent
    # a self-reference waits for its one table, named at both ends
    r = EarlyRestorer(None, Chunked([ForeignKey("a_a", a, a, "", True)]), ancestors, index, None)
    assert list(r._ready()) == []
    r.table_finished(a)
    assert list(r._ready()) == [0]


def test_the_early_restore_tells_the_plan_positions_of_what_it_restores():
    """restore_all tells positions in its own list; an early batch is a few of the plan's
    FKs, and the display hears the plan's positions."""
    from pgcopy.catalog import ForeignKey
    from pgcopy.fkearly import EarlyRestorer, renumbered
    from pgcopy.fkeys import RestoreTarget, _by_position

    a, b = ("s", "a"), ("s", "b")
    fks = [ForeignKey(f"f{i}", a, b, "", True) for i in range(5)]
    heard = []
    target = RestoreTarget("", "1s", None, on_settled=lambda i, s: heard.append(i))
    _by_position(target.on_settled, fks, 0)(fks[3], 0.1)
    batch = [fks[4], fks[1]]  # the early restore's batch for plan positions [4, 1]
    told = _by_position(renumbered(target, [4, 1]).on_settled, batch, 0)
    told(batch[1], 0.1)
    told(batch[0], 0.1)
    assert heard == [3, 1, 4]
    r = EarlyRestorer(target, Chunked(fks), {}, {a: 0, b: 1}, None)
    assert r.left.tolist() == [2] * 5  # each waits for a and b
    r.table_finished(b)
    r.table_finished(b)  # told twice: counted once
    assert list(r._ready()) == []
    r.table_finished(a)
    assert list(r._ready()) == [0, 1, 2, 3, 4]
    assert list(r._ready()) == []  # each FK is handed out once


def test_the_early_restore_reads_the_ready_fks_in_the_plans_order(monkeypatch):
    """Tables finish in load order (largest first), not in the order of the plan's FKs:
    the ready FKs are read in the plan's order, so each packed chunk of FKs is unpacked
    once, not once for each FK."""
    import random

    from pgcopy.catalog import ForeignKey
    from pgcopy.fkearly import At, EarlyRestorer
    from pgcopy.keys import KeyIndex
    from pgcopy.packed import Chunks
    from pgcopy.plan import Ancestry

    tables = [("s", f"t{i}") for i in range(4000)]  # more chunks than a Chunked keeps unpacked
    fks = Chunked(ForeignKey(f"f{i}", t, t, "", True) for i, t in enumerate(tables))
    r = EarlyRestorer(None, fks, Ancestry(), KeyIndex(tables), None)
    finished = list(tables)
    random.Random(7).shuffle(finished)
    for t in finished:
        r.table_finished(t)
    opened = []
    real_open = Chunks.open
    monkeypatch.setattr(Chunks, "open", lambda self, c: opened.append(c) or real_open(self, c))
    ready = r._ready()
    assert list(ready) == list(range(4000))
    assert [fk.name for fk in At(fks, ready)[:]] == [f"f{i}" for i in range(4000)]
    assert len(opened) == len(fks.chunks) == 32  # each chunk unpacked once


def test_the_early_restore_reads_its_batch_a_window_at_a_time():
    """The ready FKs go to restore_all as a view of the plan's, not a list of objects:
    restore_all reads WINDOW of them at a time, whatever the number ready."""
    from array import array

    from pgcopy.fkearly import At

    plan = Chunked(range(100, 110))
    ready = At(plan, array("l", [7, 2, 5]))
    assert len(ready) == 3 and ready[0] == 107 and ready[1:] == [102, 105]
    assert isinstance(ready.positions, array)


def test_the_view_counts_each_settled_fk_once_by_its_position():
    """The display hears a settled FK as its position in the plan (no FK object kept);
    FKs between two small tables are estimated as restored on one connection; a table
    or an FK is counted once, however often reported."""
    from pgcopy.catalog import ForeignKey
    from pgcopy.log import Logger
    from pgcopy.stream import TableResult
    from pgcopy.task import CopyTask
    from pgcopy.ui.base import FkEstimate, LiveView

    a, b, big = ("s", "a"), ("s", "b"), ("s", "big")
    tasks = [CopyTask(k, ("id",), (), 1.0, 8192, 0.0, 0) for k in (a, b, big)]
    fkeys = [
        ForeignKey("a_b", a, b, "FOREIGN KEY (b) REFERENCES s.b(id)", True),
        ForeignKey("a_big", a, big, "", True),
    ]
    view = LiveView(
        Logger(stream=None),
        tasks,
        ProgressBus(2),
        lambda: None,
        FkEstimate(fkeys, [8192.0, 1e9], frozenset({a, b})),
    )
    assert list(view.model.fk_serial) == [1, 0]
    view.fk_settled(0, 0.01)
    view.fk_settled(0, 0.01)
    view.table_done(TableResult(a, rows=5, bytes=100))
    view.table_done(TableResult(a, rows=5, bytes=100))
    view.table_failed(TableResult(b, error="x"))
    s = view.snapshot()
    assert (s.fks_done, s.fks_total) == (1, 2)
    assert (s.tables_done, s.tables_failed, s.tables_total, s.rows) == (1, 1, 3, 5)
