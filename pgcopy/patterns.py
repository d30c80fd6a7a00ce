"""Table patterns for --include/--exclude, shared by `list` and `copy`.

Syntax (like psql's ``\\dt`` patterns, with globs instead of regular expressions):

* several patterns may be given comma-separated, and the options repeated;
* ``*`` matches any run of characters and ``?`` exactly one;
* a pattern without an unquoted dot matches the table name in any schema, and
  ``schema.name`` matches both parts;
* unquoted text is folded to lower case, as PostgreSQL folds unquoted identifiers;
* inside double quotes everything is literal and case is kept, so ``"Sales.2024"``
  and ``public."MixedCase"`` name those exact identifiers; ``""`` is a literal quote.

A table answers to its own name and to the names of its partition ancestors, so a
pattern naming a partitioned table selects its partitions.  Exclusion wins over inclusion.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pgcopy.errors import PreflightError, UsageError


@dataclass(frozen=True)
class Pattern:
    """A --table/--exclude pattern, compiled: schema part (if any) and name part."""

    text: str
    schema: re.Pattern[str] | None
    name: re.Pattern[str]

    def matches(self, schema: str, name: str) -> bool:
        if self.schema is not None and not self.schema.fullmatch(schema):
            return False
        return bool(self.name.fullmatch(name))


def _split_top(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes."""
    parts, cur, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if quoted:
        raise UsageError(f"unterminated double quote in table pattern {text!r}")
    parts.append("".join(cur))
    return parts


def _compile_part(part: str, whole: str) -> re.Pattern[str]:
    out, i, quoted = [], 0, False
    if not part:
        raise UsageError(f"empty name in table pattern {whole!r}")
    while i < len(part):
        ch = part[i]
        if ch == '"':
            if quoted and part[i + 1 : i + 2] == '"':
                out.append(re.escape('"'))
                i += 2
                continue
            quoted = not quoted
        elif quoted:
            out.append(re.escape(ch))
        elif ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        else:
            out.append(re.escape(ch.lower()))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def parse_pattern(text: str) -> Pattern:
    text = text.strip()
    pieces = _split_top(text, ".")
    if len(pieces) == 1:
        return Pattern(text, None, _compile_part(pieces[0], text))
    if len(pieces) == 2:
        return Pattern(text, _compile_part(pieces[0], text), _compile_part(pieces[1], text))
    raise UsageError(f"too many dots in table pattern {text!r} (quote names that contain dots)")


def parse_patterns(values: Iterable[str] | None) -> list[Pattern]:
    """Patterns from repeated, comma-separated option values."""
    out = []
    for value in values or ():
        for piece in _split_top(value, ","):
            if piece.strip():
                out.append(parse_pattern(piece))
    return out


class Named(Protocol):
    @property
    def schema(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def ancestors(self) -> tuple[tuple[str, str], ...]: ...


@dataclass(frozen=True)
class Selection:
    """The tables a selection matched, and the patterns that matched none."""

    selected: list
    unmatched: list[str]  # patterns that matched no table at all (warnings)


class Selector:
    """include/exclude applied one table at a time (an empty include list means every
    table), remembering which patterns matched: for a list of tables too long to hold."""

    def __init__(self, include: list[Pattern], exclude: list[Pattern]):
        self.include, self.exclude = include, exclude
        self.used: set[str] = set()

    def _hits(self, table: Named, patterns: list[Pattern]) -> bool:
        found = False
        for pat in patterns:
            for schema, name in ((table.schema, table.name), *table.ancestors):
                if pat.matches(schema, name):
                    self.used.add(pat.text)
                    found = True
        return found

    def wants(self, table: Named) -> bool:
        inc = self._hits(table, self.include) if self.include else True
        exc = self._hits(table, self.exclude)  # always asked: it marks the patterns used
        return inc and not exc

    @property
    def unmatched(self) -> list[str]:
        """Patterns that matched no table at all (warnings)."""
        return [p.text for p in self.include + self.exclude if p.text not in self.used]


def select(tables: Sequence[Named], include: list[Pattern], exclude: list[Pattern]) -> Selection:
    """Apply include/exclude; an empty include list means every table."""
    chooser = Selector(include, exclude)
    selected = [table for table in tables if chooser.wants(table)]
    return Selection(selected, chooser.unmatched)


def select_or_refuse(tables: Sequence[Named], include, exclude, warn) -> list:
    """Shared by list and copy: apply the option values, ``warn`` about unmatched patterns,
    refuse an empty selection."""
    sel = select(tables, parse_patterns(include), parse_patterns(exclude))
    for text in sel.unmatched:
        warn(f"pattern {text!r} matches no table")
    if not sel.selected:
        raise PreflightError(["no table matches the selection"])
    return sel.selected
