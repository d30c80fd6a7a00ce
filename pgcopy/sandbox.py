"""Throwaway PostgreSQL clusters for tests, the demo and the benchmarks.

A cluster lives in a private temp dir, listens on a free port on 127.0.0.1 only and is
always stopped and removed on exit.  PostgreSQL refuses to run as root, so when we are
root the server binaries run through ``runuser`` as an unprivileged account.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pgcopy.errors import PgcopyError

SUPERUSER = "postgres"
# Tests and the demo trade durability for speed; benchmarks pass fsync=on explicitly.
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def bindir() -> Path:
    """Where initdb/pg_ctl live: $PGCOPY_PG_BINDIR, `pg_config --bindir`, or Debian's layout."""
    env = os.environ.get("PGCOPY_PG_BINDIR")
    candidates = [Path(env)] if env else []
    try:
        out = subprocess.run(["pg_config", "--bindir"], check=True, capture_output=True, text=True)
        candidates.append(Path(out.stdout.strip()))
    except (OSError, subprocess.CalledProcessError):
        pass
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    candidates += reversed(debian)
    for path in candidates:
        if (path / "initdb").exists() and (path / "pg_ctl").exists():
            return path
    raise PgcopyError(
        "cannot find PostgreSQL server binaries (initdb, pg_ctl): install the postgresql "
        "package or set PGCOPY_PG_BINDIR"
    )


def _run_as() -> str | None:
    """The account to run the server as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("PGCOPY_SANDBOX_USER", "postgres")
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", name], check=True)
    return name


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Cluster:
    """A running private cluster; ``dsn()`` gives a key=value string for libpq."""

    root: Path
    port: int
    bindir: Path
    owner: str | None
    settings: dict[str, str] = field(default_factory=dict)
    running: bool = False

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def logfile(self) -> Path:
        return self.root / "server.log"

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER, password: str | None = None) -> str:
        parts = [f"host=127.0.0.1 port={self.port} dbname={dbname} user={user}"]
        if password is not None:
            parts.append(f"password={password}")
        return " ".join(parts)

    def uri(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def _cmd(self, *args: str) -> list[str]:
        prefix = ["runuser", "-u", self.owner, "--"] if self.owner else []
        return prefix + [str(self.bindir / args[0]), *args[1:]]

    def _check(self, *args: str) -> None:
        proc = subprocess.run(self._cmd(*args), capture_output=True, text=True)
        if proc.returncode != 0:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise PgcopyError(f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip()} {log[-2000:]}")

    def init(self) -> None:
        self._check(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            SUPERUSER,
            "-N",
            "-E",
            "UTF8",
            "--locale=C",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        )
        # The superuser connects over TCP without a password; every other role needs one,
        # so tests can exercise authentication failures.
        hba = self.datadir / "pg_hba.conf"
        hba.write_text(
            "local all all trust\n"
            "local replication all trust\n"
            f"host all {SUPERUSER} 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "max_connections": "100",
            "shared_buffers": "128MB",
            **{k: f"'{v}'" for k, v in self.settings.items()},
        }
        with open(self.datadir / "postgresql.auto.conf", "a") as fh:
            fh.writelines(f"{k} = {v}\n" for k, v in conf.items())

    def start(self) -> None:
        self._check("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", "60", "start")
        self.running = True

    def stop(self) -> None:
        if self.running:
            subprocess.run(
                self._cmd("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop"),
                capture_output=True,
            )
            self.running = False

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def keep(self) -> None:
        """Leave the cluster running after this process exits (pgcopy demo --keep)."""
        atexit.unregister(self.destroy)

    def clone(self, *, standby: bool = False) -> Cluster:
        """A physical copy made with pg_basebackup (same system identifier and database
        oids), started on its own port: an independent server, or a standby of this one."""
        root = Path(tempfile.mkdtemp(prefix="pgcopy-clone-"))
        if self.owner:
            pw = pwd.getpwnam(self.owner)
            os.chown(root, pw.pw_uid, pw.pw_gid)
        twin = Cluster(root, free_port(), self.bindir, self.owner, dict(self.settings))
        atexit.register(twin.destroy)
        args = ["pg_basebackup", "-D", str(twin.datadir), "-h", str(self.root), "-p", str(self.port)]
        twin._check(*args, "-U", SUPERUSER, "-X", "stream", "-c", "fast", *(["-R"] if standby else []))
        with open(twin.datadir / "postgresql.auto.conf", "a") as fh:
            fh.write(f"port = {twin.port}\nunix_socket_directories = '{root}'\n")
        twin.start()
        return twin


def start_cluster(
    settings: Mapping[str, str] | None = None, attempts: int = 3, bins: Path | None = None
) -> Cluster:
    """Create and start a cluster (with the server binaries in ``bins``, else those
    :func:`bindir` finds); it is stopped and removed at interpreter exit at the latest."""
    owner = _run_as()
    bins = bins or bindir()
    last: Exception | None = None
    for _ in range(attempts):
        root = Path(tempfile.mkdtemp(prefix="pgcopy-sandbox-"))
        if owner:
            pw = pwd.getpwnam(owner)
            os.chown(root, pw.pw_uid, pw.pw_gid)
        cluster = Cluster(root, free_port(), bins, owner, dict(settings or FAST_SETTINGS))
        atexit.register(cluster.destroy)
        try:
            cluster.init()
            cluster.start()
            return cluster
        except PgcopyError as exc:  # most likely the port was taken meanwhile
            last = exc
            cluster.destroy()
            time.sleep(0.2)
    raise PgcopyError(f"cannot start a throwaway cluster: {last}")


@contextmanager
def throwaway_cluster(settings: Mapping[str, str] | None = None) -> Iterator[Cluster]:
    cluster = start_cluster(settings)
    try:
        yield cluster
    finally:
        cluster.destroy()
