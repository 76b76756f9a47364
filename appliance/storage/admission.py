"""Admission throttle: refuse a new run while the hot tier is past the critical watermark.

The running writer pauses on a full disk (ENOSPC); this check keeps a new run from starting
long before that, while the tierer and ``appliance storage gc`` free space.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["StorageThrottled", "admission_check", "hot_free_fraction"]


class StorageThrottled(RuntimeError):
    """A new run is refused: the hot tier is below the critical free-space watermark."""


def hot_free_fraction(root: str | Path) -> tuple[float, int, int]:
    """(free fraction, free bytes, total bytes) of the file system holding ``root``."""
    p = Path(root).resolve()
    while not p.exists():
        p = p.parent
    st = os.statvfs(p)
    free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    return (free / total if total else 1.0), free, total


def admission_check(config) -> None:
    """Raise :class:`StorageThrottled` when ``config.storage`` is enabled and the hot tier
    (``output.root``) has less free space than the critical watermark; else return None."""
    st = getattr(config, "storage", None)
    if st is None or not st.enabled:
        return
    frac, free, total = hot_free_fraction(config.output.root)
    critical = st.policy.critical
    if frac < critical:
        raise StorageThrottled(
            f"hot tier {Path(config.output.root).resolve()} is {frac:.1%} free "
            f"({free / 2**30:.2f} GiB of {total / 2**30:.2f} GiB), below the critical watermark "
            f"{critical:.0%}: new runs are refused until space is freed. Run `appliance storage gc` "
            f"(copies, then evicts data with verified copies), see `appliance storage status`, or "
            f"add warm/cold capacity (runbook: hot_tier_critical)"
        )
