import subprocess
import sys
import time
from pathlib import Path

import pytest

from pgcopy import child
from pgcopy.cli import main
from tests.helpers import descendants

ROOT = Path(__file__).resolve().parent.parent


def test_version(capsys):
    assert main(["version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("pgcopy ")
    for word in ("Python", "psycopg2", "libpq"):
        assert word in out


def test_usage_error_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["list", "--bogus"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_python_m_and_bin_script():
    for cmd in (
        [sys.executable, "-m", "pgcopy", "version"],
        [sys.executable, str(ROOT / "bin/pgcopy"), "version"],
    ):
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True).stdout
        assert out.startswith("pgcopy ")


def _err(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def test_unreachable_host(capsys, clusters):
    from pgcopy.sandbox import free_port

    port = free_port()
    code, err = _err(capsys, ["list", "--source", f"postgresql://bob:s3cret@127.0.0.1:{port}/db"])
    assert code == 1
    assert err.startswith(f"pgcopy: error: cannot connect to source bob@127.0.0.1:{port}/db: ")
    assert "s3cret" not in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


@pytest.mark.parametrize("form", ["uri", "kv"])
def test_wrong_password_and_missing_db(capsys, clusters, form):
    c = clusters[0]
    with __import__("psycopg2").connect(c.dsn()) as conn, conn.cursor() as cur:
        cur.execute("DROP ROLE IF EXISTS carol; CREATE ROLE carol LOGIN PASSWORD 'right'")
    if form == "uri":
        bad_pw = f"postgresql://carol:hunter2@127.0.0.1:{c.port}/postgres"
        no_db = f"postgres://carol:right@127.0.0.1:{c.port}/nosuchdb"
    else:
        bad_pw = f"host=127.0.0.1 port={c.port} user=carol password=hunter2 dbname=postgres"
        no_db = f"host=127.0.0.1 port={c.port} user=carol password=right dbname=nosuchdb"
    code, err = _err(capsys, ["list", "-s", bad_pw])
    assert code == 1 and "hunter2" not in err
    assert f"carol@127.0.0.1:{c.port}/postgres" in err and "password authentication failed" in err
    assert len(err.strip().splitlines()) == 1
    code, err = _err(capsys, ["list", "-s", no_db])
    assert code == 1 and "right" not in err.replace("carol", "")
    assert 'database "nosuchdb" does not exist' in err and len(err.strip().splitlines()) == 1


def test_debug_shows_traceback(capsys, clusters):
    from pgcopy.sandbox import free_port

    code, err = _err(capsys, ["--debug", "list", "-s", f"host=127.0.0.1 port={free_port()} dbname=x"])
    assert code == 1 and "Traceback" in err


def test_man_page_is_fresh():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "man/build.py"), "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", ["bin/pgcopy", "installed pgcopy"])
def test_scripts_copy_with_workers_that_load_no_ssl(src, dst, tmp_path, script):
    """Spawned workers import the parent's main script (as __mp_main__): bin/pgcopy used
    to run the CLI again there, so every worker started a second copy (refused by the run
    lock: nothing copied, exit 4).  While the load waits on a lock held here, no pgcopy
    process has loaded Python's ssl or hashlib (OpenSSL a second time: 4 MB each)."""
    exe = ROOT / "bin/pgcopy" if script == "bin/pgcopy" else Path(sys.executable).parent / "pgcopy"
    if not exe.exists():
        pytest.skip(f"{exe} is not installed")
    for db in (src, dst):
        db.execute(
            "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY, a int REFERENCES a);"
            "CREATE TABLE c (id int)"
        )
    src.execute(
        "INSERT INTO a SELECT generate_series(1, 500); INSERT INTO b SELECT i, i FROM generate_series(1, 500) i;"
        "INSERT INTO c VALUES (1)"
    )
    dst.execute("INSERT INTO a VALUES (-1)")
    holder = dst.connect()
    holder.autocommit = False
    holder.cursor().execute("LOCK TABLE c IN ACCESS SHARE MODE")  # c's load (TRUNCATE/DELETE) waits
    semaphores_before = set(Path("/dev/shm").glob("sem.mp-*"))
    proc = subprocess.Popen(
        [sys.executable, str(exe), "copy", "-s", src.dsn, "-d", dst.dsn, "--yes", "-p", "2"]
        + ["--lock-timeout", "60s", "--state-dir", str(tmp_path), "--output", "plain"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        waiting = 0
        for _ in range(300):
            waiting = dst.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgcopy:%' AND wait_event_type = 'Lock'"
            )
            if waiting or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert waiting, "the load never waited on the held lock"
        below = descendants(proc.pid)
        # the coordinator and its one worker (the three small tables are one batch), nothing
        # else: no resource tracker, no named semaphore (pgcopy.channel)
        assert len(below) == 1 and all("from pgcopy.worker import main" in c for c in below.values()), below
        assert set(Path("/dev/shm").glob("sem.mp-*")) <= semaphores_before
        for pid in [proc.pid, *below]:
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert "_ssl." not in maps and "_hashlib." not in maps, (
                pid,
                Path(f"/proc/{pid}/cmdline").read_text(),
            )
    finally:
        holder.rollback()
        holder.close()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert dst.query("SELECT count(*), min(id) FROM a") == [(500, 1)]
    assert dst.scalar("SELECT count(*) FROM b") == 500
    assert dst.scalar("SELECT count(*) FROM c") == 1


def _probe_child() -> dict:
    """What a pgcopy child (tests/child_probe.py) reports about how it was started."""
    from pgcopy.child import ChildProcess

    child = ChildProcess("tests.child_probe")
    try:
        return child.recv()
    finally:
        child.join(10)
        child.close()


def test_children_start_without_site_on_the_parents_path(tmp_path, monkeypatch):
    """A child (a worker) runs without the site module (-S: 0.8 MB of RSS less each,
    measured): its path is pgcopy's root and ours, without our first entry (the script's
    or working directory)."""
    monkeypatch.syspath_prepend(str(tmp_path))  # where a script run from here would be
    got = _probe_child()
    assert got["site"] is False
    assert got["path"][0] == str(ROOT) and str(tmp_path) not in got["path"]
    assert got["psycopg2"].startswith(tuple(p for p in sys.path if "site-packages" in p))


def test_workers_do_not_import_inspect():
    """dataclasses imports inspect (with ast, dis, tokenize: 1.2 MB of RSS in each worker)
    only to write a signature into a dataclass without a docstring; a child starts with a
    stand-in for it (pgcopy.lean).  A dataclass without a docstring among a worker's
    modules would load it all again."""
    got = _probe_child()
    assert "pgcopy.worker" in got["modules"] and "dataclasses" in got["modules"]
    assert not {"ast", "dis", "tokenize"} & set(got["modules"])
    # the kernel kills it with us (armed before exec: no ctypes here, 0.35 MB), no watch
    assert "ctypes" not in got["modules"] and "parent-watch" not in got["threads"]
    # nor typing (0.35 MB a worker, measured at 10,000 tables): annotations name classes
    assert "typing" not in got["modules"]


def test_the_stand_in_for_inspect_is_the_real_module_once_used():
    code = (
        "import sys\nimport pgcopy.lean\npgcopy.lean.defer_inspect()\nimport dataclasses, inspect\n"
        "assert 'ast' not in sys.modules\n"
        "@dataclasses.dataclass\nclass A:\n    x: int\n"  # no docstring: its signature is written
        "assert A.__doc__ == 'A(x: int)', A.__doc__\n"
        "import inspect as again\n"
        "assert again is sys.modules['inspect'] and again.isclass(A) and 'ast' in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_a_child_reports_its_own_peak_rss_not_ours():
    """The report's "Worker peak RSS" is the worker's: Linux hands the starting process's
    high-water mark (getrusage's ru_maxrss) through fork and exec to the child, so a
    coordinator grown to 66 MB made every 24 MB worker report 66 MB."""
    ballast = b"x" * (300 << 20)  # resident: 300 MB of our pages
    got = _probe_child()
    del ballast
    assert 5 << 10 < got["usage"]["maxrss_kb"] < 100 << 10, got["usage"]


def test_workers_ignore_modules_in_the_working_directory(src, dst, tmp_path):
    """A worker is started with ``python -P -S -c``: without -P the working directory would
    come first on its sys.path, so a pickle.py lying there would replace the standard
    library's (the copy failed: every worker died at its first import)."""
    (tmp_path / "pickle.py").write_text("raise ImportError('the working directory shadowed pickle')\n")
    for db in (src, dst):
        db.execute("CREATE TABLE a (id int PRIMARY KEY)")
    src.execute("INSERT INTO a SELECT generate_series(1, 10)")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bin/pgcopy"), "copy", "-s", src.dsn, "-d", dst.dsn, "--yes", "-p", "2"]
        + ["--state-dir", str(tmp_path / "state"), "--output", "plain"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert dst.scalar("SELECT count(*) FROM a") == 10


def test_a_child_is_left_to_watch_for_us_where_prctl_is_refused():
    """Where prctl fails (a seccomp filter, say), the children are not told the kernel
    guards them: they watch for the coordinator's exit themselves."""

    class Refusing:
        @staticmethod
        def prctl(*args):
            return -1

    class Working:
        calls: list = []

        @staticmethod
        def prctl(option, *args):
            Working.calls.append(option)
            return 0

    assert child.death_signal(Refusing()) is None
    arm = child.death_signal(Working())
    assert arm is not None and Working.calls == [child.PR_GET_PDEATHSIG]
    arm()
    assert Working.calls[-1] == child.PR_SET_PDEATHSIG

    class SetRefused:
        @staticmethod
        def prctl(option, *args):
            return 0 if option == child.PR_GET_PDEATHSIG else -1

    # between fork and exec: raising makes Popen fail instead of starting it unguarded
    with pytest.raises(OSError):
        child.death_signal(SetRefused())()
    # on this machine prctl works: the kernel guards the workers
    assert child.death_signal() is not None


def test_the_coordinator_does_not_import_inspect():
    """The command starts with the same stand-in for inspect as the workers
    (pgcopy.__main__): every dataclass of pgcopy has a docstring, so importing all of
    pgcopy's modules (the live displays' blessed aside) loads neither inspect's ast nor dis."""
    code = (
        "import sys, importlib, pathlib\nimport pgcopy.lean\npgcopy.lean.defer_inspect()\n"
        "root = pathlib.Path('pgcopy')\n"
        "names = ['.'.join(p.with_suffix('').parts).removesuffix('.__init__') for p in sorted(root.rglob('*.py'))]\n"
        "for name in names:\n"
        "    if name not in ('pgcopy.ui.bar', 'pgcopy.ui.interactive', 'pgcopy.__main__'):\n"
        "        importlib.import_module(name)\n"
        "print(len(names), sorted({'ast', 'dis'} & set(sys.modules)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    count, loaded = proc.stdout.split(" ", 1)
    assert int(count) > 30 and loaded.strip() == "[]", proc.stdout
    # and the command itself starts with the stand-in
    cmd = [sys.executable, "-X", "importtime", "-m", "pgcopy", "copy", "--help"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()}
    assert "dataclasses" in imported and not {"ast", "dis"} & imported
