import json

import pytest

from pgcopy.cli import main

SCHEMA = """
CREATE SCHEMA sales;
CREATE TABLE public.users (id int PRIMARY KEY, name text);
INSERT INTO public.users SELECT g, 'u' || g FROM generate_series(1, 1000) g;
ANALYZE public.users;
CREATE TABLE public.empty_one (id int);
ANALYZE public.empty_one;
CREATE TABLE public.never_analyzed (id int);
INSERT INTO public.never_analyzed VALUES (1), (2);
CREATE TABLE sales."MixedCase" (id int);
CREATE TABLE sales."dotted.name" (id int);
CREATE TABLE public.events (id int, at date) PARTITION BY RANGE (at);
CREATE TABLE public.events_2024 PARTITION OF public.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE public.events_2025 PARTITION OF public.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
INSERT INTO public.events VALUES (1, '2024-05-01'), (2, '2025-05-01'), (3, '2025-06-01');
CREATE UNLOGGED TABLE public.scratch (id int);
CREATE VIEW public.v AS SELECT * FROM public.users;
CREATE MATERIALIZED VIEW public.mv AS SELECT * FROM public.users;
CREATE SEQUENCE public.standalone_seq;
"""


@pytest.fixture
def db(src):
    src.execute(SCHEMA)
    return src


def run_json(capsys, *args):
    assert main(["list", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_list_kinds_and_exclusions(db, capsys):
    rows = run_json(capsys, "--source", db.dsn)
    got = [(r["schema"], r["name"], r["kind"]) for r in rows]
    assert got == [
        ("public", "empty_one", "table"),
        ("public", "events", "partitioned parent"),
        ("public", "events_2024", "partition"),
        ("public", "events_2025", "partition"),
        ("public", "never_analyzed", "table"),
        ("public", "scratch", "table"),
        ("public", "users", "table"),
        ("sales", "MixedCase", "table"),
        ("sales", "dotted.name", "table"),
    ]
    by = {r["name"]: r for r in rows}
    assert by["scratch"]["unlogged"] is True
    assert by["users"]["rows"] == 1000 and by["users"]["rows_exact"] is False
    assert by["empty_one"]["rows"] == 0
    assert by["never_analyzed"]["rows"] is None
    assert by["events_2024"]["partition_of"] == "public.events"
    assert by["users"]["total_bytes"] > 0


def test_list_exact_counts(db, capsys):
    by = {r["name"]: r for r in run_json(capsys, "--source", db.dsn, "--exact")}
    assert by["never_analyzed"]["rows"] == 2
    assert by["events"]["rows"] == 3 and by["events_2025"]["rows"] == 2
    assert by["never_analyzed"]["rows_exact"] is True


def test_list_text_output(db, capsys):
    assert main(["list", "--source", db.uri]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["SCHEMA", "TABLE", "KIND", "ROWS", "(est.)", "SIZE"]
    users = next(line for line in out if " users " in line)
    assert "~1.0k" in users
    assert "unknown" in next(line for line in out if "never_analyzed" in line)
    assert out[-1].startswith("8 tables, ~")


def test_list_schema_and_patterns(db, capsys):
    names = [r["name"] for r in run_json(capsys, "--source", db.dsn, "--schema", "sales")]
    assert names == ["MixedCase", "dotted.name"]
    names = [r["name"] for r in run_json(capsys, "--source", db.dsn, "--include", 'sales."MixedCase",events')]
    assert names == ["events", "events_2024", "events_2025", "MixedCase"]
    names = [
        r["name"] for r in run_json(capsys, "--source", db.dsn, "--include", "events", "--exclude", "*2025")
    ]
    assert names == ["events", "events_2024"]


def test_list_unmatched_pattern_warns_and_empty_selection_fails(db, capsys):
    assert main(["list", "--source", db.dsn, "--include", "users,ghost"]) == 0
    assert "WARN  pattern 'ghost' matches no table" in capsys.readouterr().err
    assert main(["list", "--source", db.dsn, "--include", "ghost"]) == 2
    assert "no table matches the selection" in capsys.readouterr().err
