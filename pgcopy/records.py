"""Pickling by position for the slotted dataclasses that cross a worker's line.

For a slotted dataclass, ``dataclasses`` pickles each object through ``fields(self)``, a
tuple built from a generator: resized rather than taken from CPython's tuple free list, and
put on that list when freed, until 2,000 of each size wait there.  Thousands of tasks and
results filled three of those lists in every worker and in the coordinator (0.6 MB each,
measured with ``sys._debugmallocstats`` at 10,000 tables).  An object pickled as its class
and its values, read with one ``attrgetter``, builds no such tuple.
"""

from __future__ import annotations

from dataclasses import fields
from operator import attrgetter


def by_position(cls):
    """Class decorator (put above ``@dataclass``): pickle ``cls`` as ``cls(*values)``."""
    names = [f.name for f in fields(cls) if f.init]
    if len(names) != len(fields(cls)):
        raise TypeError(f"{cls.__name__}: every field must be an __init__ argument")
    get = attrgetter(*names)
    if len(names) == 1:

        def __reduce__(self):
            return (cls, (get(self),))
    else:

        def __reduce__(self):
            return (cls, get(self))

    cls.__reduce__ = __reduce__
    return cls
