"""Thousands of small tables with foreign keys, on servers with default lock settings.

    .venv/bin/python benchmarks/many_tables.py --tables 1000,3000,10000 --jobs 2
    .venv/bin/python benchmarks/run.py --many-tables 1000,3000,10000      (the same)
    .venv/bin/python benchmarks/many_tables.py --tables 40000 --methods "-p 4"   (memory only)

Starts its own source and destination clusters (max_locks_per_transaction 64,
max_connections 100, fsync on), builds ``datasets.many_tables_schema`` on both sides
(owned by a non-superuser), seeds the source, then times, on the same data in one run:

- pgcopy as the tables' owner and as superuser (every FK dropped, re-added, validated),
  at --jobs N, and as owner at -p 4 too (the parallelism of issue 11's memory target);
- pg_dump -Fd -j N --data-only + pg_restore -j N --data-only --disable-triggers (superuser).

Each method starts from an emptied destination and checkpointed servers, and is verified by
per-table checksums.
Also reports the most locks any pgcopy session held on the source (sampled from pg_locks),
pgcopy's phase timings (from its --report) and the peak RSS summed over every process of
each method (sampled every 20 ms), with each process's RSS at that peak.  Each table count gets fresh clusters.
Results print as a Markdown table and land in benchmarks/results/many-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pgcopy import datasets, sandbox, verify  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from run import RssSampler, compile_bytecode, selected  # noqa: E402

OWNER, OWNER_PW, DB = "bench_owner", "bench-pw", "many"
SETTINGS = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
MEMORY_PARALLEL = 4


def psql(cluster, db: str, text: str, role: str | None = None) -> None:
    prefix = f"SET ROLE {role};\n" if role else ""
    cmd = [
        str(cluster.bindir / "psql"),
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        cluster.dsn(db),
        "-f",
        "-",
    ]
    subprocess.run(cmd, input=prefix + text, text=True, check=True, capture_output=True)


def empty(cluster) -> None:
    """Every table emptied, a few hundred per transaction (one TRUNCATE of 10,000 tables
    would fill a default lock table); replica mode keeps the FK triggers quiet."""
    conn = psycopg2.connect(cluster.dsn(DB))
    cur = conn.cursor()
    cur.execute(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname IN ('public', 's2')"
    )
    names = [r[0] for r in cur.fetchall()]
    conn.commit()
    for i in range(0, len(names), 200):
        cur.execute("SET LOCAL session_replication_role = replica")
        cur.execute("".join(f"DELETE FROM {name};" for name in names[i : i + 200]))
        conn.commit()
    conn.close()


def settle(*clusters) -> None:
    """Before each timed run: a CHECKPOINT on both servers, so that no method pays for the
    dirty buffers and WAL of the build, of the previous method or of the emptying (the
    first run after the build otherwise met its checkpoint, and it was always pgcopy)."""
    for c in clusters:
        psql(c, DB, "CHECKPOINT")


class Locks(threading.Thread):
    def __init__(self, cluster):
        super().__init__(daemon=True)
        self.dsn, self.peak, self.done = cluster.dsn(DB), 0, False

    def run(self) -> None:
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        cur = conn.cursor()
        while not self.done:
            cur.execute(
                "SELECT coalesce(max(n), 0) FROM (SELECT count(*) n FROM pg_locks l JOIN pg_stat_activity a "
                "ON a.pid = l.pid WHERE a.application_name LIKE 'pgcopy:%' GROUP BY l.pid) x"
            )
            self.peak = max(self.peak, cur.fetchone()[0])
            time.sleep(0.05)
        conn.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", default="3000", help="comma-separated table counts (default 3000)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="rounds; the methods' order alternates")
    ap.add_argument(
        "--methods",
        help="comma-separated substrings selecting methods, or =NAME for exactly NAME (default: all); "
        "'-p 4' alone measures memory at large table counts",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="results directory")
    args = ap.parse_args(argv)
    wanted = [m.strip() for m in args.methods.split(",")] if args.methods else None
    compile_bytecode()
    rows = []
    for n in (int(x) for x in args.tables.split(",")):
        rows += measure(n, args.jobs, args.repeat, wanted)
    meta = {
        "jobs": args.jobs,
        "repeat": args.repeat,
        "settings": SETTINGS,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    out = Path(args.out) / f"many-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"meta": meta, "runs": rows}, indent=2))
    print(
        "| tables | FKs | method | round | ok | seconds | drop FKs s | load s | FK restore s | peak RSS MiB "
        "| by process at the peak | peak locks per pgcopy session |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    for r in rows:
        ph = r["phases"]
        print(
            f"| {r['tables']} | {r['fkeys']} | {r['method']} | {r['round'] + 1} | {r['ok']} | {r['seconds']} | "
            f"{ph.get('drop foreign keys', '-')} | {ph.get('load', '-')} | "
            f"{ph.get('restore foreign keys', '-')} | {r['peak_rss_mib']} | "
            f"{' + '.join(map(str, r['peak_rss_by_process_mib']))} | {r['peak_locks_per_pgcopy_session'] or '-'} |"
        )
    return 0 if all(r["ok"] for r in rows if r["method"].startswith("pgcopy")) else 1


def measure(ntables: int, j: int, repeat: int = 1, wanted: list[str] | None = None) -> list[dict]:
    src, dst = sandbox.start_cluster(SETTINGS), sandbox.start_cluster(SETTINGS)
    tmp = Path(tempfile.mkdtemp(prefix="pgcopy-many-"))
    try:
        for c in (src, dst):
            psql(
                c,
                "postgres",
                f"CREATE ROLE {OWNER} LOGIN PASSWORD '{OWNER_PW}'; CREATE DATABASE {DB} OWNER {OWNER}",
            )
            psql(c, DB, datasets.many_tables_schema(ntables), OWNER)
        psql(src, DB, datasets.many_tables_seed(ntables), OWNER)
        psql(src, DB, "VACUUM ANALYZE")
        conn = psycopg2.connect(src.dsn(DB))
        expected = verify.checksums(conn)
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM pg_constraint WHERE contype = 'f'")
        fks = cur.fetchone()[0]
        conn.close()
        py = shlex.quote(sys.executable)
        pgcopy = f"{py} -m pgcopy copy --yes --output plain -p {j} --state-dir {tmp}/state --report {tmp}/report.json"
        b = dst.bindir
        as_owner = (
            f"-s {shlex.quote(src.dsn(DB, OWNER, OWNER_PW))} -d {shlex.quote(dst.dsn(DB, OWNER, OWNER_PW))}"
        )
        methods = {
            f"pgcopy -p {j} (owner)": f"{pgcopy} {as_owner}",
            f"pgcopy -p {j} (superuser)": f"{pgcopy} -s {shlex.quote(src.dsn(DB))} -d {shlex.quote(dst.dsn(DB))}",
            f"pg_dump+pg_restore -j {j} --disable-triggers": (
                f"rm -rf {tmp}/dump && {b}/pg_dump -Fd -j {j} --data-only -f {tmp}/dump {shlex.quote(src.dsn(DB))} && "
                f"{b}/pg_restore -j {j} --data-only --disable-triggers -d {shlex.quote(dst.dsn(DB))} {tmp}/dump"
            ),
        }
        if j != MEMORY_PARALLEL:  # issue 11's memory target is at -p 4, whatever the table count
            memory = pgcopy.replace(f" -p {j} ", f" -p {MEMORY_PARALLEL} ")
            methods[f"pgcopy -p {MEMORY_PARALLEL} (owner)"] = f"{memory} {as_owner}"
        rows = []
        order = [(name, cmd) for name, cmd in methods.items() if selected(name, wanted)]
        rounds = [order if r % 2 == 0 else order[::-1] for r in range(repeat)]
        for rnd, (name, cmd) in ((r, m) for r, ms in enumerate(rounds) for m in ms):
            empty(dst)
            settle(src, dst)
            (tmp / "report.json").unlink(missing_ok=True)
            locks = Locks(src)
            locks.start()
            t0 = time.monotonic()
            proc = subprocess.Popen(
                ["bash", "-c", cmd], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            rss = RssSampler(proc.pid, period=0.02)  # the report's peak at the end lasts 0.5 s
            rss.start()
            _, stderr = proc.communicate()
            wall = time.monotonic() - t0
            peak_rss, _ = rss.stop()
            locks.done = True
            locks.join(5)
            conn = psycopg2.connect(dst.dsn(DB))
            diffs = verify.differences(expected, verify.checksums(conn))
            cur = conn.cursor()
            cur.execute("SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND convalidated")
            valid = cur.fetchone()[0]
            conn.close()
            ok = proc.returncode == 0 and not diffs and valid == fks
            error = (
                ""
                if ok
                else (stderr.strip().splitlines() or ["?"])[-1][:200]
                + (f"; {len(diffs)} tables differ" if diffs else "")
            )
            report = tmp / "report.json"
            phases = json.loads(report.read_text()).get("phases", {}) if report.exists() else {}
            rows.append(
                {
                    "tables": ntables,
                    "fkeys": fks,
                    "method": name,
                    "round": rnd,
                    "ok": ok,
                    "seconds": round(wall, 2),
                    "phases": phases,
                    # MiB, as benchmarks/run.py reports (results up to many-20261202-143845 held
                    # "peak_rss_mb" in 10^6 bytes: 150 MB there is 143 MiB)
                    "peak_rss_mib": round(peak_rss / 2**20, 1),
                    # each process's RSS at that peak: two (coordinator, planner) in the
                    # planning, the coordinator and the workers in the load
                    "peak_rss_by_process_mib": [round(b / 2**20, 1) for b in rss.peak_parts],
                    "peak_locks_per_pgcopy_session": locks.peak if "pgcopy" in name else None,
                    "error": error,
                }
            )
            print(f"{ntables:>6} {name:<45} {'ok' if ok else 'FAILED'} {wall:7.1f}s {error}", file=sys.stderr)
        return rows
    finally:
        src.destroy()
        dst.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
