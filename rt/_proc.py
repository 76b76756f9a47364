"""Process identity that survives pid reuse: (pid, start time in clock ticks since boot)."""

from __future__ import annotations

import os

__all__ = ["process_start_ticks", "process_alive"]


def process_start_ticks(pid: int) -> int:
    """Start time of ``pid`` (field 22 of /proc/PID/stat), or 0 when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    rest = stat[stat.rfind(b")") + 2 :].split()
    return int(rest[19])


def process_alive(pid: int, start_ticks: int = 0) -> bool:
    """True when ``pid`` runs and is not a zombie; with ``start_ticks``, also the same process
    (not a later one that reused the pid)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except PermissionError:  # exists but hidden (hidepid): assume alive
        return True
    rest = stat[stat.rfind(b")") + 2 :].split()
    if rest[0] in (b"Z", b"X"):
        return False
    return not start_ticks or int(rest[19]) == start_ticks


def current_identity() -> tuple[int, int]:
    pid = os.getpid()
    return pid, process_start_ticks(pid)
