"""Opening connections and describing them for humans.

libpq does all the parsing: URIs, key=value strings, PG* variables, .pgpass and service
files reach it untouched.  We only add ``application_name`` and turn its errors into one
line that names the database without its password.
"""

from __future__ import annotations

import getpass
import os

import psycopg2
import psycopg2.extensions

from pgcopy.errors import PgcopyError, UsageError

APPLICATION_NAME = "pgcopy"
DEFAULT_CONNECT_TIMEOUT = "10"


def parse(dsn: str) -> dict[str, str]:
    """libpq's own parse of a URI or key=value string (PQconninfoParse)."""
    try:
        return psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError as exc:
        raise UsageError(f"invalid connection string: {str(exc).strip()}") from None


def describe(dsn: str) -> str:
    """``user@host:port/dbname`` for any connection string; never the password.

    Values the string leaves out are taken from the PG* variables or libpq's defaults,
    the same way libpq will pick them when it connects.
    """
    p = parse(dsn)
    env = os.environ
    user = p.get("user") or env.get("PGUSER") or getpass.getuser()
    host = p.get("host") or p.get("hostaddr") or env.get("PGHOST") or "localhost"
    port = p.get("port") or env.get("PGPORT") or "5432"
    dbname = p.get("dbname") or env.get("PGDATABASE") or user
    if "service" in p and not {"host", "dbname"} <= p.keys():
        return f"service={p['service']}"
    return f"{user}@{host}:{port}/{dbname}"


def _one_line(exc: Exception) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = lines[0] if lines else type(exc).__name__
    # libpq prefixes 'connection to server at "h" (1.2.3.4), port N failed: ' which repeats
    # what describe() already says.
    if " failed: " in first and first.startswith("connection to server"):
        first = first.split(" failed: ", 1)[1]
    return first


def connect(dsn: str, role: str, *, readonly: bool = False) -> psycopg2.extensions.connection:
    """Open a connection for ``role`` ('source' or 'destination')."""
    extra: dict[str, str] = {"application_name": APPLICATION_NAME}
    if "connect_timeout" not in parse(dsn) and "PGCONNECT_TIMEOUT" not in os.environ:
        extra["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT
    if readonly:
        extra["options"] = (parse(dsn).get("options", "") + " -c default_transaction_read_only=on").strip()
    try:
        conn = psycopg2.connect(dsn, **extra)
    except psycopg2.Error as exc:
        raise PgcopyError(f"cannot connect to {role} {describe(dsn)}: {_one_line(exc)}") from None
    return conn


def error_line(exc: Exception) -> str:
    """The first line of a database error, for reports."""
    return _one_line(exc)
