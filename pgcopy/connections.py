"""Opening connections, pinning their sessions, and describing them for humans.

libpq does all the parsing: URIs, key=value strings, PG* variables, .pgpass and service
files reach it untouched.  Every connection pgcopy opens goes through :func:`connect`,
which pins the session the way pg_dump does, with ``SET`` after connecting (poolers
reject the ``options`` startup parameter):

- one common ``client_encoding`` on both ends, so the servers convert (or refuse);
- ``DateStyle``, ``IntervalStyle``, ``extra_float_digits``, ``TimeZone``,
  ``bytea_output``, ``lc_monetary``: text output that reads back as the same value
  anywhere (money's text follows lc_monetary: "$1,234.50" read under a locale whose
  decimal mark is a comma is another amount, or an error);
- no statement, idle or lock timeouts from the role or database (the destination's DDL
  sets ``--lock-timeout`` itself), so a production role's limits cannot kill the
  snapshot or a long COPY;
- ``client_connection_check_interval`` (14+): a backend whose pgcopy process died stops
  its work instead of holding locks until its statement ends;
- ``default_transaction_isolation``: repeatable read on the source (a hot standby
  refuses serializable, which its primary's configuration may carry), read committed on
  the destination;
- on the source, ``row_security = off`` (a read a policy would filter is an error, never
  a subset) and read-only transactions;
- on the destination of a copy, ``synchronous_commit = off`` (as pgcopydb sets it):
  thousands of small commits (FK batches, table batches, ANALYZE) stop waiting for a WAL
  flush each.  Before a journal is removed and before the run reports anything done,
  :func:`make_durable` commits one logical-decoding message at the server's own setting:
  a commit that wrote WAL flushes all WAL before it, so every earlier commit of the run is
  then as durable as the server makes any commit.  A server crash before that undoes a
  tail of the run's commits, leaving the destination as it was at an earlier moment of the
  run, which the journal and the one-transaction loads already cover.  A role that may not
  emit that message keeps synchronous commits.
"""

from __future__ import annotations

import getpass
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import psycopg2
import psycopg2.extensions

from pgcopy.errors import PgcopyError, UsageError

APPLICATION_NAME = "pgcopy"
DEFAULT_CONNECT_TIMEOUT = "10"

# A server session keeps each relation it opens in its caches (relcache, catcache) until it
# ends: after 10,000 small tables a worker's source session held 70 MB of private memory,
# its destination session 99 MB, and a session of the FK restore 158 MB (Private_Dirty,
# 40,000-table run, PostgreSQL 15).  A session that goes through many tables is replaced
# once it has opened about this many relations (tables, TOAST tables, indexes).
SESSION_RELATIONS = 2000


def session_relations() -> int:
    """SESSION_RELATIONS, or PGCOPY_SESSION_RELATIONS where the tests set fewer."""
    return int(os.environ.get("PGCOPY_SESSION_RELATIONS", SESSION_RELATIONS))


