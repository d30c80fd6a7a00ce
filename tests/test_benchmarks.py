"""The benchmark runner at a tiny scale: datasets build, methods run, every run is verified."""

import json
import subprocess
import sys

from tests.helpers import ROOT


def _run_py(out_dir, *args: str) -> subprocess.CompletedProcess:
    """benchmarks/run.py with its results in ``out_dir``."""
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/run.py"), *args, "--out", str(out_dir)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_benchmark_runner_tiny(tmp_path):
    proc = _run_py(
        tmp_path,
        "--scale",
        "0.01",
        "--repeat",
        "1",
        "--methods",
        "pgcopy -p,psql|psql serial,--disable-triggers,pg_dump+pg_restore -j 2",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(next(tmp_path.glob("*.json")).read_text())
    by = {s["method"]: s for s in result["summary"]}
    assert by["pgcopy -p 2"]["ok_runs"] == 1 and by["pgcopy -p 2"]["median"] > 0
    assert by["psql|psql serial (replica)"]["ok_runs"] == 1
    assert by["pg_dump+pg_restore -j 2 --disable-triggers"]["ok_runs"] == 1
    # parallel data-only pg_restore into a schema with FKs fails: reported, not dropped
    plain = by["pg_dump+pg_restore -j 2"]
    assert plain["ok_runs"] == 0 and plain["errors"] and "foreign key" in plain["errors"][0]
    assert result["meta"]["rows"] > 100_000 and result["meta"]["settings"]["fsync"] == "on"
    md = next(tmp_path.glob("*.md")).read_text()
    assert "| pgcopy -p 2 | 1/1 |" in md and "Failures:" in md


def test_many_tables_benchmark_tiny(tmp_path):
    """run.py --many-tables: default-settings clusters, pgcopy as owner and superuser (and
    as owner at -p 4) and pg_dump/pg_restore on the same tables, each verified, with phases
    and peak locks."""
    proc = _run_py(tmp_path, "--many-tables", "60", "--repeat", "1")
    assert proc.returncode == 0, proc.stderr
    runs = json.loads(next(tmp_path.glob("many-*.json")).read_text())["runs"]
    by = {r["method"]: r for r in runs}
    assert set(by) == {
        "pgcopy -p 2 (owner)",
        "pgcopy -p 2 (superuser)",
        "pgcopy -p 4 (owner)",  # the memory target's parallelism
        "pg_dump+pg_restore -j 2 --disable-triggers",
    }
    assert all(r["ok"] for r in runs), runs
    assert by["pgcopy -p 2 (owner)"]["tables"] == 60 and by["pgcopy -p 2 (owner)"]["fkeys"] > 100
    assert by["pgcopy -p 2 (owner)"]["phases"]["load"] > 0
    assert 0 < by["pgcopy -p 2 (owner)"]["peak_locks_per_pgcopy_session"] <= 40
    # in MiB, the unit of run.py's table (it was 10^6 bytes under another name)
    assert 20 < by["pgcopy -p 4 (owner)"]["peak_rss_mib"] < 400


def test_many_tables_benchmark_methods_select_the_memory_run(tmp_path):
    """--methods picks the runs as in run.py: '-p 4' alone is the memory measurement at
    large table counts, with each process's RSS at the peak."""
    proc = _run_py(tmp_path, "--many-tables", "30", "--repeat", "1", "--methods", "-p 4")
    assert proc.returncode == 0, proc.stderr
    runs = json.loads(next(tmp_path.glob("many-*.json")).read_text())["runs"]
    assert [r["method"] for r in runs] == ["pgcopy -p 4 (owner)"] and runs[0]["ok"]
    parts = runs[0]["peak_rss_by_process_mib"]
    assert len(parts) >= 2 and abs(sum(parts) - runs[0]["peak_rss_mib"]) < 1
