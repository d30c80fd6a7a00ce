"""The binary/text decision, checked against real catalogs (no pre-14 server needed)."""

import psycopg2
import pytest

from pgcopy.formats import choose_format, read_types, type_flags


@pytest.fixture
def types(src):
    src.execute(
        "CREATE TYPE mood AS ENUM ('a', 'b'); CREATE TYPE pair AS (x int, m mood);"
        "CREATE DOMAIN posint AS int CHECK (VALUE > 0); CREATE DOMAIN moods AS mood[];"
    )
    conn = psycopg2.connect(src.dsn)
    try:
        return read_types(conn.cursor())
    finally:
        conn.close()


def oid(types, name):
    return next(t.oid for t in types.values() if t.name == name)


def decide(types, name, dst_major=13, src_major=15, requested="auto"):
    flags = [type_flags(oid(types, name), types)]
    return choose_format(requested, flags, flags, src_major, dst_major)


@pytest.mark.parametrize("name", ["mood[]", "pair", "pair[]", "moods"])
def test_user_arrays_and_composites_need_text_before_14(types, name):
    fmt, reason = decide(types, name, dst_major=13)
    assert fmt == "text" and "before 14" in reason
    assert decide(types, name, dst_major=15) == ("binary", "default")


@pytest.mark.parametrize("name", ["integer[]", "jsonb", "text", "mood", "posint", "bytea", "numeric[]"])
def test_builtin_types_and_plain_enums_stay_binary(types, name):
    assert decide(types, name, dst_major=13, src_major=13) == ("binary", "default")


def test_requested_text_and_missing_binary_io(types):
    assert decide(types, "integer", requested="text") == ("text", "--format text")
    broken = {k: v for k, v in types.items()}
    t = broken[oid(types, "mood")]
    broken[t.oid] = t.__class__(t.oid, t.name, t.kind, t.elem, t.base, t.fields, False)
    fmt, reason = choose_format("auto", [type_flags(oid(types, "pair"), broken)], [], 15, 15)
    assert fmt == "text" and "mood has no binary send" in reason


def test_user_base_type_across_major_versions(types):
    from pgcopy.formats import TypeInfo

    fake = dict(types)
    fake[99999] = TypeInfo(99999, "ext_type", "b", 0, 0, (), True)
    flags = [type_flags(99999, fake)]
    assert choose_format("auto", flags, flags, 15, 15) == ("binary", "default")
    assert choose_format("auto", flags, flags, 15, 16)[0] == "text"


def test_reading_only_the_columns_type_trees_decides_the_same(src):
    """The plan reads only the trees of the columns' types (at thousands of tables, every
    table's row and array types are most of pg_type): every type type_flags walks from a
    column is there, and every decision is the one the whole catalog gives."""
    src.execute(
        "CREATE TYPE mood AS ENUM ('a', 'b'); CREATE TYPE pair AS (x int, m mood);"
        "CREATE DOMAIN posint AS int CHECK (VALUE > 0); CREATE DOMAIN moods AS mood[];"
        "CREATE TYPE nest AS (p pair[], d posint, ms moods, r int4range);"
        "CREATE DOMAIN nests AS nest[]; CREATE TABLE other (a int);"
        "CREATE TABLE wide (a nests, b pair, c moods, d posint[], e jsonb, f text, g other, h int4range[])"
    )
    conn = psycopg2.connect(src.dsn)
    try:
        cur = conn.cursor()
        cur.execute("SELECT atttypid FROM pg_attribute WHERE attrelid = 'wide'::regclass AND attnum > 0")
        roots = [r[0] for r in cur.fetchall()]
        full, trees = read_types(cur), read_types(cur, roots)
    finally:
        conn.close()
    assert len(trees) < len(full) / 10
    for root in roots:
        seen, stack = set(), [root]
        while stack:  # what type_flags visits, walked on the whole catalog
            t = full[stack.pop()]
            if t.oid not in seen:
                seen.add(t.oid)
                stack += [x for x in (t.elem, t.base, *t.fields) if x]
        assert seen <= set(trees), full[root].name
        assert type_flags(root, trees) == type_flags(root, full)
    for major in (13, 15):  # pair inside nests: text before 14
        flags = [type_flags(r, trees) for r in roots]
        assert choose_format("auto", flags, flags, 15, major) == choose_format(
            "auto", [type_flags(r, full) for r in roots], [type_flags(r, full) for r in roots], 15, major
        )
