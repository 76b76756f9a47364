"""The durable rollback journal: the old value of every item, fsynced before it changes.

Lives under ``<root>/var/lib/appliance/sysconfig/`` (not /run, so it survives a reboot or a
crash). ``journal.jsonl`` is append-only, one JSON record per line, each flushed and fsynced
before the change it describes; a torn last line (a crash mid-append) is ignored. Rollback
undoes the *earliest* record for each target, in reverse order, so repeated or interrupted
applies still restore the state from before the first one; then the journal moves to
``history/``. A lock file serialises apply, persist and rollback.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["Journal", "JournalBusy", "JOURNAL_DIR"]

log = logging.getLogger(__name__)

#: journal directory, relative to the root
JOURNAL_DIR = "var/lib/appliance/sysconfig"


class JournalBusy(RuntimeError):
    """Another apply, persist or rollback holds the journal's lock."""


class Journal:
    """Append-only undo records for one root."""

    def __init__(self, root: Path = Path("/"), directory: Path | None = None) -> None:
        self.root = Path(root)
        self.directory = Path(directory) if directory is not None else self.root / JOURNAL_DIR
        self.path = self.directory / "journal.jsonl"

    @contextlib.contextmanager
    def locked(self) -> Iterator[Journal]:
        """Hold the journal's exclusive lock (one apply/persist/rollback at a time)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise JournalBusy(
                    f"another sysconfig apply/persist/rollback holds {self.directory / 'lock'}"
                ) from None
            yield self
        finally:
            os.close(fd)

    def append(self, record: dict[str, Any]) -> None:
        """Append one record and make it durable (file and, when new, directory fsync)."""
        record = {"time": time.time(), **record}
        new = not self.path.exists()
        line = json.dumps(record, sort_keys=True) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def begin(self, action: str, profile: str, boot_id: str | None) -> None:
        self.append({"type": "begin", "action": action, "profile": profile, "boot_id": boot_id})

    def undo(self, key: str, undo: dict[str, Any]) -> None:
        """Record how to undo the change about to be made to ``key``."""
        self.append({"type": "undo", "key": key, "undo": undo})

    def records(self) -> list[dict[str, Any]]:
        """All complete records (a torn final line from a crash is skipped with a warning)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        out = []
        lines = text.split("\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    log.warning("ignoring a torn last record in %s (interrupted write)", self.path)
                else:
                    raise RuntimeError(
                        f"{self.path} line {i + 1} is corrupt: {line[:80]!r}"
                    ) from None
        return out

    def undo_plan(self) -> list[dict[str, Any]]:
        """The undo records to execute: earliest per target, latest change undone first."""
        first: dict[str, dict[str, Any]] = {}
        for rec in self.records():
            if rec.get("type") == "undo":
                target = _target(rec["undo"])
                first.setdefault(target, rec)
        return list(reversed(list(first.values())))

    def archive(self) -> Path | None:
        """Move the journal to ``history/`` after a complete rollback."""
        if not self.path.exists():
            return None
        history = self.directory / "history"
        history.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = history / f"journal-{stamp}-{os.getpid()}.jsonl"
        os.replace(self.path, dest)
        dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return dest


def _target(undo: dict[str, Any]) -> str:
    """What an undo record restores; two records with one target keep only the earliest."""
    if undo["op"] == "run":
        return "run:" + " ".join(undo["argv"])
    return f"{undo['op']}:{undo['path']}"
