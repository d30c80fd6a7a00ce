#!/usr/bin/env python3
"""pgcopy against pg_dump/pg_restore, a raw psql | psql COPY pipe and pgcopydb, on the same data.

    .venv/bin/python benchmarks/run.py --scale 1 --repeat 3

Starts its own source and destination clusters (the same server settings for every method,
fsync on; written into the results), builds the shop, pgbench (with foreign keys) and wide
TOAST datasets at --scale (1 = about 5.2M rows), then runs the methods in alternating order
for --repeat rounds, after one untimed load by the raw pipe (a new cluster's first big
load also creates its WAL segments).  Before every run the destination tables are
truncated and both servers checkpointed (not timed).  Every run is verified against the source by per-table row counts and checksums; a method
that fails is reported as failed with its error.  Results go to benchmarks/results/ as
JSON and Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg2  # noqa: E402

from pgcopy import catalog, datasets, sandbox, verify  # noqa: E402

SETTINGS = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "1GB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "maintenance_work_mem": "256MB",
}
OWNER, OWNER_PW, DB = "bench", "bench-pw", "bench"
CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# --- measuring ---------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from state (3rd) on


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st:
                kids.setdefault(int(st[1]), []).append(int(entry))
    return kids


def _tree(pid: int, kids) -> list[int]:
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(kids.get(p, []))
    return out


def server_cpu(cluster) -> float:
    """CPU seconds of a cluster: the postmaster with its reaped children, plus live ones."""
    pid = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
    kids = _children_map()
    total = 0.0
    for p in _tree(pid, kids):
        st = _stat(p)
        if st:
            # utime, stime, cutime, cstime are fields 14-17 of stat: index 11-14 from 'state'
            total += sum(int(x) for x in st[11:15]) / CLK
    return total


class RssSampler(threading.Thread):
    """Peaks of the summed RSS and PSS of a process and all its descendants, every
    ``period`` seconds, with each process's RSS at the RSS peak (which tells the planning,
    two processes, from the load).

    RSS counts a shared library once per process that maps it; PSS splits shared pages
    between the processes, so its sum is the memory the tool really holds."""

    def __init__(self, pid: int, period: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.peak, self.peak_pss, self._halt = pid, 0, 0, threading.Event()
        self.period, self.peak_parts = period, []

    def run(self) -> None:
        while not self._halt.is_set():
            rss = pss = 0
            parts = []
            for p in _tree(self.pid, _children_map()):
                try:
                    with open(f"/proc/{p}/smaps_rollup") as fh:
                        for line in fh:
                            if line.startswith("Rss:"):
                                parts.append(int(line.split()[1]) * 1024)
                                rss += parts[-1]
                            elif line.startswith("Pss:"):
                                pss += int(line.split()[1]) * 1024
                except OSError:
                    pass
            if rss > self.peak:
                self.peak, self.peak_parts = rss, sorted(parts, reverse=True)
            self.peak_pss = max(self.peak_pss, pss)
            self._halt.wait(self.period)

    def stop(self) -> tuple[int, int]:
        self._halt.set()
        self.join()
        return self.peak, self.peak_pss


def selected(name: str, wanted: list[str] | None) -> bool:
    """--methods: a substring of the method's name, or =NAME for exactly NAME."""
    return not wanted or any(name == w[1:] if w.startswith("=") else w in name for w in wanted)


@dataclass
class Run:
    method: str
    round: int
    ok: bool
    wall: float = 0.0
    tool_cpu: float = 0.0
    src_cpu: float = 0.0
    dst_cpu: float = 0.0
    peak_rss_mb: float = 0.0
    peak_pss_mb: float = 0.0
    error: str | None = None


