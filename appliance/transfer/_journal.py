"""The transfer journal: one SQLite file (WAL) that records every transfer, file and part.

Kept in its own file (default ``<data_root>/.offload/transfers.sqlite``) rather than in the
job ledger, so the ledger's schema (SQLite or PostgreSQL, owned by the offload package) does not
change: a transfer row names its job by ``job_id`` and the ledger stays the record of the job.

Tables: ``transfers`` (one per direction, destination and subject: bytes, egress bytes,
duration, verification, attempts, state), ``files`` (per file: state, the verified object's
size, CRC32C and ETag) and ``parts`` (per multipart part or per local chunk: offset, size, the
store's ETag, CRC32C, the attempt that sent it). A part is written here only after the store
acknowledged it, so a killed transfer resumes from exactly the parts recorded.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from appliance._sqlite import connect_wal, migrate, transaction
from appliance.transfer.errors import TransferError

_WHAT = "the transfer journal"
JOURNAL_FILE = "transfers.sqlite"
#: what ``appliance jobs show`` and the metrics show of a transfer row
SHOWN = ("direction", "destination", "subject", "state", "files", "bytes_total", "bytes_sent", "bytes_reread",
         "egress_bytes", "duration_s", "verification", "attempts", "error", "updated_at")


def default_journal_path(data_root: str | Path) -> Path:
    """The transfer journal of a data root: ``<data_root>/.offload/transfers.sqlite``."""
    return Path(data_root) / ".offload" / JOURNAL_FILE


def _read_only(path: Path) -> sqlite3.Connection | None:
    """A read-only connection to an existing journal (never creates one, never migrates), or
    None when there is no journal file: nothing has been transferred from this data root."""
    if not path.is_file():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        conn.row_factory = sqlite3.Row
        conn.execute("SELECT 1 FROM transfers LIMIT 1")
    except sqlite3.Error as exc:
        raise TransferError(f"cannot read {_WHAT} {path}: {exc}; check its permissions, or move it aside "
                            "if it is not a transfer journal") from None
    return conn


def read_transfers(path: str | Path, *, job_id: int | None = None, limit: int = 100) -> list[dict]:
    """A job's transfers (or every transfer), newest first, read-only: ``[]`` when the journal
    does not exist. Each row has the :data:`SHOWN` fields."""
    conn = _read_only(Path(path))
    if conn is None:
        return []
    try:
        sql, args = f"SELECT {', '.join(SHOWN)} FROM transfers", ()
        if job_id is not None:
            sql, args = sql + " WHERE job_id = ?", (job_id,)
        return [dict(r) for r in conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))]
    finally:
        conn.close()


def read_totals(path: str | Path) -> list[dict]:
    """Per (direction, state): transfers, attempts, bytes sent, re-read and egress, over the
    whole journal (one aggregate query, read-only; ``[]`` when there is no journal): the
    figures of the transfer metrics."""
    conn = _read_only(Path(path))
    if conn is None:
        return []
    try:
        return [dict(r) for r in conn.execute(
            "SELECT direction, state, COUNT(*) AS transfers, SUM(attempts) AS attempts, SUM(bytes_sent) AS bytes_sent, "
            "SUM(bytes_reread) AS bytes_reread, SUM(egress_bytes) AS egress_bytes, SUM(duration_s) AS duration_s "
            "FROM transfers GROUP BY direction, state ORDER BY direction, state")]
    finally:
        conn.close()

_M1 = """
CREATE TABLE transfers (
  id INTEGER PRIMARY KEY,
  key TEXT NOT NULL UNIQUE,
  direction TEXT NOT NULL,
  destination TEXT NOT NULL,
  subject TEXT NOT NULL,
  job_id INTEGER,
  state TEXT NOT NULL,
  files INTEGER NOT NULL DEFAULT 0,
  bytes_total INTEGER NOT NULL DEFAULT 0,
  bytes_sent INTEGER NOT NULL DEFAULT 0,
  bytes_reread INTEGER NOT NULL DEFAULT 0,
  egress_bytes INTEGER NOT NULL DEFAULT 0,
  attempts INTEGER NOT NULL DEFAULT 0,
  duration_s REAL NOT NULL DEFAULT 0,
  verification TEXT NOT NULL DEFAULT '',
  error TEXT,
  created_at REAL NOT NULL,
  updated_at REAL NOT NULL,
  finished_at REAL
);
CREATE TABLE files (
  transfer_id INTEGER NOT NULL REFERENCES transfers(id) ON DELETE CASCADE,
  rel TEXT NOT NULL,
  size INTEGER NOT NULL,
  crc32c TEXT NOT NULL,
  state TEXT NOT NULL,
  upload_id TEXT,
  etag TEXT,
  mtime_ns INTEGER,
  attempts INTEGER NOT NULL DEFAULT 0,
  error TEXT,
  PRIMARY KEY (transfer_id, rel)
);
CREATE TABLE parts (
  transfer_id INTEGER NOT NULL,
  rel TEXT NOT NULL,
  upload_id TEXT NOT NULL,
  number INTEGER NOT NULL,
  offset INTEGER NOT NULL,
  size INTEGER NOT NULL,
  etag TEXT NOT NULL,
  crc32c TEXT NOT NULL,
  attempt INTEGER NOT NULL,
  PRIMARY KEY (transfer_id, rel, upload_id, number),
  FOREIGN KEY (transfer_id, rel) REFERENCES files(transfer_id, rel) ON DELETE CASCADE
)
"""


@dataclass(frozen=True)
class PartRow:
    number: int
    offset: int
    size: int
    etag: str
    crc32c: str
    attempt: int


class Journal:
    """The journal file; every method is one short transaction (safe across processes)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._conn = connect_wal(self.path, what=_WHAT, error=TransferError, synchronous="FULL")
        try:
            migrate(self._conn, self._lock, [_M1], what=_WHAT, error=TransferError)
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _tx(self):
        return transaction(self._conn, self._lock, what=f"{_WHAT} {self.path}", error=TransferError)

    def _read(self, sql: str, args: tuple = ()) -> list:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    # -- transfers -------------------------------------------------------------------------
    def begin(self, key: str, direction: str, destination: str, subject: str, job_id: int | None,
              files: list[tuple[str, int, str]]) -> int:
        """The transfer row for ``key`` (created if new), one more attempt counted, its file
        list brought up to date (a file whose size or checksum changed starts over)."""
        now = time.time()
        with self._tx() as c:
            row = c.execute("SELECT id FROM transfers WHERE key = ?", (key,)).fetchone()
            if row is None:
                tid = c.execute(
                    "INSERT INTO transfers (key, direction, destination, subject, job_id, state, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, 'running', ?, ?)", (key, direction, destination, subject, job_id, now, now)).lastrowid
            else:
                tid = row[0]
            c.execute("UPDATE transfers SET state = 'running', attempts = attempts + 1, error = NULL, updated_at = ?, "
                      "files = ?, bytes_total = ?, job_id = COALESCE(?, job_id) WHERE id = ?",
                      (now, len(files), sum(f[1] for f in files), job_id, tid))
            for rel, size, crc in files:
                old = c.execute("SELECT size, crc32c FROM files WHERE transfer_id = ? AND rel = ?", (tid, rel)).fetchone()
                if old is not None and (old[0], old[1]) == (size, crc):
                    continue
                c.execute("DELETE FROM files WHERE transfer_id = ? AND rel = ?", (tid, rel))
                c.execute("INSERT INTO files (transfer_id, rel, size, crc32c, state) VALUES (?, ?, ?, ?, 'pending')",
                          (tid, rel, size, crc))
        return tid

    def add_bytes(self, tid: int, *, sent: int = 0, reread: int = 0, egress: int = 0, duration_s: float = 0.0) -> None:
        with self._tx() as c:
            c.execute("UPDATE transfers SET bytes_sent = bytes_sent + ?, bytes_reread = bytes_reread + ?, "
                      "egress_bytes = egress_bytes + ?, duration_s = duration_s + ?, updated_at = ? WHERE id = ?",
                      (sent, reread, egress, duration_s, time.time(), tid))

    def finish(self, tid: int, state: str, verification: str, error: str | None = None) -> None:
        now = time.time()
        with self._tx() as c:
            c.execute("UPDATE transfers SET state = ?, verification = ?, error = ?, updated_at = ?, "
                      "finished_at = CASE WHEN ? = 'verified' THEN ? ELSE finished_at END WHERE id = ?",
                      (state, verification, error, now, state, now, tid))

    def transfer(self, key: str) -> dict | None:
        rows = self._read("SELECT * FROM transfers WHERE key = ?", (key,))
        return dict(rows[0]) if rows else None

    def transfers(self, *, job_id: int | None = None, subject: str | None = None, limit: int = 100) -> list[dict]:
        sql, args = "SELECT * FROM transfers WHERE 1=1", []
        if job_id is not None:
            sql += " AND job_id = ?"
            args.append(job_id)
        if subject is not None:
            sql += " AND subject = ?"
            args.append(subject)
        return [dict(r) for r in self._read(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))]

    def totals(self, since: float = 0.0) -> dict:
        """Bytes sent, re-read and egress, and transfers by state, of transfers updated since ``since``."""
        r = self._read("SELECT COALESCE(SUM(bytes_sent),0), COALESCE(SUM(bytes_reread),0), COALESCE(SUM(egress_bytes),0), "
                       "COUNT(*) FROM transfers WHERE updated_at >= ?", (since,))[0]
        states = {s: n for s, n in self._read("SELECT state, COUNT(*) FROM transfers WHERE updated_at >= ? GROUP BY state", (since,))}
        return {"bytes_sent": r[0], "bytes_reread": r[1], "egress_bytes": r[2], "transfers": r[3], "states": states}

    # -- files and parts -------------------------------------------------------------------
    def file(self, tid: int, rel: str) -> dict:
        return dict(self._read("SELECT * FROM files WHERE transfer_id = ? AND rel = ?", (tid, rel))[0])

    def set_file(self, tid: int, rel: str, state: str, *, upload_id: str | None = None, etag: str | None = None,
                 mtime_ns: int | None = None, error: str | None = None, attempt: bool = False,
                 clear_parts: bool = False, reread: int = 0, egress: int = 0) -> None:
        """A file's new state; ``reread``/``egress``: bytes its verification read back, counted
        in the same transaction (one durable write per verified file, not two)."""
        with self._tx() as c:
            if clear_parts:
                c.execute("DELETE FROM parts WHERE transfer_id = ? AND rel = ?", (tid, rel))
            if reread or egress:
                c.execute("UPDATE transfers SET bytes_reread = bytes_reread + ?, egress_bytes = egress_bytes + ?, "
                          "updated_at = ? WHERE id = ?", (reread, egress, time.time(), tid))
            c.execute("UPDATE files SET state = ?, upload_id = ?, etag = ?, mtime_ns = ?, error = ?, "
                      "attempts = attempts + ? WHERE transfer_id = ? AND rel = ?",
                      (state, upload_id, etag, mtime_ns, error, 1 if attempt else 0, tid, rel))

    def add_part(self, tid: int, rel: str, upload_id: str, part: PartRow, *, sent: int = 0) -> None:
        """Record a part the store acknowledged (and ``sent`` bytes, in the same transaction)."""
        with self._tx() as c:
            if sent:
                c.execute("UPDATE transfers SET bytes_sent = bytes_sent + ?, updated_at = ? WHERE id = ?",
                          (sent, time.time(), tid))
            c.execute("INSERT OR REPLACE INTO parts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (tid, rel, upload_id, part.number, part.offset, part.size, part.etag, part.crc32c, part.attempt))

    def parts(self, tid: int, rel: str, upload_id: str) -> list[PartRow]:
        return [PartRow(r["number"], r["offset"], r["size"], r["etag"], r["crc32c"], r["attempt"])
                for r in self._read("SELECT * FROM parts WHERE transfer_id = ? AND rel = ? AND upload_id = ? ORDER BY number",
                                    (tid, rel, upload_id))]

    def all_parts(self, tid: int, rel: str) -> list[PartRow]:
        return [PartRow(r["number"], r["offset"], r["size"], r["etag"], r["crc32c"], r["attempt"])
                for r in self._read("SELECT * FROM parts WHERE transfer_id = ? AND rel = ? ORDER BY upload_id, number", (tid, rel))]
