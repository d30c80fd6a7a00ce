"""The progress bus and the ETA arithmetic, without a database."""

import multiprocessing as mp

import pytest

from pgcopy.progress import BYTES, COPYING, DONE, STATE, Expected, ProgressBus, ProgressModel, duration


def test_bus_slots_are_shared_with_a_spawned_process():
    ctx = mp.get_context("spawn")
    bus = ProgressBus(ctx, 3)
    p = ctx.Process(target=_write_slot, args=(bus.array,))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    slots = bus.read()
    assert slots[1][STATE] == DONE and slots[1][BYTES] == 3 * 1024 and slots[1][4] == 42
    assert slots[0][STATE] == slots[2][STATE] == 0


def _write_slot(array):
    from pgcopy.progress import Slot

    s = Slot(array, 1)
    s.begin(7)
    for _ in range(3):
        s.add(1024, 512)
    s.end(True, 42)


def slot(task, nbytes, started=0.0, state=COPYING):
    return (state, float(task), float(nbytes), float(nbytes), 0.0, started)


def test_fraction_rate_and_eta():
    m = ProgressModel([Expected(1000, 100), Expected(3000, 300)], now=0.0)
    s = m.snapshot([slot(0, 0), slot(1, 0)], now=0.0)
    assert s.fraction == 0 and s.eta is None and s.total_bytes == 4000
    s = m.snapshot([slot(0, 500), slot(1, 500)], now=1.0)
    assert s.fraction == pytest.approx(0.25)
    assert s.rate == pytest.approx(1000.0)  # 1000 bytes in 1 s
    assert s.eta == pytest.approx(3.0)  # 3000 bytes left at 1000 B/s
    assert s.rows == pytest.approx(100)  # 500 B at 10 B/row, twice
    assert [f.task for f in s.in_flight] == [0, 1]


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
    assert s.fraction == 1.0 and s.total_bytes == 5000


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
