"""Sequences not set inside their table's load: reading their values, setting them.

A sequence owned by a loaded table (whose owner the role is on the destination) is set in
that table's load transaction, which reads it from the source right before its commit
(stream.read_sequences; the plan hands it to its table).  The others are not
transactional: they are read right after the snapshot, by the planning (:func:`settle`),
and set after the load (:func:`set_others`).
"""

from __future__ import annotations

from collections.abc import Container

import psycopg2
from psycopg2 import sql

from pgcopy import failpoints
from pgcopy.catalog import lock_holders, qualname, regclass_literal
from pgcopy.connections import error_line
from pgcopy.errors import PgcopyError
from pgcopy.log import Logger
from pgcopy.packed import Packed
from pgcopy.plan import Plan, Sequences
from pgcopy.stream import read_sequences

# Sequences read per transaction (each read locks its sequence until the commit).
CHUNK = 20


def read_values(conn, keys: list, lock_timeout: str = "0") -> dict:
    """last_value and is_called of each sequence, a few per transaction (commits ``conn``);
    a sequence locked on the source (an uncommitted DROP SEQUENCE, say) fails the run after
    ``lock_timeout``, before anything has changed, instead of holding it there."""
    cur = conn.cursor()
    out = {}
    for i in range(0, len(keys), CHUNK):
        chunk = keys[i : i + CHUNK]
        cur.execute("SET LOCAL lock_timeout = %s", (lock_timeout,))
        try:
            out.update((v.key, v) for v in read_sequences(cur, chunk))
        except psycopg2.errors.LockNotAvailable:
            conn.rollback()
            held = [f"{qualname(k)}{h}" for k in chunk if (h := lock_holders(conn, k))]
            which = ", ".join(held) or "one of " + ", ".join(map(qualname, chunk))
            raise PgcopyError(
                f"a source sequence stayed locked past --lock-timeout: {which}; nothing was changed"
            ) from None
        conn.commit()
    return out


def settle(plan: Plan, src, lock_timeout: str) -> Plan:
    """Read, on ``src``, the values of the sequences not set inside their table's load."""
    seqs = plan.sequences.open()
    others = [s.key for s in seqs.sequences if not s.in_load]
    seqs.values = read_values(src, others, lock_timeout)
    plan.sequences = Packed(seqs)
    return plan


def set_others(dst, plan: Plan, done_keys: Container, loaded_parents: Container, log: Logger) -> list[str]:
    """Sequences not set inside a load transaction: standalone ones, ones the role does
    not own, ones owned by a partitioned parent (set when one of its leaves loaded:
    ``loaded_parents``)."""
    seqs: Sequences = plan.sequences.open()
    cur = dst.cursor()
    done = []
    for seq in seqs.sequences:
        if seq.in_load:
            continue
        owner = seq.owner_table
        if owner is not None and owner not in done_keys and owner not in loaded_parents:
            continue  # its table failed: keep the destination's sequence in step with its old rows
        v = seqs.values[seq.key]
        try:
            cur.execute(
                sql.SQL("SELECT setval({}, %s, %s)").format(sql.Literal(regclass_literal(seq.key))),
                (v.last_value, v.is_called),
            )
            dst.commit()
            done.append(qualname(seq.key))
            failpoints.hit("during-sequences")
        except failpoints.FailpointError:
            raise
        except Exception as exc:
            dst.rollback()
            log.warn(f"sequence {qualname(seq.key)} not set: {error_line(exc)}")
    return done
