"""The project's SQLite files (the offload ledger, the storage catalog): one way to open them,
write to them and migrate their schema.

Each file is opened in WAL mode (readers never wait for the writer; several processes share
it), with a busy timeout instead of ``database is locked`` errors (and the switch to WAL,
which the busy timeout does not cover, retried with backoff for as long), and foreign keys on. Writes
go through :func:`transaction` (``BEGIN IMMEDIATE``: a writer takes the write lock up front, so
two read-modify-write transactions cannot deadlock on the upgrade from a read lock). The schema
version lives in ``PRAGMA user_version``; :func:`migrate` applies the missing migrations, in
order, in one transaction, and refuses a file written by a newer version of the appliance.
Errors are raised as the caller's exception class, naming the file and the fix.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

__all__ = ["connect_wal", "migrate", "transaction"]

#: a migration: a function of the connection, or a script of ';'-separated statements
Migration = Callable[[sqlite3.Connection], None] | str


def connect_wal(path: Path, *, what: str, error: type[Exception], busy_timeout_s: float = 30.0,
                synchronous: str = "NORMAL", setting: str = "") -> sqlite3.Connection:
    """Open (creating its folder) the SQLite file at ``path`` in WAL mode.

    ``what`` names the file in messages ("the ledger"), ``setting`` the config key that moves
    it. ``synchronous``: NORMAL survives a crash of the process and the OS (the last
    transactions may be lost at a power cut); FULL also survives a power cut."""
    where = f" (set {setting} to another path)" if setting else ""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise error(f"cannot open {what} {path}: {exc}; check the path and its permissions{where}") from None
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        mode = _to_wal(conn, path, what=what, error=error, within_s=busy_timeout_s, where=where)
        if str(mode).lower() != "wal":
            raise error(f"{what} {path} cannot use WAL mode (got {mode}): put it on a local file system{where}")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise error(f"{what} {path} is not a readable SQLite database ({exc}); move it aside and "
                    "restart, or restore a backup") from None
    except BaseException:
        conn.close()
        raise
    return conn


def _to_wal(conn: sqlite3.Connection, path: Path, *, what: str, error: type[Exception], within_s: float,
            where: str) -> str:
    """``PRAGMA journal_mode = WAL``, retried while another process holds the file: the busy
    timeout does not cover the switch, so two processes opening a fresh file at once could get
    "database is locked". Full-jitter backoff from 5 ms doubling to 100 ms, for up to
    ``within_s`` (the busy timeout); the journal mode set (or found) is returned."""
    deadline = time.monotonic() + within_s
    attempt = 0
    while True:
        try:
            return conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            busy = getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) \
                or "locked" in str(exc)
            if not busy:
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise error(f"{what} {path} is locked by another process: it could not be switched to WAL mode "
                            f"within {within_s:g} s ({exc}); stop the process that holds it (fuser {path}) "
                            f"and retry{where}") from None
            attempt += 1
            time.sleep(min(left, random.uniform(0.0, min(0.1, 0.005 * 2 ** attempt))))


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, lock: threading.RLock, *, what: str,
                error: type[Exception]) -> Iterator[sqlite3.Connection]:
    """One write transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``; ``ROLLBACK`` on any error),
    under ``lock`` (a connection is shared by the threads of one process)."""
    with lock:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise error(f"{what} is busy or unwritable ({exc}): another process holds it too long, "
                        "or the disk is full") from None
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            conn.execute("ROLLBACK")
            raise error(f"{what}: the write failed ({exc}); free disk space and retry") from None


def migrate(conn: sqlite3.Connection, lock: threading.RLock, migrations: Sequence[Migration], *,
            what: str, error: type[Exception]) -> int:
    """Bring the schema to version ``len(migrations)`` (``migrations[i]`` goes from version i to
    i + 1) in one transaction; returns the version found. A newer file is refused untouched."""
    with transaction(conn, lock, what=what, error=error) as c:
        version = c.execute("PRAGMA user_version").fetchone()[0]
        if version > len(migrations):
            raise error(f"{what} has schema version {version}, newer than this appliance's "
                        f"{len(migrations)}: upgrade the appliance software")
        for m in migrations[version:]:
            if callable(m):
                m(c)
            else:
                for stmt in m.split(";"):
                    if stmt.strip():
                        c.execute(stmt)
        if version != len(migrations):
            c.execute(f"PRAGMA user_version = {len(migrations)}")
    return version
