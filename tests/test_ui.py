"""The displays end to end: tmux drives a real terminal, real clusters do the copy."""

import json
import re
import shlex
import shutil
import subprocess
import time

import pytest

from tests.helpers import ROOT, checksums, copy, fk_state, load_fidelity
from tests.test_safety import copy_blocked_on_empty_src, hold_lock, wait_blocked

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

LINE = re.compile(r"^\d\d:\d\d:\d\d (INFO |DONE |WARN |ERROR) ")


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state"


class Tmux:
    def __init__(self, name, command, width=100, height=30):
        self.name = name
        self.height = height
        shell = f"cd {shlex.quote(str(ROOT))}; {command}; echo EXITED $?; sleep 120"
        subprocess.run(
            ["tmux", "new-session", "-d", "-s", name, "-x", str(width), "-y", str(height), shell], check=True
        )

    def screen(self) -> list[str]:
        out = subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True)
        return out.stdout.splitlines()

    def fmt(self, spec: str) -> str:
        return subprocess.run(
            ["tmux", "display", "-p", "-t", self.name, spec], capture_output=True, text=True
        ).stdout.strip()

    def wait_for(self, text, timeout=60) -> list[str]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            lines = self.screen()
            if any(text in line for line in lines):
                return lines
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not on screen:\n" + "\n".join(self.screen()))

    def keys(self, *keys):
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def kill(self):
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def pgcopy_cmd(src, dst, state, *extra) -> str:
    args = ["copy", "-s", src.dsn, "-d", dst.dsn, "--yes", "-p", "2", "--state-dir", str(state), *extra]
    return f"{shlex.quote(str(ROOT / '.venv/bin/python'))} -m pgcopy " + " ".join(
        shlex.quote(a) for a in args
    )


def test_progress_bar_pinned_above_scrolling_logs(src, dst, state):
    load_fidelity(src, dst)
    lock = hold_lock(dst, "empty_src")
    t = Tmux(f"bar{time.monotonic_ns()}", pgcopy_cmd(src, dst, state, "--output", "progress"))
    try:
        t.wait_for("Copying table public.empty_src")
        wait_blocked(dst)
        t.wait_for("17/18 tables")  # the other worker has loaded the rest (a slow CI machine)
        time.sleep(0.5)
        screen = t.screen()
        # the phase and the FKs settled so far are on the bar
        assert re.match(
            r"^\s*\d+\.\d% [█░]+ copying rows \| \d+/18 tables, \d+/10 FKs .* MB/s\s+ETA ", screen[0]
        ), screen[0]
        logs = [line for line in screen[1:] if LINE.match(line)]
        # more log lines than the screen holds have scrolled under the bar, which stayed put
        assert len(logs) == 29 and any("Copying table public.empty_src" in line for line in logs)
        assert not any("STEP 1:" in line for line in logs)  # the first line scrolled away
        assert t.fmt("#{scroll_region_upper}") == "1"
        # a smaller window: the scroll region and the bar follow it
        subprocess.run(["tmux", "resize-window", "-t", t.name, "-x", "80", "-y", "20"], check=True)
        end = time.monotonic() + 10
        while time.monotonic() < end and t.fmt("#{scroll_region_upper} #{scroll_region_lower}") != "1 19":
            time.sleep(0.1)
        assert t.fmt("#{scroll_region_upper} #{scroll_region_lower}") == "1 19"
        assert re.match(r"^\s*\d+\.\d% [█░]+ ", t.screen()[0]) and len(t.screen()[0]) <= 80
        lock.close()
        screen = t.wait_for("EXITED 0")
        assert any("COPY STATISTICS" in line for line in screen)
        assert (
            t.fmt("#{scroll_region_upper} #{scroll_region_lower} #{alternate_on} #{cursor_flag}")
            == "0 19 0 1"
        )
    finally:
        lock.close()
        t.kill()
    assert checksums(dst) == checksums(src)


LONG = "a_table_with_a_rather_long_name_to_make_its_log_lines_wrap_ok"


def test_progress_bar_scrolls_the_screen_and_wraps_long_lines(src, dst, state):
    """What was on the terminal is pushed into its scrollback, not overwritten by the bar;
    a log line longer than the window wraps onto the next row instead of being cut."""
    load_fidelity(src, dst)
    for db in (src, dst):
        db.execute(f"CREATE TABLE {LONG} (id int PRIMARY KEY, note text)")
    src.execute(f"INSERT INTO {LONG} SELECT g, 'n' FROM generate_series(1, 5) g")
    command = "clear; echo FIRST-LINE-BEFORE-PGCOPY; " + pgcopy_cmd(src, dst, state, "--output", "progress")
    t = Tmux(f"wrap{time.monotonic_ns()}", command, width=100, height=80)
    try:
        t.wait_for("EXITED 0")
        everything = subprocess.run(
            ["tmux", "capture-pane", "-p", "-S", "-1000", "-t", t.name], capture_output=True, text=True
        ).stdout.splitlines()
        assert any("FIRST-LINE-BEFORE-PGCOPY" in line for line in everything), "\n".join(everything)
        rows = t.screen()
        (i,) = [n for n, line in enumerate(rows) if f"Completed public.{LONG}" in line]
        assert len(rows[i]) == 100 and "[binary]" not in rows[i]
        assert rows[i + 1].rstrip().endswith("[binary]"), rows[i : i + 2]  # the rest, on the next row
    finally:
        t.kill()
    assert checksums(dst) == checksums(src)


