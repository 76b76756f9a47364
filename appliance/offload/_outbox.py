"""The instrument's durable outbox for a lab ledger it cannot reach.

While the PostgreSQL ledger is unreachable, :meth:`Ledger.submit` writes the submission here (a
small SQLite WAL file on the instrument's disk, ``<data_root>/.offload/outbox-<instrument>.sqlite``) and
returns at once, so nothing on the instrument waits on the database. Each entry keeps the
job's idempotency key; :meth:`Ledger.handover` submits the pending entries, oldest first,
when the server is back, and marks each delivered with the lab ledger's job id. A handover cut
short (a crash between the lab's commit and the outbox's) submits the entry again under the
same key, which returns the job already there: every submission reaches the lab exactly once.

An entry not yet delivered stands for its job with a negative id (``-entry``); a later entry may
depend on it (``depends_on`` negative), resolved to the lab's id at handover.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from appliance._sqlite import connect_wal, migrate, transaction

__all__ = ["Outbox"]

_MIGRATIONS = (
    """CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL UNIQUE,
        submission TEXT NOT NULL,
        created_at REAL NOT NULL,
        job_id INTEGER,
        delivered_at REAL);
    CREATE INDEX outbox_pending ON outbox(job_id, id)""",
)


class Outbox:
    """Submissions kept for the lab ledger (one instrument's file; several processes may share it)."""

    def __init__(self, path: str | Path, *, error: type[Exception]) -> None:
        self.path = Path(path)
        self._error = error
        self._lock = threading.RLock()
        self._conn = connect_wal(self.path, what="the ledger outbox", error=error, synchronous="FULL")
        try:
            migrate(self._conn, self._lock, _MIGRATIONS, what=f"the ledger outbox {self.path}", error=error)
        except BaseException:
            self._conn.close()
            raise

    def _tx(self):
        return transaction(self._conn, self._lock, what=f"ledger outbox {self.path}", error=self._error)

    def put(self, key: str, submission: dict[str, Any], now: float) -> tuple[dict, bool]:
        """Keep a submission (``created`` False: its key is already here). Returns the entry."""
        with self._tx() as c:
            row = c.execute("SELECT * FROM outbox WHERE key = ?", (key,)).fetchone()
            if row is not None:
                return self._entry(row), False
            cur = c.execute("INSERT INTO outbox(key, submission, created_at) VALUES (?,?,?)",
                            (key, json.dumps(submission, sort_keys=True), now))
            return self._entry(c.execute("SELECT * FROM outbox WHERE id = ?", (cur.lastrowid,)).fetchone()), True

    @staticmethod
    def _entry(row) -> dict:
        return {"id": row["id"], "key": row["key"], "submission": json.loads(row["submission"]),
                "created_at": row["created_at"], "job_id": row["job_id"], "delivered_at": row["delivered_at"]}

    def get(self, entry_id: int) -> dict | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM outbox WHERE id = ?", (entry_id,)).fetchone()
        return self._entry(row) if row else None

    def by_key(self, key: str) -> dict | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM outbox WHERE key = ?", (key,)).fetchone()
        return self._entry(row) if row else None

    def pending(self, limit: int = 1000) -> list[dict]:
        """Entries not yet delivered, oldest first."""
        with self._lock:
            rows = self._conn.execute("SELECT * FROM outbox WHERE job_id IS NULL ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [self._entry(r) for r in rows]

    def count_pending(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM outbox WHERE job_id IS NULL").fetchone()[0]

    def update(self, entry_id: int, **changes: Any) -> None:
        """Change fields of a pending entry's submission (the output folder set after submit)."""
        with self._tx() as c:
            row = c.execute("SELECT submission FROM outbox WHERE id = ? AND job_id IS NULL", (entry_id,)).fetchone()
            if row is None:
                return
            sub = json.loads(row["submission"])
            sub.update(changes)
            c.execute("UPDATE outbox SET submission = ? WHERE id = ?", (json.dumps(sub, sort_keys=True), entry_id))

    def delivered(self, entry_id: int, job_id: int, now: float) -> None:
        with self._tx() as c:
            c.execute("UPDATE outbox SET job_id = ?, delivered_at = ? WHERE id = ? AND job_id IS NULL",
                      (job_id, now, entry_id))

    def close(self) -> None:
        with self._lock:
            self._conn.close()
