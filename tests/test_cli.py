import subprocess
import sys
from pathlib import Path

import pytest

from pgcopy.cli import main

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
