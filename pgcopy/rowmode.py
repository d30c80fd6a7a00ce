"""Row mode (--no-copy-pipe): a server-side cursor on the source, batched INSERTs on the
destination, for proxies and poolers that do not pass COPY through.

Values travel as text (``col::text`` on the source, ``%s::type`` on the destination), the
same text I/O that COPY's text format uses, so every type COPY handles works here too.
Memory is bounded by the batch (at most --batch-size rows or 8 MiB of values) whatever
the table size.
"""

from __future__ import annotations

from psycopg2 import sql
from psycopg2.extras import execute_values

from pgcopy.task import CopyTask

FETCH_ROWS = 100  # rows per round trip from the server-side cursor
BATCH_BYTES = 8 << 20  # a batch is also cut at this many bytes of text values


def copy_rows(src, dcur, task: CopyTask, batch_size: int, slot) -> tuple[int, int, int]:
    """Returns (rows read, rows inserted, bytes of text values)."""
    table = sql.Identifier(*task.key)
    select = sql.SQL("SELECT {} FROM ONLY {}").format(
        sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in task.columns), table
    )
    # OVERRIDING SYSTEM VALUE: GENERATED ALWAYS identity columns take the source's values
    insert = sql.SQL("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES %s").format(
        table, sql.SQL(", ").join(sql.Identifier(c) for c in task.columns)
    )
    template = sql.SQL("({})").format(
        sql.SQL(", ").join(sql.SQL("%s::" + typ) for typ in task.column_types)  # format_type output
    )
    insert_text = insert.as_string(dcur.connection)
    template_text = template.as_string(dcur.connection)
    cur = src.cursor(name="pgcopy_rows")  # server-side: rows stay on the server until fetched
    cur.itersize = min(batch_size, FETCH_ROWS)
    read = inserted = nbytes = 0
    batch: list[tuple] = []
    size = 0

    def flush() -> None:
        nonlocal inserted, nbytes
        execute_values(dcur, insert_text, batch, template=template_text, page_size=len(batch))
        inserted += dcur.rowcount  # one statement per batch: the server's own count
        nbytes += size
        slot.add(size, size, dcur.rowcount)
        batch.clear()

    try:
        cur.execute(select)
        for row in cur:
            batch.append(row)
            read += 1
            size += sum(len(v) for v in row if v is not None)
            # a batch ends at --batch-size rows or BATCH_BYTES of values, whichever comes
            # first, so wide rows cannot make a batch huge
            if len(batch) >= batch_size or size >= BATCH_BYTES:
                flush()
                size = 0
        if batch:
            flush()
    finally:
        cur.close()
    return read, inserted, nbytes
