"""Row mode (--no-copy-pipe): a server-side cursor on the source, batched INSERTs on the
destination, for proxies and poolers that do not pass COPY through.

Values travel as text (``col::text`` on the source, ``%s::type`` on the destination), the
same text I/O that COPY's text format uses, so every type COPY handles works here too.
Memory is bounded by the batch size whatever the table size.
"""

from __future__ import annotations

from psycopg2 import sql
from psycopg2.extras import execute_values

from pgcopy.plan import CopyTask


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
    cur.itersize = batch_size
    read = inserted = nbytes = 0
    try:
        cur.execute(select)
        while True:
            batch = cur.fetchmany(batch_size)
            if not batch:
                break
            read += len(batch)
            size = sum(len(v) for row in batch for v in row if v is not None)
            nbytes += size
            execute_values(dcur, insert_text, batch, template=template_text, page_size=batch_size)
            inserted += dcur.rowcount  # one statement per batch: the server's own count
            slot.add(size, size, dcur.rowcount)
            del batch
    finally:
        cur.close()
    return read, inserted, nbytes
