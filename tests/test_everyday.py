"""Issue 12: psql and pg_dump habits, honest descriptions, one-line errors, a JSON plan."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from tests.helpers import OWNER, OWNER_PW, ROOT, checksums, fk_state, load_fidelity


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state"


def run(*args, env=None, timeout=120, input=None):
    full = dict(os.environ)
    for k in ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE", "PGCOPY_SOURCE", "PGCOPY_DEST"):
        full.pop(k, None)
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pgcopy", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=full,
        timeout=timeout,
        input=input,
    )


def test_version_flags():
    for flag in ("-V", "--version"):
        r = run(flag)
        assert r.returncode == 0 and re.fullmatch(r"pgcopy \d+\.\d+\.\d+\n", r.stdout), r


def test_environment_defaults_jobs_and_live_descriptions(src, dst, state, tmp_path):
    """PGCOPY_SOURCE/PGCOPY_DEST, then libpq's environment, a bare database name, a service
    file; every description names the server actually reached."""
    load_fidelity(src, dst)
    services = tmp_path / "pg_service.conf"
    services.write_text(
        f"[staging]\nhost=127.0.0.1\nport={dst.cluster.port}\ndbname={dst.dbname}\nuser=postgres\n"
    )
    env = {
        "PGHOST": "127.0.0.1",
        "PGPORT": str(src.cluster.port),
        "PGUSER": "postgres",
        "PGSERVICEFILE": str(services),
        "PGCOPY_DEST": "service=staging",
    }
    report = tmp_path / "r.json"
    # source: a bare database name completed by PGHOST/PGPORT/PGUSER; dest: $PGCOPY_DEST
    r = run(
        "copy",
        "-s",
        src.dbname,
        "-j",
        "2",
        "--yes",
        "--state-dir",
        str(state),
        "--report",
        str(report),
        env=env,
    )
    assert r.returncode == 0, r.stderr
    live_src = f"postgres@127.0.0.1:{src.cluster.port}/{src.dbname}"
    live_dst = f"postgres@127.0.0.1:{dst.cluster.port}/{dst.dbname}"
    assert f"connected to source {live_src} and destination {live_dst}" in r.stderr
    assert "service=staging" not in r.stderr
    options = json.loads(report.read_text())["options"]
    assert (options["source"], options["dest"], options["parallel"]) == (live_src, live_dst, 2)
    assert checksums(dst) == checksums(src)
    # environment only, as psql with no argument: PGDATABASE names the source
    r = run("copy", "--dry-run", "--state-dir", str(state), env=dict(env, PGDATABASE=src.dbname))
    assert r.returncode == 0, r.stderr
    assert f"connected to source {live_src}" in r.stderr


@pytest.mark.parametrize(
    "dsn",
    [
        "host=127.0.0.1 password=Sup3r%zzSecret port",
        "postgres://u:Sup3r%zzSecret@127.0.0.1:1/db?sslmode=%zz",
        "host='127.0.0.1 password=Sup3rSecret",
    ],
)
def test_malformed_connection_strings_never_echo_the_password(dsn, tmp_path):
    log = tmp_path / "log"
    r = run("copy", "-s", dsn, "-d", "dbname=x", "--yes", "--log-file", str(log))
    assert r.returncode == 2, r.stderr
    assert "invalid connection string" in r.stderr
    assert "Sup3r" not in r.stderr + r.stdout + log.read_text()
    assert "Traceback" not in r.stderr


BAD_OPTIONS = {
    "lock timeout": ("--lock-timeout", "banana"),
    "parallel": ("-p", "5432"),
    "jobs zero": ("-j", "0"),
    "log file": ("--log-file", "/missing/dir/x.log"),
    "report": ("--report", "/missing/dir/r.json"),
}


@pytest.mark.parametrize("case", BAD_OPTIONS)
def test_bad_option_values_one_line_before_anything(src, dst, state, case):
    load_fidelity(src, dst)
    before = (checksums(dst), fk_state(dst))
    r = run("copy", "-s", src.dsn, "-d", dst.dsn, "--yes", "--state-dir", str(state), *BAD_OPTIONS[case])
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "error: " in r.stderr.strip().splitlines()[-1], r.stderr
    assert (checksums(dst), fk_state(dst)) == before


def test_parallel_checked_against_free_connections(src, dst, state):
    src.execute("CREATE TABLE t (id int)")
    dst.execute("CREATE TABLE t (id int)")
    r = run("copy", "-s", src.dsn, "-d", dst.dsn, "--yes", "-p", "64", "--state-dir", str(state))
    assert r.returncode == 2, r.stderr
    assert "free connections" in r.stderr and "lower --parallel" in r.stderr


def test_dry_run_json_plan_on_stdout(src, dst, state):
    load_fidelity(src, dst)
    before = (checksums(dst), fk_state(dst))
    r = run("copy", "-s", src.dsn, "-d", dst.dsn, "--dry-run", "--report", "-", "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)  # only JSON on stdout; the readable plan went to stderr
    plan = data["plan"]
    assert "Plan:" in r.stderr
    assert [t["order"] for t in plan["tables"]] == list(range(1, len(plan["tables"]) + 1))
    customers = next(t for t in plan["tables"] if t["table"] == "public.customers")
    assert customers["format"] and customers["format_reason"] and customers["triggers_held_off"]
    assert {"name": "customers_off", "state": "D"} in customers["triggers_held_off"]
    assert any(fk["name"] == "orders_customer_id_fkey" and fk["validated"] for fk in plan["fkeys"])
    assert "public.customers_id_seq" in plan["sequences"]
    assert "source_rls" in plan["checks_passed"] and plan["problems"] == []
    assert (checksums(dst), fk_state(dst)) == before
    # a refused preflight: its problems, machine-readable
    dst.execute("DROP TABLE tree")
    r = run("copy", "-s", src.dsn, "-d", dst.dsn, "--dry-run", "--report", "-", "--state-dir", str(state))
    assert r.returncode == 2
    data = json.loads(r.stdout)
    assert any("public.tree does not exist" in p for p in data["problems"])


def test_a_warning_of_the_planning_is_printed_once_and_reported(src, dst, state):
    """The catalogs are read in a forked process (pgcopy.planner): what it warns about is
    logged once, listed once after the statistics, and in the JSON report's warnings."""
    load_fidelity(src, dst)
    args = ["copy", "-s", src.dsn, "-d", dst.dsn, "--yes", "--exclude", "no_such_table", "--report", "-"]
    r = run(*args, "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    warning = "pattern 'no_such_table' matches no table"
    assert r.stderr.count(f"WARN  {warning}") == 1 and r.stderr.count(f"warning: {warning}") == 1, r.stderr
    assert warning in json.loads(r.stdout)["warnings"]
    assert checksums(dst) == checksums(src)


def test_demo_keep_leaves_clusters_running(tmp_path):
    r = run("demo", "--keep", "-p", "2", timeout=300)
    assert r.returncode == 0, r.stderr
    dsns = re.findall(r"(?:source|destination):\s+(host=\S+ port=\d+ dbname=\S+ user=\S+)", r.stdout)
    datadirs = re.findall(r"pg_ctl -D (\S+) stop", r.stdout)
    assert len(dsns) == 2 and len(datadirs) == 2, r.stdout
    import psycopg2

    try:
        for dsn in dsns:
            conn = psycopg2.connect(dsn)
            conn.close()
    finally:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        from pgcopy.sandbox import bindir

        for d in datadirs:
            subprocess.run(
                [*prefix, str(bindir() / "pg_ctl"), "-D", d, "-m", "immediate", "stop"], capture_output=True
            )
            shutil.rmtree(os.path.dirname(d), ignore_errors=True)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux drives the terminal")
def test_password_prompt_on_a_terminal(src, dst):
    load_fidelity(src, dst, owner=OWNER)
    name = f"pw{os.getpid()}"
    dsn = src.cluster.dsn(src.dbname, user=OWNER)  # no password anywhere
    cmd = (
        f"cd {ROOT} && env -u PGPASSWORD {sys.executable} -m pgcopy list -s '{dsn}'; echo EXITED $?; sleep 30"
    )
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "120", "-y", "40", cmd], check=True)
    try:

        def screen() -> str:
            return subprocess.run(
                ["tmux", "capture-pane", "-p", "-t", name], capture_output=True, text=True
            ).stdout

        end = time.monotonic() + 30
        while "Password for source" not in screen() and time.monotonic() < end:
            time.sleep(0.1)
        assert "Password for source" in screen(), screen()
        subprocess.run(["tmux", "send-keys", "-t", name, OWNER_PW, "Enter"], check=True)
        while "EXITED" not in screen() and time.monotonic() < end:
            time.sleep(0.1)
        text = screen()
        assert "EXITED 0" in text and "customers" in text, text
        assert OWNER_PW not in text  # not echoed
        # without a terminal there is no prompt: the error, at once
        r = run("list", "-s", dsn, input="")
        assert r.returncode == 1 and "no password supplied" in r.stderr
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