def measured(method: str, rnd: int, cmd: str, env: dict, src, dst) -> Run:
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    s0, d0 = server_cpu(src), server_cpu(dst)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        ["bash", "-c", cmd],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sampler = RssSampler(proc.pid)
    sampler.start()
    out, err = proc.communicate()
    wall = time.monotonic() - t0
    peak, peak_pss = sampler.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before_children.ru_utime) + (after.ru_stime - before_children.ru_stime)
    run = Run(
        method,
        rnd,
        proc.returncode == 0,
        wall,
        cpu,
        server_cpu(src) - s0,
        server_cpu(dst) - d0,
        peak / 2**20,
        peak_pss / 2**20,
    )
    if proc.returncode != 0:
        tail = [line for line in (err or out).strip().splitlines() if line.strip()][-3:]
        run.error = f"exit {proc.returncode}: " + " | ".join(tail)
    return run


# --- setup ------------------------------------------------------------------------------


def psql(cluster, db: str, sql_text: str, user: str = "postgres") -> None:
    proc = subprocess.run(
        [
            str(cluster.bindir / "psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            cluster.dsn(db, user),
            "-c",
            sql_text,
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"psql on {db}: {proc.stderr.strip()}")


def build(src, dst, scale: float, with_nofk: bool) -> None:
    pgbench_scale = max(1, round(40 * scale))
    for c in (src, dst):
        psql(c, "postgres", f"CREATE ROLE {OWNER} LOGIN PASSWORD '{OWNER_PW}'")
        psql(c, "postgres", f"CREATE DATABASE {DB} OWNER {OWNER}")
    dbs = [(src, DB), (dst, DB)] + ([(dst, "bench_nofk")] if with_nofk else [])
    if with_nofk:
        psql(dst, "postgres", f"CREATE DATABASE bench_nofk OWNER {OWNER}")
    for c, db in dbs:
        owner_dsn = c.dsn(db, OWNER, OWNER_PW)
        conn = psycopg2.connect(owner_dsn)
        for ds in (datasets.SHOP, datasets.WIDE):
            ds.create(conn)
            if c is src:
                ds.seed(conn, scale * 10)
        conn.close()
        datasets.pgbench(c.bindir, owner_dsn, pgbench_scale, schema_only=c is not src)
    if with_nofk:  # pgcopydb's table-data step expects a target without foreign keys
        psql(
            dst,
            "bench_nofk",
            "DO $$ DECLARE r record; BEGIN FOR r IN SELECT conrelid::regclass t, conname FROM pg_constraint "
            "WHERE contype = 'f' AND conparentid = 0 LOOP EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', r.t, r.conname); END LOOP; END $$",
        )
    psql(src, DB, "VACUUM ANALYZE")


def warm_up(dst, pipe: tuple[str, dict, str]) -> None:
    """One untimed load into the destination before the timed ones: a new cluster creates
    its WAL segments (16 MB each, zero-filled) on its first big load, later ones recycle
    them; that cost 2-3 s at --scale 0.5, paid by whichever method ran first (pgcopy, in
    round 1)."""
    cmd, env, db = pipe
    truncate_all(dst, db)
    subprocess.run(["bash", "-c", cmd], env={**os.environ, **env}, check=True, capture_output=True)


def leaf_tables(cluster, db: str) -> list[catalog.Table]:
    conn = psycopg2.connect(cluster.dsn(db))
    try:
        tables = [t for t in catalog.read_tables(conn.cursor()) if t.kind != "partitioned parent"]
    finally:
        conn.close()
    return sorted(tables, key=lambda t: -t.data_bytes)


def truncate_all(cluster, db: str) -> None:
    """Every table in one statement (partitioned parents too), so no FK blocks it."""
    conn = psycopg2.connect(cluster.dsn(db))
    try:
        names = [t.qualname for t in catalog.read_tables(conn.cursor())]
    finally:
        conn.close()
    psql(cluster, db, "TRUNCATE " + ", ".join(names))


# --- methods ------------------------------------------------------------------------------


def methods(src, dst, tables, jobs: int, tmp: Path) -> dict[str, tuple[str, dict, str]]:
    """name -> (shell command, env, destination database)."""
    py = shlex.quote(sys.executable)
    s_own, d_own = shlex.quote(src.dsn(DB, OWNER, OWNER_PW)), shlex.quote(dst.dsn(DB, OWNER, OWNER_PW))
    s_su, d_su = shlex.quote(src.dsn(DB)), shlex.quote(dst.dsn(DB))
    state = shlex.quote(str(tmp / "state"))
    pgcopy = f"cd {shlex.quote(str(ROOT))} && {py} -m pgcopy copy -s {s_own} -d {d_own} --yes --output plain --state-dir {state}"
    b = dst.bindir
    dump_dir = shlex.quote(str(tmp / "dump"))

    def dump(extra: str = "") -> str:
        return (
            f"rm -rf {dump_dir} && {b}/pg_dump -Fd -j {jobs} --data-only -f {dump_dir} {s_su} && "
            f"{b}/pg_restore -j {jobs} --data-only {extra} -d {d_su} {dump_dir}"
        )

    def pipe(streams: int) -> str:
        lanes: list[list] = [[] for _ in range(streams)]
        sizes = [0] * streams
        for t in tables:  # largest first onto the least loaded lane
            i = sizes.index(min(sizes))
            lanes[i].append(t)
            sizes[i] += t.data_bytes
        parts = []
        for lane in lanes:
            steps = [
                f"{b}/psql -X -q -d {s_su} -c {shlex.quote(f'COPY {t.qualname} TO STDOUT (FORMAT binary)')} | "
                f"{b}/psql -X -q -d {d_su} -c {shlex.quote(f'COPY {t.qualname} FROM STDIN (FORMAT binary)')}"
                for t in lane
            ]
            if steps:
                parts.append("( set -e; " + "; ".join(steps) + " ) &")
        return "set -e; " + " ".join(parts) + " for j in $(jobs -p); do wait $j || exit 1; done"

    replica = {"PGOPTIONS": "-c session_replication_role=replica"}
    out = {
        "pgcopy": (pgcopy, {}, DB),
        f"pgcopy -p {jobs}": (f"{pgcopy} -p {jobs}", {}, DB),
        # issue 13's cost: the digest comparison inside the copy, and `verify` after a copy
        f"pgcopy -p {jobs} --verify": (f"{pgcopy} -p {jobs} --verify", {}, DB),
        f"pgcopy -p {jobs} then pgcopy verify -p {jobs}": (
            f"{pgcopy} -p {jobs} && {py} -m pgcopy verify -s {s_own} -d {d_own} -p {jobs}",
            {},
            DB,
        ),
        "pgcopy --compress zstd": (f"{pgcopy} --compress zstd", {}, DB),
        "pgcopy --compress gzip": (f"{pgcopy} --compress gzip", {}, DB),
        "pgcopy --no-copy-pipe": (f"{pgcopy} --no-copy-pipe --batch-size 5000", {}, DB),
        "pgcopy (no progress bus)": (pgcopy, {"PGCOPY_BENCH_NO_BUS": "1"}, DB),
        f"pg_dump+pg_restore -j {jobs}": (dump(), {}, DB),
        f"pg_dump+pg_restore -j {jobs} --disable-triggers": (dump("--disable-triggers"), {}, DB),
        "psql|psql serial (replica)": (pipe(1), replica, DB),
        f"psql|psql {jobs} streams (replica)": (pipe(jobs), replica, DB),
    }
    if shutil.which("pgcopydb"):
        nofk = shlex.quote(dst.uri("bench_nofk"))
        out[f"pgcopydb -j {jobs} (no FKs on target)"] = (
            f"rm -rf {tmp}/pgcopydb && pgcopydb copy table-data --source {shlex.quote(src.uri(DB))} --target {nofk} "
            f"--table-jobs {jobs} --dir {tmp}/pgcopydb",
            {},
            "bench_nofk",
        )
    return out


def fk_validity(cluster, db: str) -> tuple[int, int]:
    conn = psycopg2.connect(cluster.dsn(db))
    try:
        cur = conn.cursor()
        cur.execute(
            "SELECT count(*) FILTER (WHERE convalidated), count(*) FROM pg_constraint WHERE contype = 'f'"
        )
        return cur.fetchone()
    finally:
        conn.close()


# --- main ------------------------------------------------------------------------------


@dataclass
class Summary:
    method: str
    ok_runs: int
    runs: int
    median: float | None = None
    min: float | None = None
    max: float | None = None
    mb_s: float | None = None
    rows_s: float | None = None
    tool_cpu: float | None = None
    src_cpu: float | None = None
    dst_cpu: float | None = None
    peak_rss_mb: float | None = None
    peak_pss_mb: float | None = None
    ratio: float | None = None
    errors: list[str] = field(default_factory=list)


def summarize(runs: list[Run], total_bytes: int, total_rows: int) -> list[Summary]:
    out = []
    for name in dict.fromkeys(r.method for r in runs):
        rs = [r for r in runs if r.method == name]
        ok = [r for r in rs if r.ok]
        s = Summary(name, len(ok), len(rs), errors=sorted({r.error for r in rs if r.error}))
        if ok:
            walls = [r.wall for r in ok]
            s.median, s.min, s.max = statistics.median(walls), min(walls), max(walls)
            s.mb_s = total_bytes / 1e6 / s.median
            s.rows_s = total_rows / s.median
            s.tool_cpu = statistics.median(r.tool_cpu for r in ok)
            s.src_cpu = statistics.median(r.src_cpu for r in ok)
            s.dst_cpu = statistics.median(r.dst_cpu for r in ok)
            s.peak_rss_mb = max(r.peak_rss_mb for r in ok)
            s.peak_pss_mb = max(r.peak_pss_mb for r in ok)
        out.append(s)
    base = next((s.median for s in out if s.method == "pgcopy" and s.median), None)
    for s in out:
        if base and s.median:
            s.ratio = s.median / base
    return out


def markdown(summaries: list[Summary], meta: dict) -> str:
    def f(x, spec):
        return "-" if x is None else format(x, spec)

    lines = [
        f"Scale {meta['scale']}: {meta['rows']:,} rows, {meta['bytes'] / 1e6:,.0f} MB of table data in {meta['tables']} tables; "
        f"{meta['repeat']} rounds; {meta['machine']}; PostgreSQL {meta['server_version']}; settings {meta['settings']}",
        "",
        "| method | ok | median s | min s | max s | MB/s | rows/s | tool CPU s | src CPU s | dst CPU s | peak RSS MiB | peak PSS MiB | vs pgcopy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in summaries:
        lines.append(
            f"| {s.method} | {s.ok_runs}/{s.runs} | {f(s.median, '.1f')} | {f(s.min, '.1f')} | {f(s.max, '.1f')} | "
            f"{f(s.mb_s, '.0f')} | {f(s.rows_s, ',.0f')} | {f(s.tool_cpu, '.1f')} | {f(s.src_cpu, '.1f')} | "
            f"{f(s.dst_cpu, '.1f')} | {f(s.peak_rss_mb, '.0f')} | {f(s.peak_pss_mb, '.0f')} | {f(s.ratio, '.2f')}x |"
        )
    failed = [s for s in summaries if s.errors]
    if failed:
        lines += ["", "Failures:"]
        lines += [f"- {s.method}: {e}" for s in failed for e in s.errors]
    return "\n".join(lines) + "\n"


def compile_bytecode() -> None:
    """pgcopy runs from this tree as pip installs it, with its modules compiled: pip
    compiles them at install time, even under PYTHONDONTWRITEBYTECODE=1 (which the
    machines we measure on set), where every process would otherwise compile every module
    from source, each run: about 20 ms and 0.45 MB of RSS per worker, measured."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "pgcopy")], check=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="dataset scale (1 = about 5.2M rows)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; methods alternate within each round")
    ap.add_argument(
        "--jobs", type=int, default=2, help="parallel jobs for the tuned and peer methods (default 2)"
    )
    ap.add_argument(
        "--methods",
        help="comma-separated substrings selecting methods, or =NAME for exactly NAME (default: all)",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="results directory")
    ap.add_argument(
        "--many-tables",
        metavar="N,N,...",
        help="instead: the many-tables dataset (datasets.many_tables_schema) at these table counts, "
        "on clusters with default lock settings (benchmarks/many_tables.py)",
    )
    args = ap.parse_args(argv)
    compile_bytecode()
    if args.many_tables:
        import many_tables  # its clusters differ from SETTINGS: default lock settings

        return many_tables.main(
            [
                "--tables",
                args.many_tables,
                "--jobs",
                str(args.jobs),
                "--repeat",
                str(args.repeat),
                "--out",
                args.out,
                *(["--methods", args.methods] if args.methods else []),
            ]
        )

    src = sandbox.start_cluster(SETTINGS)
    dst = sandbox.start_cluster(SETTINGS)
    tmp = Path(tempfile.mkdtemp(prefix="pgcopy-bench-"))
    try:
        has_pgcopydb = shutil.which("pgcopydb") is not None
        t0 = time.monotonic()
        build(src, dst, args.scale, has_pgcopydb)
        print(f"datasets built in {time.monotonic() - t0:.0f}s", file=sys.stderr)
        tables = leaf_tables(src, DB)
        conn = psycopg2.connect(src.dsn(DB))
        expected = verify.checksums(conn)
        version = conn.server_version
        conn.close()
        total_rows = sum(n for n, _ in expected.values())
        total_bytes = sum(t.data_bytes for t in tables)
        fks_expected = fk_validity(src, DB)
        all_methods = methods(src, dst, tables, args.jobs, tmp)
        wanted = [m.strip() for m in args.methods.split(",")] if args.methods else None
        chosen = {k: v for k, v in all_methods.items() if selected(k, wanted)}
        warm_up(dst, all_methods[f"psql|psql {args.jobs} streams (replica)"])
        runs: list[Run] = []
        for rnd in range(args.repeat):
            order = list(chosen.items())
            if rnd % 2:
                order.reverse()  # alternate, so no method always runs on a warm or cold cache
            for name, (cmd, env, db) in order:
                truncate_all(dst, db)
                for c in (src, dst):  # no method pays for the build's or the previous run's writes
                    psql(c, "postgres", "CHECKPOINT")  # the whole cluster; db may exist on one side only
                run = measured(name, rnd, cmd, env, src, dst)
                if run.ok:
                    conn = psycopg2.connect(dst.dsn(db))
                    diffs = verify.differences(expected, verify.checksums(conn))
                    conn.close()
                    if diffs:
                        run.ok, run.error = (
                            False,
                            f"verification failed: {len(diffs)} tables differ, e.g. {diffs[0]}",
                        )
                    elif name.split()[0] == "pgcopy" and fk_validity(dst, db) != fks_expected:
                        run.ok, run.error = False, f"foreign keys not all validated: {fk_validity(dst, db)}"
                runs.append(run)
                status = f"{run.wall:6.1f}s" if run.ok else f"FAILED {run.error}"
                print(f"round {rnd + 1} {name:<45} {status}", file=sys.stderr)
        summaries = summarize(runs, total_bytes, total_rows)
        meta = {
            "scale": args.scale,
            "rows": total_rows,
            "bytes": total_bytes,
            "tables": len(tables),
            "repeat": args.repeat,
            "jobs": args.jobs,
            "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, {platform.python_version()}",
            "server_version": f"{version // 10000}.{version % 10000}",
            "settings": SETTINGS,
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        (out_dir / f"{stamp}.json").write_text(
            json.dumps(
                {"meta": meta, "summary": [asdict(s) for s in summaries], "runs": [asdict(r) for r in runs]},
                indent=2,
            )
        )
        md = markdown(summaries, meta)
        (out_dir / f"{stamp}.md").write_text(md)
        print(md)
        return 0 if all(s.ok_runs for s in summaries if s.method.startswith("pgcopy")) else 1
    finally:
        src.destroy()
        dst.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
