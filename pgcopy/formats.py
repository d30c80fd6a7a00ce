"""Binary or text COPY, decided per table.

Binary is the default (cheaper for the destination backend).  Text is chosen when binary
is unsafe:
  * the destination is older than PostgreSQL 14 and a column's type tree holds an array or
    composite of a user-defined type (before 14 the receiver checks element/field type
    OIDs, which differ between databases, and fails with "wrong element type");
  * a type in the tree has no binary send (source) or receive (destination) function;
  * the major versions differ and the tree holds a user-defined base type (an extension's
    binary format is only promised within one version);
  * the user asked for text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

FIRST_USER_OID = 16384  # FirstNormalObjectId: below it, built-in types


@dataclass(frozen=True)
class TypeInfo:
    """A type from pg_type, for choosing the COPY format."""

    oid: int
    name: str
    kind: str  # pg_type.typtype: b base, c composite, d domain, e enum, r range, m multirange, p pseudo
    elem: int  # element type of an array (typelem with typsubscript array_subscript_handler), else 0
    base: int  # base type of a domain, else 0
    fields: tuple[int, ...]  # attribute types of a composite
    binary_io: bool  # has typsend and typreceive


TYPES_SQL = """
SELECT t.oid, format_type(t.oid, NULL), t.typtype,
       CASE WHEN t.typcategory = 'A' THEN t.typelem ELSE 0 END,
       t.typbasetype,
       coalesce(ARRAY(SELECT a.atttypid FROM pg_attribute a
                       WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
                       ORDER BY a.attnum), '{}'),
       t.typsend <> 0 AND t.typreceive <> 0
  FROM pg_type t
"""
# only the trees of some types: what type_flags walks (array element, domain base,
# composite fields), from the given roots
TREES_SQL = (
    """
WITH RECURSIVE tree(oid) AS (
    SELECT unnest(%s::oid[])
  UNION
    SELECT next.oid
      FROM tree JOIN pg_type t ON t.oid = tree.oid
     CROSS JOIN LATERAL (
           SELECT t.typelem WHERE t.typcategory = 'A'
           UNION ALL SELECT t.typbasetype WHERE t.typbasetype <> 0
           UNION ALL SELECT a.atttypid FROM pg_attribute a
                      WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
           ) next(oid)
)
"""
    + TYPES_SQL
    + " WHERE t.oid IN (SELECT oid FROM tree)"
)


def read_types(cur, roots: Iterable[int] | None = None) -> dict[int, TypeInfo]:
    """Every type, or only the trees of ``roots`` (the columns' types: at thousands of
    tables, every table's row and array types are most of pg_type)."""
    if roots is None:
        cur.execute(TYPES_SQL)
    else:
        cur.execute(TREES_SQL, (sorted(set(roots)),))
    return {r[0]: TypeInfo(r[0], r[1], r[2], r[3], r[4], tuple(r[5]), r[6]) for r in cur.fetchall()}


@dataclass(frozen=True)
class TypeFlags:
    """What matters about one column's type tree."""

    user_container: str | None = None  # name of a user-defined array/composite in the tree
    no_binary_io: str | None = None  # name of a type without send/receive
    user_base: str | None = None  # name of a user-defined base type


def type_flags(oid: int, types: dict[int, TypeInfo]) -> TypeFlags:
    user_container = no_io = user_base = None
    seen: set[int] = set()
    stack = [oid]
    while stack:
        t = types.get(stack.pop())
        if t is None or t.oid in seen:
            continue
        seen.add(t.oid)
        user = t.oid >= FIRST_USER_OID
        if not t.binary_io and no_io is None:
            no_io = t.name
        if t.elem:
            if types.get(t.elem) and (t.elem >= FIRST_USER_OID or types[t.elem].kind in "ce"):
                user_container = user_container or t.name
            stack.append(t.elem)
        elif t.kind == "c":
            if user:
                user_container = user_container or t.name
            stack.extend(t.fields)
        elif t.kind == "d":
            stack.append(t.base)
        elif t.kind == "b" and user and user_base is None:
            user_base = t.name
    return TypeFlags(user_container, no_io, user_base)


def choose_format(
    requested: str, src_flags: list[TypeFlags], dst_flags: list[TypeFlags], src_major: int, dst_major: int
) -> tuple[str, str]:
    """(format, reason) for one table; requested is 'auto' or 'text'."""
    if requested == "text":
        return "text", "--format text"
    for f in src_flags:
        if f.no_binary_io:
            return "text", f"type {f.no_binary_io} has no binary send function on the source"
    for f in dst_flags:
        if f.no_binary_io:
            return "text", f"type {f.no_binary_io} has no binary receive function on the destination"
    if dst_major < 14:
        for f in src_flags:
            if f.user_container:
                return "text", (
                    f"destination is PostgreSQL {dst_major} (before 14) and {f.user_container} is an "
                    "array or composite of a user-defined type"
                )
    if src_major != dst_major:
        for f in src_flags:
            if f.user_base:
                return (
                    "text",
                    f"major versions differ ({src_major} vs {dst_major}) and {f.user_base} is a user-defined base type",
                )
    return "binary", "default"