def test_interactive_view_and_q_cancels_cleanly(src, dst, state):
    load_fidelity(src, dst)
    fks = fk_state(dst)
    lock = hold_lock(dst, "empty_src")
    t = Tmux(
        f"ia{time.monotonic_ns()}",
        pgcopy_cmd(src, dst, state, "--output", "interactive"),
        width=80,
        height=24,
    )
    try:
        screen = t.wait_for("public.empty_src")
        wait_blocked(dst)
        screen = t.wait_for("q: cancel")
        assert screen[0].startswith("pgcopy copy") and "tables done" in screen[0]
        assert re.search(r"\d+\.\d% [█░]+ .*ETA", screen[1])
        assert re.match(r"^ now: copying rows  \(\d+/10 foreign keys settled\)", screen[2]), screen[2]
        assert any("workers" in line for line in screen) and any(
            line.strip() == "(idle)" or "public.empty_src" in line for line in screen
        )
        assert t.fmt("#{alternate_on}") == "1"
        t.keys("q")
        t.wait_for("Cancel the copy?")
        t.keys("n")
        time.sleep(0.5)
        assert not any("Cancel the copy?" in line for line in t.screen())
        t.keys("q")
        t.wait_for("Cancel the copy?")
        t.keys("y")
        screen = t.wait_for("EXITED 130")
        assert any("COPY STATISTICS" in line for line in screen)
        assert t.fmt("#{alternate_on} #{cursor_flag}") == "0 1"
    finally:
        lock.close()
        t.kill()
    assert dst.query("SELECT * FROM empty_src") == [(1, "stale")]
    assert fk_state(dst) == fks


@pytest.mark.parametrize("mode", ["progress", "interactive"])
def test_live_views_fall_back_to_plain_without_a_terminal(src, dst, state, mode):
    load_fidelity(src, dst)
    r = copy(src.dsn, dst.dsn, "--yes", "--output", mode, "--include", "tree", state_dir=state)
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if "needs a terminal" in line]
    assert len(notes) == 1 and f"--output {mode}" in notes[0] and "using plain output" in notes[0]
    assert "\x1b[" not in r.stderr + r.stdout


def test_plain_output_lines_and_progress_lines(src, dst, state, tmp_path):
    load_fidelity(src, dst)
    extra = ("--progress-interval", "0.3", "--log-file", str(tmp_path / "run.log"))
    with copy_blocked_on_empty_src(src, dst, state, *extra) as run:
        run.wait_for("in flight: public.empty_src")
    rc, out, err = run.finish()
    assert rc == 0
    lines = err.splitlines()
    assert all(LINE.match(line) or line.startswith(" " * 15) for line in lines), err
    progress = [line for line in lines if "tables |" in line]
    assert progress and re.search(
        r"\d+\.\d% \| copying rows \| \d+/18 tables \| \d+/10 FKs \| [\d,]+ rows \| [\d.]+ MB/s \| ETA [\d:-]+ \| in flight: ",
        progress[0],
    )
    logged = (tmp_path / "run.log").read_text().splitlines()
    assert logged == lines  # the log file holds every line, in the same plain format


def test_json_report(src, dst, state, tmp_path):
    load_fidelity(src, dst)
    path = tmp_path / "report.json"
    dst_dsn = dst.dsn + " password=do-not-show"
    r = copy(src.dsn, dst_dsn, "--yes", "--compress", "zstd", "--report", str(path), state_dir=state)
    assert r.returncode == 0, r.stderr
    text = path.read_text()
    assert "do-not-show" not in text
    rep = json.loads(text)
    assert rep["report_version"] == 2 and rep["exit_code"] == 0 and rep["error"] is None
    assert rep["options"]["dest"] == f"postgres@127.0.0.1:{dst.cluster.port}/{dst.dbname}"
    assert rep["options"]["codec"] == "zstd:1" and rep["options"]["parallel"] == 4
    assert len(rep["tables"]) == 18
    t = next(t for t in rep["tables"] if t["table"] == "public.order_items")
    assert (
        t["status"] == "copied" and t["rows"] == 3000 and t["format"] == "binary" and t["codec"] == "zstd:1"
    )
    assert t["bytes"] > t["wire_bytes"] > 0 and t["seconds"] >= 0 and t["error"] is None
    assert rep["totals"]["rows"] == 5566 and rep["totals"]["tables_copied"] == 18
    assert len(rep["fkeys_dropped"]) == len(rep["fkeys_restored"]) == 10
    assert "public.standalone_seq" in rep["sequences_set"] and rep["matviews_refreshed"] == [
        "public.customer_counts"
    ]
    # a refusal writes its report too, with the exit code and the reason
    r = copy(src.dsn, src.dsn, "--yes", "--report", str(path), state_dir=state)
    rep = json.loads(path.read_text())
    assert r.returncode == 2 and rep["exit_code"] == 2 and "same database" in rep["error"]
