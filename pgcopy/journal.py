"""The durable record of dropped foreign keys, written and fsynced *before* any drop.

One file per destination database.  Its name comes from the database's identity (system
identifier and oid) *and* the server the connection reached (host, port, name): two
physical clones of one production database share the first two, never the last.

The journal keeps each FK's original definition, validity and comment until that FK
exists on the destination in exactly that state, and names the run that wrote it (host,
pid, run id), so a journal whose run still holds the destination's run lock is never
mistaken for an interrupted one.  Like ssh with its keys, pgcopy refuses a state
directory or journal that other users can write: the journal's contents become DDL.
"""

from __future__ import annotations

import json
import os
import stat
import time
import zlib
from pathlib import Path

from pgcopy.catalog import ForeignKey
from pgcopy.errors import EXIT_USAGE, PgcopyError

JOURNAL_VERSION = 2


class JournalError(PgcopyError):
    exit_code = EXIT_USAGE  # raised before anything is changed


def _check_private(path: Path, what: str) -> None:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise JournalError(f"{what} {path} is a symbolic link; refusing to use it")
    if st.st_uid != os.geteuid():
        raise JournalError(f"{what} {path} belongs to uid {st.st_uid}, not to this user; refusing to use it")
    if st.st_mode & 0o022:
        raise JournalError(
            f"{what} {path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}); "
            f"refusing to use it: chmod go-w {path}"
        )


class Journal:
    def __init__(self, state_dir: Path, identity: tuple[str, int, str], server: str):
        sysid, dboid, _name = identity
        where = f"{zlib.crc32(server.encode()):08x}"  # hashlib would load OpenSSL: 3 MB
        self.dir = Path(state_dir)
        self.path = self.dir / f"fkeys-{sysid}-{dboid}-{where}.json"
        if not self.path.exists():
            self.path = self._named_before(server) or self.path

    def _named_before(self, server: str) -> Path | None:
        """The journal an earlier pgcopy left under its former name (a sha256 of the
        server's description), if any: an interrupted run is finished across an upgrade."""
        prefix = self.path.name.rsplit("-", 1)[0]
        if not any(self.dir.glob(prefix + "-*.json")):
            return None
        import hashlib  # only now: it loads OpenSSL

        old = self.dir / f"{prefix}-{hashlib.sha256(server.encode()).hexdigest()[:12]}.json"
        return old if old.exists() else None

    def check(self) -> None:
        """Create the state directory (0700) or make sure nobody else can write it; early,
        so an unsafe one is refused before anything changes."""
        self._ensure_dir()
        if self.path.exists():
            _check_private(self.path, "journal")

    def siblings(self) -> list[Path]:
        """Journals of a database with the same identity reached under another name."""
        prefix = self.path.name.rsplit("-", 1)[0]
        return sorted(p for p in self.dir.glob(prefix + "-*.json") if p != self.path)

    def _ensure_dir(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _check_private(self.dir, "state directory")

    def exists(self) -> bool:
        return self.path.exists()

    def write(self, fkeys: list[ForeignKey], destination: str, owner: str) -> None:
        """Atomically replace the journal: unique temp file (0600), fsync, rename, fsync dir."""
        self._ensure_dir()
        head = {
            "version": JOURNAL_VERSION,
            "destination": destination,
            "owner": owner,
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        # mkstemp's contract (new, 0600) without the tempfile module, which the coordinator
        # would import only for this (with random, shutil, bz2, lzma: 0.8 MB of RSS)
        tmp = self.dir / f".fkeys-{os.getpid()}-{os.urandom(6).hex()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                # one JSON document, written an FK at a time: json.dumps of the whole body
                # held every FK's dict and the text at once (7 MB of the coordinator's
                # RSS at 10,000 FKs, kept through the load); each dumps call is still C
                fh.write(json.dumps(head)[:-1] + ', "fkeys": [')
                for i, fk in enumerate(fkeys):
                    fh.write((", " if i else "") + json.dumps(fk.as_dict()))
                fh.write("]}")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        dirfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dirfd)  # make the rename itself durable
        finally:
            os.close(dirfd)

    def _load(self) -> dict:
        _check_private(self.dir, "state directory")
        _check_private(self.path, "journal")
        try:
            with open(self.path) as fh:
                body = json.load(fh)
            if not isinstance(body, dict) or not isinstance(body.get("fkeys"), list):
                raise ValueError("no list of foreign keys")
            body["fkeys"] = [ForeignKey.from_dict(d) for d in body["fkeys"]]
        except (ValueError, TypeError, KeyError) as exc:
            raise JournalError(f"journal {self.path} is damaged ({exc}); refusing to replay it") from None
        return body

    def read(self) -> list[ForeignKey]:
        return self._load()["fkeys"]

    def owner(self) -> str:
        return str(self._load().get("owner") or "an unknown run")

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        if self.dir.exists():
            self._fsync_dir()
