"""The durable record of dropped foreign keys, written and fsynced *before* any drop.

One file per destination database, named after its identity (system identifier and
database oid), so a later `copy` or `recover` to the same database finds it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pgcopy.catalog import ForeignKey


class Journal:
    def __init__(self, state_dir: Path, identity: tuple[str, int, str]):
        sysid, dboid, _name = identity
        self.path = Path(state_dir) / f"fkeys-{sysid}-{dboid}.json"

    def exists(self) -> bool:
        return self.path.exists()

    def write(self, fkeys: list[ForeignKey], destination: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "destination": destination,
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "pid": os.getpid(),
            "fkeys": [fk.as_dict() for fk in fkeys],
        }
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump(body, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        dirfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)  # make the rename itself durable
        finally:
            os.close(dirfd)

    def read(self) -> list[ForeignKey]:
        with open(self.path) as fh:
            return [ForeignKey.from_dict(d) for d in json.load(fh)["fkeys"]]

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
