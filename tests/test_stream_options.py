"""Codecs, row mode and text format: each moves the fidelity schema checksum-identical."""

import re

import pytest

from tests.helpers import checksums, copy, fk_state, load_fidelity, sequence_state, trigger_state


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state"


def assert_identical(src, dst, fks, trigs):
    assert checksums(dst) == checksums(src)
    assert fk_state(dst) == fks and trigger_state(dst) == trigs
    assert sequence_state(dst) == sequence_state(src)


@pytest.mark.parametrize(
    "extra",
    [
        ["--compress"],
        ["--compress", "zstd", "--compress-level", "3"],
        ["--compress", "gzip", "--compress-level", "9"],
        ["--no-copy-pipe"],
        ["--no-copy-pipe", "--batch-size", "1"],
        ["--no-copy-pipe", "--batch-size", "1000000"],
        ["--format", "text"],
    ],
    ids=["gzip-bare", "zstd-3", "gzip-9", "rows-default", "rows-batch-1", "rows-batch-huge", "text"],
)
def test_every_stream_option_is_faithful(src, dst, state, extra):
    load_fidelity(src, dst)
    fks, trigs = fk_state(dst), trigger_state(dst)
    r = copy(src.dsn, dst.dsn, "--yes", "-p", "2", *extra, state_dir=state)
    assert r.returncode == 0, r.stderr
    assert_identical(src, dst, fks, trigs)
    if "--compress" in extra:
        assert "After codec:" in r.stdout
        assert re.search(
            r"Completed public\.order_items: 3,000 rows, [\d.]+ kB \([\d.]+ kB compressed\)", r.stderr
        )
    elif "--no-copy-pipe" in extra:
        assert "Formats:" in r.stdout and "18 rows" in r.stdout
    else:
        assert "18 text" in r.stdout


def test_dry_run_shows_format_and_reason(src, dst, state):
    load_fidelity(src, dst)
    r = copy(src.dsn, dst.dsn, "--dry-run", state_dir=state)
    assert re.search(r"public\.customers .* binary \(default\)", r.stdout)
    r = copy(src.dsn, dst.dsn, "--dry-run", "--format", "text", state_dir=state)
    assert re.search(r"public\.customers .* text \(--format text\)", r.stdout)
    r = copy(src.dsn, dst.dsn, "--dry-run", "--no-copy-pipe", "--batch-size", "7", state_dir=state)
    assert "row mode, batches of 7 rows" in r.stdout


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--compress", "--no-copy-pipe"], "--compress needs the COPY pipe"),
        (["--compress-level", "3"], "--compress-level needs --compress"),
        (["--compress", "zstd", "--compress-level", "30"], "must be 1-22"),
        (["--compress", "lz4"], "invalid choice"),
        (["--no-copy-pipe", "--batch-size", "0"], "must be at least 1"),
        (["--copy-pipe", "--no-copy-pipe"], "not allowed with argument"),
        (["--no-copy-pipe", "--format", "text"], "row mode always moves values as text"),
    ],
)
def test_invalid_combinations_are_usage_errors(tmp_path, extra, message):
    r = copy("host=nowhere.invalid", "host=nowhere.invalid dbname=x", "--yes", *extra, state_dir=tmp_path)
    assert r.returncode == 2 and message in r.stderr


def test_batch_size_with_copy_pipe_is_ignored_with_a_warning(src, dst, state):
    load_fidelity(src, dst)
    r = copy(src.dsn, dst.dsn, "--yes", "--batch-size", "50", "--include", "tree", state_dir=state)
    assert r.returncode == 0 and "--batch-size applies only to row mode" in r.stderr


@pytest.mark.slow
def test_row_mode_memory_is_bounded_by_the_batch(src, dst, state):
    """~300 MB of TOAST values copied in row mode: the worker's peak RSS stays small."""
    ddl = "CREATE TABLE docs (id int PRIMARY KEY, body text, blob bytea)"
    src.execute(ddl)
    dst.execute(ddl)
    # 1200 rows x (200 kB text + 50 kB bytea): ~300 MB of values, ~400 MB as hex text
    src.execute(
        "INSERT INTO docs SELECT g, (SELECT string_agg(md5(g || ':' || i), '') FROM generate_series(1, 6400) i),"
        " (SELECT decode(string_agg(md5(i || '/' || g), ''), 'hex') FROM generate_series(1, 3200) i)"
        " FROM generate_series(1, 1200) g"
    )
    r = copy(src.dsn, dst.dsn, "--yes", "--no-copy-pipe", "--batch-size", "20", state_dir=state, timeout=600)
    assert r.returncode == 0, r.stderr
    assert checksums(dst) == checksums(src)
    rss_mb = float(re.search(r"Worker peak RSS:\s+([\d.]+) MB", r.stdout).group(1))
    streamed = re.search(r"Data streamed:\s+([\d.]+) (MB|GB)", r.stdout)
    assert streamed and (streamed.group(2) == "GB" or float(streamed.group(1)) > 300)
    assert rss_mb < 120, f"row mode worker peaked at {rss_mb} MB"
