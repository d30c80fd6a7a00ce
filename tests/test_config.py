"""Issue 12: config files with profiles, and the destination guard."""

from __future__ import annotations

import os

from tests.helpers import checksums, fk_state, load_fidelity
from tests.test_everyday import run


def write(path, text: str, mode: int = 0o600):
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_profile_defaults_and_command_line_wins(src, dst, tmp_path):
    load_fidelity(src, dst)
    cfg = write(
        tmp_path / "pgcopy.toml",
        f"""
parallel = 3
exclude = ["audit_*"]
state_dir = "{tmp_path}/state"

[profiles.staging]
source = "{src.dsn}"
dest = "$STAGING_DSN"
yes = true
dest_allow = ["127.0.0.1"]
""",
    )
    env = {"STAGING_DSN": dst.dsn}
    r = run("config", "show", "--config", str(cfg), "--profile", "staging", env=env)
    assert r.returncode == 0, r.stderr
    assert "parallel = 3" in r.stdout and f"dbname={dst.dbname}" in r.stdout and "yes = True" in r.stdout
    r = run(
        "copy",
        "--config",
        str(cfg),
        "--profile",
        "staging",
        "-p",
        "2",
        "--report",
        str(tmp_path / "r.json"),
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert checksums(dst) == checksums(src)
    import json

    options = json.loads((tmp_path / "r.json").read_text())["options"]
    assert options["parallel"] == 2 and options["exclude"] == ["audit_*"]


def test_destination_guard_refuses_even_with_yes(src, dst, tmp_path):
    load_fidelity(src, dst)
    before = (checksums(dst), fk_state(dst))
    cfg = write(tmp_path / "c.toml", 'dest_allow = ["staging-*.internal", "10.0.*"]\nyes = true\n')
    r = run("copy", "--config", str(cfg), "-s", src.dsn, "-d", dst.dsn, "--state-dir", str(tmp_path / "s"))
    assert r.returncode == 2, r.stderr
    assert "not in dest_allow" in r.stderr and "127.0.0.1" in r.stderr
    assert (checksums(dst), fk_state(dst)) == before
    # the same check from the command line, and a matching pattern lets it through
    r = run(
        "copy",
        "-s",
        src.dsn,
        "-d",
        dst.dsn,
        "--yes",
        "--dest-allow",
        "127.0.0.*",
        "--state-dir",
        str(tmp_path / "s"),
    )
    assert r.returncode == 0, r.stderr


def test_config_with_password_must_be_private_and_bad_values_refused(tmp_path):
    cfg = write(tmp_path / "c.toml", 'dest = "host=db password=Sup3rSecret"\n', mode=0o644)
    r = run("config", "show", "--config", str(cfg))
    assert r.returncode == 2 and "chmod 600" in r.stderr, r.stderr
    os.chmod(cfg, 0o600)
    r = run("config", "show", "--config", str(cfg))
    assert r.returncode == 0 and "Sup3rSecret" not in r.stdout and "password=*****" in r.stdout, r.stdout
    bad = write(tmp_path / "bad.toml", 'parallel = 500\nlock_timeout = "banana"\n')
    r = run("copy", "--config", str(bad), "--dry-run")
    assert r.returncode == 2 and "parallel" in r.stderr and "Traceback" not in r.stderr, r.stderr
    unknown = write(tmp_path / "u.toml", "paralel = 2\n")
    r = run("copy", "--config", str(unknown), "--dry-run")
    assert r.returncode == 2 and "unknown option 'paralel'" in r.stderr, r.stderr
    r = run("copy", "--config", str(cfg), "--profile", "nope", "--dry-run")
    assert r.returncode == 2 and "no profile 'nope'" in r.stderr, r.stderr
