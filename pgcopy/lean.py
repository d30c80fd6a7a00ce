"""A worker imports only what a worker uses.

``dataclasses`` imports ``inspect``, and with it ``ast``, ``dis`` and ``tokenize`` (1.2 MB
of RSS in every worker, measured), for one call: the signature it writes into a dataclass
that has no docstring.  Every dataclass a worker defines has one (tests/test_cli.py holds
them to it), so a child starts with a stand-in that imports the real module on first use.
"""

from __future__ import annotations

import sys
import types


def defer_inspect() -> None:
    """Put a stand-in for ``inspect`` in ``sys.modules`` until something uses it."""
    if "inspect" in sys.modules:
        return
    stand_in = types.ModuleType("inspect")

    def __getattr__(name: str):
        # first use: the real module, for this caller and for every later import
        if sys.modules.get("inspect") is stand_in:
            sys.modules.pop("inspect", None)
        import inspect

        return getattr(inspect, name)

    stand_in.__getattr__ = __getattr__  # PEP 562: asked for names the module lacks
    sys.modules["inspect"] = stand_in
