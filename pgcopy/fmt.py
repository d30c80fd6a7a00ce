"""Formatting numbers for humans."""

from __future__ import annotations


def size(nbytes: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(nbytes) < 1024 or unit == "TB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


def count(n: float) -> str:
    """Compact count: 950, 12.3k, 1.2M."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.1f}{suffix}"
    return f"{n:.0f}"


def estimate(reltuples: float) -> str:
    """pg_class.reltuples shown as an estimate; -1 means never analyzed."""
    return "unknown" if reltuples < 0 else "~" + count(reltuples)
