from dataclasses import dataclass

import pytest

from pgcopy.errors import UsageError
from pgcopy.patterns import parse_patterns, select


@dataclass(frozen=True)
class T:
    schema: str
    name: str
    ancestors: tuple = ()


TABLES = [
    T("public", "users"),
    T("public", "user_log"),
    T("sales", "users"),
    T("sales", "Orders"),
    T("public", "My.Table"),
    T("public", "m_2024", (("public", "m"),)),
    T("public", "m"),
]


def names(sel):
    return [f"{t.schema}.{t.name}" for t in sel.selected]


def test_bare_name_matches_any_schema():
    assert names(select(TABLES, parse_patterns(["users"]), [])) == ["public.users", "sales.users"]


def test_qualified_and_globs():
    sel = select(TABLES, parse_patterns(["public.user*", "sales.?sers"]), [])
    assert names(sel) == ["public.users", "public.user_log", "sales.users"]


def test_comma_separated_and_repeatable():
    sel = select(TABLES, parse_patterns(["users,user_log", "m"]), [])
    assert names(sel) == ["public.users", "public.user_log", "sales.users", "public.m_2024", "public.m"]


def test_exclude_wins_over_include():
    sel = select(TABLES, parse_patterns(["*users"]), parse_patterns(["sales.*"]))
    assert names(sel) == ["public.users"]


def test_unquoted_is_folded_quoted_keeps_case_and_dots():
    assert names(select(TABLES, parse_patterns(["Orders"]), [])) == []
    assert names(select(TABLES, parse_patterns(['sales."Orders"']), [])) == ["sales.Orders"]
    assert names(select(TABLES, parse_patterns(['"My.Table"']), [])) == ["public.My.Table"]
    # a comma inside quotes does not split
    assert [p.text for p in parse_patterns(['"a,b",c'])] == ['"a,b"', "c"]


def test_partition_answers_to_parent_name():
    assert names(select(TABLES, parse_patterns(["public.m"]), [])) == ["public.m_2024", "public.m"]
    assert names(select(TABLES, [], parse_patterns(["m"]))) == [
        "public.users",
        "public.user_log",
        "sales.users",
        "sales.Orders",
        "public.My.Table",
    ]


def test_unmatched_patterns_are_reported():
    sel = select(TABLES, parse_patterns(["users,nope*"]), parse_patterns(["zzz"]))
    assert sel.unmatched == ["nope*", "zzz"]


def test_bad_patterns():
    with pytest.raises(UsageError):
        parse_patterns(["a.b.c"])
    with pytest.raises(UsageError):
        parse_patterns(['"open'])
