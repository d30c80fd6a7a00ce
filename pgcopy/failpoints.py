"""Named crash points for the recovery tests; inert unless ``PGCOPY_FAILPOINT`` is set.

``PGCOPY_FAILPOINT=name[:action][@n]`` arms one point, to fire at its n-th hit (the
first by default).  Actions:

- ``kill`` (default): SIGKILL the coordinator alone (from a worker: its parent);
- ``killgroup``: SIGKILL the whole process group (coordinator and workers);
- ``killself``: SIGKILL the process the point is in alone (a worker, the planning process);
- ``raise``: raise :class:`FailpointError` where the point is;
- ``sigterm``: send SIGTERM to the coordinator (a stop at exactly that point);
- ``sigint``: send SIGINT to the coordinator (a Ctrl-C at exactly that point).

A point fires once per process.  Points, in run order: ``during-planning`` (the planning
process has read both catalogs and not yet sent the plan), ``after-journal`` (journal written, FKs not yet dropped),
``after-drop``, ``mid-copy`` (a worker, after the first chunk of a table), ``after-commit``
(a worker, right after a table's commit), ``after-add`` (FKs added NOT VALID, none
validated), ``during-validate`` (a VALIDATE, or an ADD that validates, executed and not committed), ``during-sequences``
(one sequence set), ``during-matviews`` (one REFRESH executed, not committed).
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "during-planning",
    "after-journal",
    "after-drop",
    "mid-copy",
    "after-commit",
    "after-add",
    "during-validate",
    "during-sequences",
    "during-matviews",
)
ACTIONS = ("kill", "killgroup", "raise")  # the crash matrix; sigterm is a stop, tested apart


class FailpointError(Exception):
    pass


def hit(name: str, *, in_worker: bool = False) -> None:
    """Fire the armed action if ``name`` is the armed point."""
    armed = os.environ.get("PGCOPY_FAILPOINT")
    if not armed:
        return
    armed, _, nth = armed.partition("@")
    point, _, action = armed.partition(":")
    if point != name:
        return
    if nth and int(nth) > 1:  # counted down where the arming is: the environment
        os.environ["PGCOPY_FAILPOINT"] = f"{armed}@{int(nth) - 1}"
        return
    action = action or "kill"
    os.environ.pop("PGCOPY_FAILPOINT", None)  # fires once per process (and its later children)
    if action == "raise":
        raise FailpointError(f"failpoint {name}")
    if action == "killself":
        os.kill(os.getpid(), signal.SIGKILL)
    coordinator = os.getppid() if in_worker else os.getpid()
    if action in ("sigterm", "sigint"):
        os.kill(coordinator, signal.SIGTERM if action == "sigterm" else signal.SIGINT)
        return
    if action == "killgroup":
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(coordinator, signal.SIGKILL)
