"""The catalog: every file of every run, its copies on each tier and their verification.

One SQLite file (WAL journal, ``busy_timeout``; each process opens its own connection, each
write is one ``BEGIN IMMEDIATE`` transaction), schema migrations by ``PRAGMA user_version``.

Tables: ``runs`` (state, completion), ``files`` (run, path relative to the data root, data
class, size, CRC32C, sha256 once bagged), ``copies`` (per file and tier: where, state,
temp name of a copy in flight, last verification) and ``events`` (verification failures and
repairs, kept for ``appliance storage status``). A ``copies`` row in state ``copying`` is the
mover's intent journal: after a crash it names the temp file to remove and the copy to redo.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from appliance._sqlite import connect_wal, migrate, transaction

__all__ = ["Catalog", "CatalogError", "FileRow", "CopyRow", "COPY_STATES"]

#: copying: intent recorded, bytes in flight (temp name at the destination);
#: verified: re-read at the destination and its CRC32C matches; corrupt: a re-read did not match
#: (or the copy is missing); stale: the source changed after the copy (a report rewritten);
#: deleting: the delete is decided and in flight; deleted: gone, on purpose.
COPY_STATES = ("copying", "verified", "corrupt", "stale", "deleting", "deleted")

_MIGRATIONS = [
    """
    CREATE TABLE runs (
        run TEXT PRIMARY KEY,
        complete INTEGER NOT NULL DEFAULT 0,
        analysed INTEGER NOT NULL DEFAULT 0,
        completed_at REAL,
        pinned_until REAL NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL
    );
    CREATE TABLE files (
        id INTEGER PRIMARY KEY,
        run TEXT NOT NULL REFERENCES runs(run),
        rel TEXT NOT NULL UNIQUE,
        class TEXT NOT NULL,
        size INTEGER NOT NULL,
        crc32c TEXT NOT NULL,
        sha256 TEXT,
        mtime REAL NOT NULL,
        origin TEXT NOT NULL
    );
    CREATE INDEX files_run ON files(run, class);
    CREATE TABLE copies (
        file_id INTEGER NOT NULL REFERENCES files(id),
        tier TEXT NOT NULL,
        url TEXT NOT NULL,
        state TEXT NOT NULL,
        tmp TEXT,
        crc32c TEXT,
        verified_at REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        updated_at REAL NOT NULL,
        PRIMARY KEY (file_id, tier)
    );
    CREATE INDEX copies_state ON copies(tier, state, verified_at);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        t REAL NOT NULL,
        kind TEXT NOT NULL,
        run TEXT,
        rel TEXT,
        tier TEXT,
        message TEXT NOT NULL
    );
    """,
]


class CatalogError(RuntimeError):
    """The catalog cannot be opened or is from a newer version of the appliance."""


@dataclass(frozen=True)
class FileRow:
    id: int
    run: str
    rel: str
    data_class: str
    size: int
    crc32c: str
    sha256: str | None
    mtime: float
    origin: str


@dataclass(frozen=True)
class CopyRow:
    file_id: int
    tier: str
    url: str
    state: str
    tmp: str | None
    crc32c: str | None
    verified_at: float | None
    attempts: int  #: copy attempts since the copy was last verified (reset to 0 by a verification)
    error: str | None


def _file(r) -> FileRow:
    return FileRow(r["id"], r["run"], r["rel"], r["class"], r["size"], r["crc32c"], r["sha256"], r["mtime"], r["origin"])


def _copy(r) -> CopyRow:
    return CopyRow(r["file_id"], r["tier"], r["url"], r["state"], r["tmp"], r["crc32c"], r["verified_at"], r["attempts"], r["error"])


class Catalog:
    """The catalog at ``path`` (created, migrated). Thread-safe within a process (one lock
    around one connection); several processes may open the same file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        # FULL: a power cut must not lose the record of a verified copy whose source was deleted
        self._db = connect_wal(self.path, what="the storage catalog", error=CatalogError, busy_timeout_s=60.0,
                               synchronous="FULL", setting="storage.catalog")
        try:
            migrate(self._db, self._lock, _MIGRATIONS, what=f"the storage catalog {self.path}", error=CatalogError)
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def tx(self):
        """One write transaction (BEGIN IMMEDIATE: other writers wait, readers go on)."""
        return transaction(self._db, self._lock, what=f"the storage catalog {self.path}", error=CatalogError)

    def _q(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- runs -------------------------------------------------------------------------------
    def upsert_run(self, run: str, *, complete: bool, analysed: bool, completed_at: float | None) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT INTO runs(run, complete, analysed, completed_at, updated_at) VALUES (?,?,?,?,?) "
                "ON CONFLICT(run) DO UPDATE SET complete=MAX(complete, excluded.complete), "
                "analysed=MAX(analysed, excluded.analysed), completed_at=COALESCE(completed_at, excluded.completed_at), "
                "updated_at=excluded.updated_at",
                (run, int(complete), int(analysed), completed_at, time.time()),
            )

    def run(self, run: str) -> dict | None:
        rows = self._q("SELECT * FROM runs WHERE run=?", (run,))
        return dict(rows[0]) if rows else None

    def runs(self) -> list[dict]:
        return [dict(r) for r in self._q("SELECT * FROM runs ORDER BY run")]

    def pin(self, run: str, until: float) -> None:
        with self.tx() as db:
            db.execute("UPDATE runs SET pinned_until=? WHERE run=?", (until, run))

    # -- files ------------------------------------------------------------------------------
    def add_file(self, run: str, rel: str, data_class: str, size: int, crc32c: str, mtime: float, origin: str, hot_url: str) -> int:
        """Catalogue a complete file and its hot copy (verified: its checksum was taken from
        the bytes on the hot disk); returns the file id. A known path is left unchanged."""
        with self.tx() as db:
            row = db.execute("SELECT id FROM files WHERE rel=?", (rel,)).fetchone()
            if row is not None:
                return row[0]
            cur = db.execute(
                "INSERT INTO files(run, rel, class, size, crc32c, mtime, origin) VALUES (?,?,?,?,?,?,?)",
                (run, rel, data_class, size, crc32c, mtime, origin),
            )
            fid = cur.lastrowid
            now = time.time()
            db.execute(
                "INSERT INTO copies(file_id, tier, url, state, crc32c, verified_at, updated_at) VALUES (?,?,?,?,?,?,?)",
                (fid, "hot", hot_url, "verified", crc32c, now, now),
            )
            return fid

    def update_content(self, file_id: int, size: int, crc32c: str, mtime: float) -> None:
        """A file that may change after cataloguing (a report rewritten) changed on hot: new
        checksum; every other tier's copy becomes ``stale`` and is copied again."""
        now = time.time()
        with self.tx() as db:
            db.execute("UPDATE files SET size=?, crc32c=?, mtime=?, sha256=NULL WHERE id=?", (size, crc32c, mtime, file_id))
            db.execute("UPDATE copies SET state='verified', crc32c=?, verified_at=?, updated_at=? WHERE file_id=? AND tier='hot'", (crc32c, now, now, file_id))
            db.execute("UPDATE copies SET state='stale', updated_at=? WHERE file_id=? AND tier!='hot' AND state!='deleted'", (now, file_id))

    def file(self, rel: str) -> FileRow | None:
        rows = self._q("SELECT * FROM files WHERE rel=?", (rel,))
        return _file(rows[0]) if rows else None

    def file_by_id(self, file_id: int) -> FileRow:
        return _file(self._q("SELECT * FROM files WHERE id=?", (file_id,))[0])

    def files(self, run: str | None = None, data_class: str | None = None) -> list[FileRow]:
        sql, args = "SELECT * FROM files WHERE 1=1", []
        if run is not None:
            sql += " AND run=?"
            args.append(run)
        if data_class is not None:
            sql += " AND class=?"
            args.append(data_class)
        return [_file(r) for r in self._q(sql + " ORDER BY rel", tuple(args))]

    def set_sha256(self, file_id: int, sha256: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE files SET sha256=? WHERE id=?", (sha256, file_id))

    # -- copies -----------------------------------------------------------------------------
    def copies(self, file_id: int) -> dict[str, CopyRow]:
        return {r["tier"]: _copy(r) for r in self._q("SELECT * FROM copies WHERE file_id=?", (file_id,))}

    def all_copies(self, run: str | None = None) -> dict[int, dict[str, CopyRow]]:
        sql = "SELECT c.* FROM copies c JOIN files f ON f.id=c.file_id"
        rows = self._q(sql + " WHERE f.run=?", (run,)) if run is not None else self._q(sql)
        out: dict[int, dict[str, CopyRow]] = {}
        for r in rows:
            out.setdefault(r["file_id"], {})[r["tier"]] = _copy(r)
        return out

    def set_copy(self, file_id: int, tier: str, state: str, *, url: str | None = None, tmp: str | None = None,
                 crc32c: str | None = None, verified: bool = False, error: str | None = None, attempt: bool = False) -> None:
        """Insert or update a copy's row (one transaction, durable before the next step)."""
        assert state in COPY_STATES, state
        now = time.time()
        with self.tx() as db:
            old = db.execute("SELECT url FROM copies WHERE file_id=? AND tier=?", (file_id, tier)).fetchone()
            if old is None:
                db.execute(
                    "INSERT INTO copies(file_id, tier, url, state, tmp, crc32c, verified_at, attempts, error, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (file_id, tier, url or "", state, tmp, crc32c, now if verified else None, 0 if verified else int(attempt), error, now),
                )
            else:
                db.execute(
                    "UPDATE copies SET state=?, url=COALESCE(?, url), tmp=?, crc32c=COALESCE(?, crc32c), "
                    "verified_at=CASE WHEN ? THEN ? ELSE verified_at END, attempts=CASE WHEN ? THEN 0 ELSE attempts+? END, "
                    "error=?, updated_at=? WHERE file_id=? AND tier=?",
                    (state, url, tmp, crc32c, int(verified), now, int(verified), int(attempt), error, now, file_id, tier),
                )

    def reset_attempts(self, run: str) -> int:
        """Zero the attempt counts of ``run``'s corrupt copies (an operator's retry of held
        copies); returns how many were reset."""
        with self.tx() as db:
            return db.execute(
                "UPDATE copies SET attempts=0 WHERE state='corrupt' AND attempts>0 AND file_id IN (SELECT id FROM files WHERE run=?)", (run,)
            ).rowcount

    def in_state(self, state: str, tier: str | None = None) -> list[tuple[FileRow, CopyRow]]:
        sql = "SELECT f.*, c.file_id, c.tier, c.url, c.state, c.tmp, c.crc32c AS c_crc, c.verified_at, c.attempts, c.error FROM copies c JOIN files f ON f.id=c.file_id WHERE c.state=?"
        args: tuple = (state,)
        if tier is not None:
            sql += " AND c.tier=?"
            args += (tier,)
        out = []
        for r in self._q(sql + " ORDER BY f.rel", args):
            out.append((_file(r), CopyRow(r["file_id"], r["tier"], r["url"], r["state"], r["tmp"], r["c_crc"], r["verified_at"], r["attempts"], r["error"])))
        return out

    def oldest_verified(self, tiers: tuple[str, ...], limit: int) -> list[tuple[FileRow, CopyRow]]:
        """Verified copies on ``tiers``, least recently verified first (the scrub sample)."""
        marks = ",".join("?" * len(tiers))
        rows = self._q(
            f"SELECT f.*, c.file_id, c.tier, c.url, c.state, c.tmp, c.crc32c AS c_crc, c.verified_at, c.attempts, c.error "
            f"FROM copies c JOIN files f ON f.id=c.file_id WHERE c.state='verified' AND c.tier IN ({marks}) "
            f"ORDER BY c.verified_at ASC, f.rel LIMIT ?",
            (*tiers, limit),
        )
        return [(_file(r), CopyRow(r["file_id"], r["tier"], r["url"], r["state"], r["tmp"], r["c_crc"], r["verified_at"], r["attempts"], r["error"])) for r in rows]

    # -- events and figures -----------------------------------------------------------------
    def event(self, kind: str, message: str, *, run: str | None = None, rel: str | None = None, tier: str | None = None) -> None:
        with self.tx() as db:
            db.execute("INSERT INTO events(t, kind, run, rel, tier, message) VALUES (?,?,?,?,?,?)", (time.time(), kind, run, rel, tier, message))

    def events(self, kind: str | None = None, last: int = 50) -> list[dict]:
        if kind is None:
            rows = self._q("SELECT * FROM events ORDER BY id DESC LIMIT ?", (last,))
        else:
            rows = self._q("SELECT * FROM events WHERE kind=? ORDER BY id DESC LIMIT ?", (kind, last))
        return [dict(r) for r in reversed(rows)]

    def count_held(self, limit: int) -> int:
        """Corrupt copies with ``limit`` or more failed attempts: held, no longer retried."""
        return self._q("SELECT COUNT(*) FROM copies WHERE state='corrupt' AND attempts>=?", (limit,))[0][0]

    def count_events(self, kind: str) -> int:
        return self._q("SELECT COUNT(*) FROM events WHERE kind=?", (kind,))[0][0]

    def tier_totals(self) -> dict[str, dict[str, int]]:
        """Per tier and state: files and bytes."""
        out: dict[str, dict[str, int]] = {}
        for r in self._q("SELECT c.tier, c.state, COUNT(*) n, COALESCE(SUM(f.size),0) b FROM copies c JOIN files f ON f.id=c.file_id GROUP BY c.tier, c.state"):
            t = out.setdefault(r["tier"], {})
            t[f"{r['state']}_files"] = r["n"]
            t[f"{r['state']}_bytes"] = r["b"]
        return out

    def run_summary(self) -> list[dict]:
        """One row per run: files, bytes, and per tier the verified files (for ``ls``)."""
        runs = {r["run"]: {**r, "files": 0, "bytes": 0, "tiers": {}} for r in self.runs()}
        for r in self._q("SELECT run, COUNT(*) n, COALESCE(SUM(size),0) b FROM files GROUP BY run"):
            runs[r["run"]].update(files=r["n"], bytes=r["b"])
        for r in self._q("SELECT f.run, c.tier, c.state, COUNT(*) n FROM copies c JOIN files f ON f.id=c.file_id GROUP BY f.run, c.tier, c.state"):
            runs[r["run"]]["tiers"].setdefault(r["tier"], {})[r["state"]] = r["n"]
        return list(runs.values())
