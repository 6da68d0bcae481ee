"""How much memory a run may take: the budget every large allocation is checked against first.

A tensor whose size comes from a model file or a fed shape (a hostile file can declare a dimension
of 2**31) is never allocated on faith: on Linux an allocation larger than memory may succeed and
then be killed by the kernel when it is touched, which no ``try`` can catch. So ``Session.run``
estimates a run's peak before it starts (``engine/memory.py``), and ops whose output size is only
known at run time (ConstantOfShape) check it here before allocating.

The budget is ``ZEROSKIP_MEMORY_LIMIT`` when set (bytes, or with a K, M, G or T suffix, binary
units), else the memory the system reports as available now (Linux: ``MemAvailable`` in
``/proc/meminfo``), else unlimited.
"""

from __future__ import annotations

import os

from .errors import ZeroskipError

ENV = "ZEROSKIP_MEMORY_LIMIT"

SMALL = 64 << 20
"""Allocations and run peaks under 64 MiB are never checked (reading the budget costs µs)."""

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def memory_budget() -> int | None:
    """Bytes a run may allocate now (None: no limit is known)."""
    text = os.environ.get(ENV, "").strip()
    if text:
        return parse_size(text, ENV)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def parse_size(text: str, what: str) -> int:
    """``"1536"``, ``"512M"``, ``"2G"`` (binary units, optional ``B`` or ``iB``) -> bytes."""
    body = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = body[-1:] if body[-1:] in ("K", "M", "G", "T") else ""
    number = body[:len(body) - len(unit)]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ZeroskipError(f"{what}={text!r} is not a size: give bytes, or a number with K, M, "
                            f"G or T (binary units), e.g. 512M")
    return int(value * _UNITS[unit])


def show_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} TiB"


def over_budget(nbytes: int) -> int | None:
    """The budget ``nbytes`` exceeds, or None when it fits (or is small, or no limit is known)."""
    if nbytes < SMALL:
        return None
    budget = memory_budget()
    return budget if budget is not None and nbytes > budget else None


__all__ = ["ENV", "memory_budget", "over_budget", "parse_size", "show_bytes"]