PINNED = (
    ("DateStyle", "ISO"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("TimeZone", "UTC"),
    ("bytea_output", "hex"),
    ("lc_monetary", "C"),
    ("statement_timeout", "0"),
    ("lock_timeout", "0"),
    ("idle_in_transaction_session_timeout", "0"),
)
PINNED_14 = (("idle_session_timeout", "0"), ("client_connection_check_interval", "1s"))


@dataclass(frozen=True)
class Session:
    """What every connection of one run sets; picklable, so workers pin the same way.

    ``run_id`` names the run in ``application_name`` (``pgcopy:<host>:<pid>:<token>``):
    the destination sees who holds its run lock, and the coordinator finds its own
    backends to cancel them on a stop."""

    run_id: str
    client_encoding: str | None = None  # None: leave libpq's default (one side only)
    async_commit: bool = False  # destination commits asynchronous (see make_durable)
    # the run's first connections showed both servers keep a session to one client (see
    # refuse_shared_sessions): the other sessions, to the same servers, skip the probe
    sessions_checked: bool = False

    @classmethod
    def new(cls) -> Session:
        host = socket.gethostname().split(".")[0][:24]
        return cls(f"{host}:{os.getpid()}:{os.urandom(4).hex()}")

    @property
    def app_name(self) -> str:
        return f"{APPLICATION_NAME}:{self.run_id}"[:63]

    def with_encoding(self, encoding: str) -> Session:
        return replace(self, client_encoding=encoding)

    def with_sessions_checked(self) -> Session:
        return replace(self, sessions_checked=True)

    def with_async_commit(self, dst) -> Session:
        """Asynchronous destination commits where :func:`make_durable` can end them."""
        cur = dst.cursor()
        cur.execute("SELECT has_function_privilege(%s, 'EXECUTE')", (DURABLE_FUNCTION,))
        allowed = cur.fetchone()[0]
        dst.commit()
        return replace(self, async_commit=allowed)


def resolve(value: str | None, env_name: str) -> str:
    """What the user named: the option, else ``$env_name``, else "" (libpq then takes
    everything from PGHOST, PGDATABASE, PGSERVICE... as psql does); a bare word is a
    database name, as in ``psql shop``."""
    if value is None:
        value = os.environ.get(env_name, "")
    if value and "=" not in value and "://" not in value:
        return psycopg2.extensions.make_dsn(dbname=value)
    return value


def common_encoding(src, dst) -> str:
    """The client_encoding both sides use: theirs when equal (no conversion), else UTF8."""
    s = src.get_parameter_status("server_encoding")
    d = dst.get_parameter_status("server_encoding")
    return s if s == d and s else "UTF8"


def parse(dsn: str) -> dict[str, str]:
    """libpq's own parse of a URI or key=value string (PQconninfoParse).

    libpq's parse errors quote the text around the fault, which may be a password: the
    message names only the kind of fault."""
    try:
        return psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError as exc:
        kind = str(exc).strip().split(":")[0].split('"')[0].strip() or "malformed"
        raise UsageError(f"invalid connection string ({kind})") from None


def describe(dsn: str) -> str:
    """``user@host:port/dbname`` from a connection string; never the password.

    Only for a string not yet connected; once connected, use :func:`describe_conn`."""
    p = parse(dsn)
    if "service" in p and not {"host", "dbname"} <= p.keys():
        return f"service={p['service']}"
    env = os.environ
    user = p.get("user") or env.get("PGUSER") or getpass.getuser()  # libpq's default too
    host = p.get("host") or p.get("hostaddr") or env.get("PGHOST") or "localhost"
    port = p.get("port") or env.get("PGPORT") or "5432"
    dbname = p.get("dbname") or env.get("PGDATABASE") or user
    return f"{user}@{host}:{port}/{dbname}"


def describe_conn(conn) -> str:
    """``user@host:port/dbname`` of the connection actually made (libpq's PQuser/PQhost...)."""
    info = conn.info
    host = info.host or "localhost"
    return f"{info.user}@{host}:{info.port}/{info.dbname}"


def _one_line(exc: Exception) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = lines[0] if lines else type(exc).__name__
    # libpq prefixes 'connection to server at "h" (1.2.3.4), port N failed: ' which repeats
    # what describe() already says.
    if " failed: " in first and first.startswith("connection to server"):
        first = first.split(" failed: ", 1)[1]
    return first


def pin(conn, side: str, session: Session, *, readonly: bool = False) -> None:
    """Set the run's session settings on a fresh connection (see the module docstring)."""
    if session.client_encoding:
        conn.set_client_encoding(session.client_encoding)
    cur = conn.cursor()
    settings = list(PINNED)
    if conn.server_version >= 140000:
        settings += PINNED_14
    # the isolation of what runs outside the transactions that name theirs (sizes read
    # in autocommit): a source that is a hot standby refuses serializable, which its
    # primary's configuration may make the default; the destination's work assumes
    # read committed, whatever its server's default
    if side == "source":
        settings.append(("default_transaction_isolation", "repeatable read"))
        settings.append(("row_security", "off"))
    else:
        settings.append(("default_transaction_isolation", "read committed"))
    if side == "source" or readonly:
        settings.append(("default_transaction_read_only", "on"))
    elif session.async_commit:
        settings.append(("synchronous_commit", "off"))
    set_all(cur, settings)
    conn.commit()


def set_all(cur, settings) -> None:
    """``SET`` each (name, value) in one round trip: names are our constants, values are
    passed as parameters."""
    cur.execute(" ".join(f"SET {name} = %s;" for name, _ in settings), [v for _, v in settings])


DURABLE_FUNCTION = "pg_logical_emit_message(boolean,text,text)"


def make_durable(conn, session: Session) -> None:
    """Return once every commit this run made on ``conn``'s server is as durable as that
    server's (role's, database's) own ``synchronous_commit`` makes a commit.  The commit
    must write WAL to flush it: a transaction id alone writes none, so one transactional
    logical-decoding message (prefix ``pgcopy``) does."""
    if not session.async_commit:
        return  # the commits were synchronous
    cur = conn.cursor()
    cur.execute(
        "SET LOCAL synchronous_commit TO DEFAULT; SELECT pg_logical_emit_message(true, 'pgcopy', %s)",
        (f"durable {session.run_id}",),
    )
    conn.commit()


def connect(
    dsn: str, side: str, session: Session | None = None, *, readonly: bool = False
) -> psycopg2.extensions.connection:
    """Open and pin a connection for ``side`` ('source' or 'destination')."""
    session = session or Session.new()
    parsed = parse(dsn)
    extra: dict[str, str] = {"application_name": session.app_name}
    if "connect_timeout" not in parsed and "PGCONNECT_TIMEOUT" not in os.environ:
        extra["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT
    conn = _open(dsn, side, extra)
    try:
        if not session.sessions_checked:
            refuse_shared_sessions(conn, lambda: _open(dsn, side, extra), side)
        pin(conn, side, session, readonly=readonly)
    except psycopg2.Error as exc:
        where = describe_conn(conn)
        conn.close()
        raise PgcopyError(f"cannot set up the {side} session ({where}): {_one_line(exc)}") from None
    except BaseException:
        conn.close()
        raise
    return conn


class CannotConnect(PgcopyError):
    """The server refused or could not be reached (not: a session that cannot be set up)."""


def _open(dsn: str, side: str, extra: dict):
    try:
        return psycopg2.connect(dsn, **extra)
    except psycopg2.Error as exc:
        raise CannotConnect(f"cannot connect to {side} {describe(dsn)}: {_one_line(exc)}") from None


# Seconds between the tries of a reconnection (about 8 s in all).  A session is renewed
# by closing it first, and on a server at max_connections (or a role or database at its
# CONNECTION LIMIT) another client may take the slot in between; libpq gives no SQLSTATE
# for a refused startup, and the server words it in its own language, so any failure to
# connect is tried again, only here.
RECONNECT_WAITS = (0.25, 0.5, 1.0, 2.0, 4.0)


def reconnect(open: Callable[[], object], stopping: Callable[[], bool] = lambda: False):
    """``open()`` (sessions, see :func:`connect`) for sessions that replace some just
    closed: tried again while a server refuses them, RECONNECT_WAITS apart, unless
    ``stopping()``; then its error."""
    for wait in RECONNECT_WAITS:
        try:
            return open()
        except CannotConnect:
            if stopping():
                raise
        time.sleep(wait)
    return open()


def _alone(conn, *statements: str):
    """``statements`` in autocommit, each its own transaction unless they open one (one
    round trip each); the first row of the last one that returns rows, if any."""
    conn.autocommit = True
    try:
        cur = conn.cursor()
        row = None
        for statement in statements:
            cur.execute(statement)
            if cur.description:
                row = cur.fetchone()
        return row
    finally:
        conn.autocommit = False


def _server_pid(conn) -> int:
    try:
        return _alone(conn, "SELECT pg_backend_pid()")[0]
    except psycopg2.errors.FeatureNotSupported:
        # before pin() the server's default isolation applies, and a hot standby refuses
        # to read under serializable (which its primary's configuration may make the
        # default): the same read with its isolation named, not first, because a pooler
        # in statement mode refuses a transaction block
        return _alone(conn, "BEGIN ISOLATION LEVEL READ COMMITTED", "SELECT pg_backend_pid()", "COMMIT")[0]


def refuse_shared_sessions(conn, open_another, side: str) -> None:
    """Refuse a pooler that passes server sessions between clients (transaction or
    statement pooling), before :func:`pin` sets anything: every ``SET`` would stay on the
    server session the pooler gives to its next client, so an application writing
    through the source's pooler would find its transactions read-only (measured with
    PgBouncer: "cannot execute INSERT in a read-only transaction" until the pool recycled
    that session), and other sessions would lose their timeouts and row security.

    A server reports its own pid at connection (libpq's PQbackendPID); a pooler or proxy
    reports one of its own.  Only then is the pooling probed: with a second client
    connection, statements in turn on both; in session pooling each client keeps one
    server session, any other pooling hands one client's to the other or moves a client
    between them.  A proxy that keeps a client on one server session once it has set
    something (RDS Proxy documents this "pinning") is probed as pgcopy will use it, after
    a ``SET`` of a name of pgcopy's own, which means nothing to a session it stays on."""
    if _server_pid(conn) == conn.get_backend_pid():
        return
    _alone(conn, "SET pgcopy.probe = on")
    other = open_another()
    try:
        seen = [(c is conn, _server_pid(c)) for c in (conn, other, conn, other, conn)]
    finally:
        other.close()
    mine = {pid for own, pid in seen if own}
    theirs = {pid for own, pid in seen if not own}
    if len(mine) > 1 or mine & theirs:
        raise UsageError(
            f"the {side} ({describe_conn(conn)}) is reached through a pooler that passes server "
            "sessions between clients (transaction or statement pooling): pgcopy's session "
            "settings would stay on them for the pooler's other clients. Connect to the "
            "server directly, or through a pool in session mode"
        )


def settled(dsn: str, conn) -> str:
    """The connection string for the run's other sessions to the server ``conn`` reached.

    Where libpq's default ``prefer`` tried SSL or GSSAPI encryption and ``conn`` shows that
    the server does without it, the others skip the attempt: the same outcome, without
    initializing OpenSSL and Kerberos in every worker (0.75 MB of RSS each, measured) or
    a refused request per connection.  An encrypted connection keeps ``prefer``; so does a
    list of hosts, whose sessions may reach another server."""
    params = conn.get_dsn_parameters()
    if any("," in (params.get(k) or "") for k in ("host", "hostaddr", "port")):
        return dsn
    skip = {}
    if params.get("sslmode") == "prefer" and not conn.info.ssl_in_use:
        skip["sslmode"] = "disable"
    if params.get("gssencmode") == "prefer" and not _gss_encrypted(conn):
        skip["gssencmode"] = "disable"
    return psycopg2.extensions.make_dsn(dsn, **skip) if skip else dsn


def _gss_encrypted(conn) -> bool:
    if conn.server_version < 120000:
        return False  # GSSAPI encryption came with PostgreSQL 12
    cur = conn.cursor()
    cur.execute("SELECT coalesce((SELECT encrypted FROM pg_stat_gssapi WHERE pid = pg_backend_pid()), false)")
    encrypted = cur.fetchone()[0]
    conn.rollback()
    return encrypted


class Renewing:
    """One session at a time for a long series of reads: replaced by a new one from
    ``open`` (the old one closed first: no extra connection slot) once about
    SESSION_RELATIONS relations have been opened on it."""

    def __init__(self, open: Callable[[], psycopg2.extensions.connection]):
        self.open, self.limit = open, session_relations()
        self.conn = open()
        self.opened = 0

    def using(self, relations: int) -> psycopg2.extensions.connection:
        """The session to open ``relations`` more relations on."""
        if self.opened and self.opened + relations > self.limit:
            self.conn.close()
            self.conn = reconnect(self.open)
            self.opened = 0
        self.opened += relations
        return self.conn


def connect_asking(
    dsn: str, side: str, session: Session | None = None, *, readonly: bool = False
) -> tuple[psycopg2.extensions.connection, str]:
    """:func:`connect`, but when the server wants a password that libpq does not have and
    stdin is a terminal, ask once (not echoed), as psql does; returns the connection and
    the connection string that now carries the password, for the run's other sessions."""
    try:
        return connect(dsn, side, session, readonly=readonly), dsn
    except PgcopyError as exc:
        if "no password supplied" not in str(exc) or not sys.stdin.isatty():
            raise
    password = getpass.getpass(f"Password for {side} {describe(dsn)}: ")
    dsn = psycopg2.extensions.make_dsn(dsn, password=password)
    return connect(dsn, side, session, readonly=readonly), dsn


def error_line(exc: Exception) -> str:
    """The first line of a database error, for reports."""
    return _one_line(exc)
