"""The ledger's two backends: one small connection and dialect layer under one ledger.

The :class:`~appliance.offload.ledger.Ledger` writes its SQL once, with ``?`` placeholders and
portable expressions; a backend runs it:

- :class:`SqliteBackend`: a WAL file, one ``BEGIN IMMEDIATE`` transaction per write (the write
  lock serialises every writer of every process, so row locks are not needed).
- :class:`PgBackend`: PostgreSQL through psycopg 3 (placeholders become ``%s``). Rows read to be
  changed are locked (``FOR UPDATE``), leasing skips rows another orchestrator holds (``FOR
  UPDATE SKIP LOCKED``), submitters serialise on an advisory lock (so the admission decision is
  exact across hosts as it is on SQLite), and submit/complete send ``NOTIFY`` so dispatchers
  listening on another connection wake at once. A write that is one statement
  (:meth:`PgBackend.statement`: ``complete``, ``heartbeat``) runs in autocommit, one round trip. A lost connection, a deadlock or a
  serialisation failure is raised as :class:`Transient`; the ledger retries the operation on a
  new connection with backoff.

The schema version lives in ``PRAGMA user_version`` (SQLite) or the ``ledger_schema`` table (PG).

A public leaf module (it imports nothing of the project): the lab algorithm registry
(appliance.analysis.algorithms) keeps its document on a :class:`PgBackend` too.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from appliance._sqlite import connect_wal, migrate, transaction

__all__ = ["PgBackend", "SqliteBackend", "Transient", "is_postgres_url", "open_backend", "redact"]

#: the NOTIFY channel of the ledger (payload: "submit" or "complete")
CHANNEL = "appliance_ledger"
#: pg_advisory_xact_lock keys: submitters, migrations
_SUBMIT_LOCK = 0x6C656467_0001
_MIGRATE_LOCK = 0x6C656467_0002


class Transient(Exception):
    """The database could not be reached or rolled the transaction back (connection lost,
    server restarting, deadlock): the operation may be retried on a new connection."""


def is_postgres_url(target: str | os.PathLike) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def redact(dsn: str) -> str:
    """The DSN without its password (for messages and logs)."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


class SqliteBackend:
    """The embedded default: one WAL file on the instrument's disk."""

    name = "sqlite"
    lock_rows = ""  #: BEGIN IMMEDIATE already holds the file's write lock
    skip_locked = ""

    def __init__(self, path: Path, *, error: type[Exception], busy_timeout_s: float = 30.0) -> None:
        self.path = path
        self.where = str(path)
        self._error = error
        self._lock = threading.RLock()
        self._woken = threading.Event()  # wake(): an attempt finished, or a stop
        self._conn = connect_wal(path, what="the ledger", error=error, busy_timeout_s=busy_timeout_s,
                                 synchronous="NORMAL", setting="offload.ledger")

    def migrate(self, migrations: Sequence[Callable[[Any], None]]) -> int:
        try:
            return migrate(self._conn, self._lock, migrations, what=f"the ledger {self.path}", error=self._error)
        except BaseException:
            self._conn.close()
            raise

    def tx(self):
        return transaction(self._conn, self._lock, what=f"ledger {self.path}", error=self._error)

    def read(self, sql: str, args: tuple = ()) -> list:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def statement(self, sql: str, args: tuple = ()) -> list:
        """One write statement in its own transaction; its rows (``RETURNING``)."""
        with self.tx() as c:
            return c.execute(sql, args).fetchall()

    def schema_version(self) -> int:
        return self.read("PRAGMA user_version")[0][0]

    @staticmethod
    def json_text(column: str, key: str) -> str:
        return f"json_extract({column}, '$.{key}')"

    def serialise_submitters(self, c) -> None:
        """Nothing to do: BEGIN IMMEDIATE serialises every writer."""

    def notify(self, c, what: str) -> None:
        """No notifications on SQLite: dispatchers poll (offload.tick_s)."""

    def wait_for_change(self, timeout: float, stop: threading.Event | None = None) -> bool:
        """Wait ``timeout``, or until :meth:`wake` (an executor's attempt finished; a stop, which
        sets ``stop`` and wakes); True if woken. SQLite has no notifications across processes."""
        if stop is not None and stop.is_set():
            return False
        woken = self._woken.wait(timeout)
        self._woken.clear()
        return woken

    def wake(self) -> None:
        """End the dispatcher's wait now (thread-safe; called from an executor's callback)."""
        self._woken.set()

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _Row:
    """A result row read like ``sqlite3.Row``: by position or by column name; ``dict(row)``."""

    __slots__ = ("_index", "_values")

    def __init__(self, index: dict[str, int], values: Sequence[Any]) -> None:
        self._index, self._values = index, values

    def __getitem__(self, k):
        return self._values[self._index[k]] if isinstance(k, str) else self._values[k]

    def keys(self) -> list[str]:
        return list(self._index)

    def __len__(self) -> int:
        return len(self._values)


def _row_factory(cursor):
    desc = cursor.description
    index = {c.name: i for i, c in enumerate(desc)} if desc else {}
    return lambda values: _Row(index, values)


class _PgTx:
    """What a ledger transaction body talks to on PostgreSQL: ``execute(sql, args)`` with ``?``."""

    def __init__(self, conn, translate: Callable[[str], str]) -> None:
        self._conn, self._translate = conn, translate

    def execute(self, sql: str, args: Sequence[Any] = ()):
        return self._conn.execute(self._translate(sql), tuple(args))


class PgBackend:
    """The lab ledger: one PostgreSQL database shared by every instrument and orchestrator."""

    name = "postgresql"
    lock_rows = " FOR UPDATE"
    skip_locked = " FOR UPDATE OF j SKIP LOCKED"

    def __init__(self, dsn: str, *, error: type[Exception], connect_timeout_s: float = 3.0) -> None:
        try:
            import psycopg
        except ImportError:
            raise error("offload.ledger is a PostgreSQL URL but psycopg is not installed: "
                        "pip install 'flowcell-appliance[lab]' (or psycopg[binary])") from None
        self._pg = psycopg
        self.dsn = dsn
        self.where = redact(dsn)
        self._error = error
        self._timeout = connect_timeout_s
        self._lock = threading.RLock()
        self._sql: dict[str, str] = {}
        self._conn = None
        self._listen = None
        self._pipe: tuple[int, int] | None = None
        self._down_until = 0.0
        self._failures = 0
        try:
            self._conn = self._connect()
        except Transient as exc:
            raise error(f"cannot connect to the ledger database {self.where}: {exc}; check offload.ledger "
                        "(postgresql://USER@HOST/DB or postgresql:///DB?host=/run/postgresql), that the server "
                        "runs and that pg_hba.conf lets this role in (docs/lab.md)") from None

    # -- connections -------------------------------------------------------------------------------

    def _connect(self):
        try:
            return self._pg.connect(self.dsn, autocommit=True, row_factory=_row_factory,
                                    connect_timeout=max(1, int(round(self._timeout))), application_name="appliance-ledger")
        except self._pg.Error as exc:
            raise Transient(" ".join(str(exc).split())) from None

    def _ensure(self):
        c = self._conn
        if c is None or c.closed or c.broken:
            if c is not None:
                with contextlib.suppress(Exception):
                    c.close()
            self._conn = None
            self._conn = self._connect()
        return self._conn

    def _translate(self, sql: str) -> str:
        out = self._sql.get(sql)
        if out is None:
            out = self._sql[sql] = sql.replace("%", "%%").replace("?", "%s")
        return out

    def _lost(self, exc: Exception) -> Transient:
        """Note a failure and turn it into :class:`Transient` (the connection is reopened next time)."""
        self._failures += 1
        self._down_until = time.monotonic() + min(5.0, 0.1 * 2 ** min(self._failures, 6))
        c = self._conn
        if c is not None and (c.broken or isinstance(exc, (self._pg.OperationalError, self._pg.InterfaceError))):
            with contextlib.suppress(Exception):
                c.close()
            self._conn = None
        return Transient(f"{type(exc).__name__}: {' '.join(str(exc).split())}")

    def _transient_errors(self) -> tuple[type[Exception], ...]:
        e = self._pg.errors
        return (self._pg.OperationalError, self._pg.InterfaceError, e.DeadlockDetected, e.SerializationFailure)

    def down(self) -> bool:
        """True while the last failure's backoff runs (a submitter goes to its outbox at once)."""
        return time.monotonic() < self._down_until

    def _ok(self) -> None:
        self._failures = 0
        self._down_until = 0.0

    # -- the ledger's interface --------------------------------------------------------------------

    def migrate(self, migrations: Sequence[Sequence[str]], *, table: str = "ledger_schema", lock: int = _MIGRATE_LOCK,
                what: str | None = None, owner_command: str = "appliance jobs stats", refused: type[Exception] | None = None) -> int:
        """Bring the tables to ``len(migrations)`` in one transaction (under the advisory lock
        ``lock``, so two processes starting at once do not both migrate), the version kept in
        ``table``; refuse a newer database. The ledger's tables by default; the lab's algorithm
        registry passes its own (``what`` names them in errors, ``owner_command`` is the command
        its owner role runs once, ``refused`` the exception a refusal raises)."""
        what = what or f"the ledger database {self.where}"
        refused = refused or self._error
        n = len(migrations)
        try:
            with self.tx() as c:
                c.execute("SELECT pg_advisory_xact_lock(?)", (lock,))
                # an instrument's role may read the schema version but not create tables
                if c.execute(f"SELECT to_regclass('{table}')").fetchone()[0] is None:
                    c.execute(f"CREATE TABLE {table} (version INTEGER NOT NULL)")
                row = c.execute(f"SELECT version FROM {table}").fetchone()
                version = row[0] if row else 0
                if version > n:
                    raise refused(f"{what} has schema version {version}, newer than this appliance's {n}: upgrade the "
                                  "appliance software (every instrument and orchestrator of the lab runs the same release, docs/lab.md)")
                for m in migrations[version:]:
                    for stmt in m:
                        c.execute(stmt)
                if row is None:
                    c.execute(f"INSERT INTO {table}(version) VALUES (?)", (n,))
                elif version != n:
                    c.execute(f"UPDATE {table} SET version = ?", (n,))
        except self._pg.errors.InsufficientPrivilege as exc:
            raise refused(f"{what} needs its tables created or migrated to version {n}, and this role may not "
                          f"({' '.join(str(exc).split())}): open it once as the database's owner role ({owner_command} "
                          "--ledger postgresql://ledger_owner@...), then grant the instruments' roles as docs/lab.md says") from None
        return version

    @contextlib.contextmanager
    def tx(self) -> Iterator[_PgTx]:
        with self._lock:
            try:
                conn = self._ensure()
                with conn.transaction():
                    yield _PgTx(conn, self._translate)
            except self._transient_errors() as exc:
                raise self._lost(exc) from None
            self._ok()

    def read(self, sql: str, args: tuple = ()) -> list:
        with self._lock:
            try:
                rows = self._ensure().execute(self._translate(sql), tuple(args)).fetchall()
            except self._transient_errors() as exc:
                raise self._lost(exc) from None
            self._ok()
            return rows

    def statement(self, sql: str, args: tuple = ()) -> list:
        """One statement in its own transaction (autocommit: one round trip, no BEGIN/COMMIT);
        its rows (``RETURNING``)."""
        return self.read(sql, args)

    def schema_version(self) -> int:
        rows = self.read("SELECT version FROM ledger_schema")
        return rows[0][0] if rows else 0

    @staticmethod
    def json_text(column: str, key: str) -> str:
        return f"({column}::jsonb ->> '{key}')"

    def serialise_submitters(self, c) -> None:
        """Submitters of every host take one advisory lock for their transaction, so the
        admission decision sees every earlier submission (as BEGIN IMMEDIATE does on SQLite)."""
        c.execute("SELECT pg_advisory_xact_lock(?)", (_SUBMIT_LOCK,))

    def notify(self, c, what: str) -> None:
        """Sent when the transaction commits, to every connection that LISTENs."""
        c.execute("SELECT pg_notify(?, ?)", (CHANNEL, what))

    def wait_for_change(self, timeout: float, stop: threading.Event | None = None) -> bool:
        """Wait up to ``timeout`` for a NOTIFY (a submission or a completion anywhere in the lab)
        or :meth:`wake`; True if notified. Used by one thread (the dispatcher) at a time. With
        the listening connection down this is a plain wait: the caller's tick is the fallback."""
        if stop is not None and stop.is_set():
            return False
        if self._pipe is None:
            self._pipe = os.pipe()
            os.set_blocking(self._pipe[0], False)
        conn = self._listen
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            self._listen = None
            try:
                conn = self._listen = self._pg.connect(self.dsn, autocommit=True,
                                                       connect_timeout=max(1, int(round(self._timeout))),
                                                       application_name="appliance-ledger-listen")
                conn.execute(f"LISTEN {CHANNEL}")
            except self._pg.Error:
                self._listen = None
                conn = None
        fds = [self._pipe[0]] + ([conn.fileno()] if conn is not None else [])
        readable, _, _ = select.select(fds, [], [], max(0.0, timeout))
        with contextlib.suppress(BlockingIOError, OSError):
            os.read(self._pipe[0], 4096)
        if conn is None or conn.fileno() not in readable:
            return False
        try:
            return bool(list(conn.notifies(timeout=0)))
        except self._pg.Error:
            with contextlib.suppress(Exception):
                conn.close()
            self._listen = None
            return False

    def wake(self) -> None:
        """End a :meth:`wait_for_change` now (another thread is stopping the dispatcher)."""
        if self._pipe is not None:
            with contextlib.suppress(OSError):
                os.write(self._pipe[1], b"x")

    def close(self) -> None:
        with self._lock:
            for c in (self._conn, self._listen):
                if c is not None:
                    with contextlib.suppress(Exception):
                        c.close()
            self._conn = self._listen = None
            if self._pipe is not None:
                for fd in self._pipe:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                self._pipe = None


def open_backend(target: str | os.PathLike, *, error: type[Exception], busy_timeout_s: float = 30.0,
                 connect_timeout_s: float = 3.0):
    """A PostgreSQL URL -> :class:`PgBackend`; anything else is a SQLite file path."""
    if isinstance(target, str) and target.startswith(("postgresql:", "postgres:")) and not is_postgres_url(target):
        raise error(f"ledger {target!r} looks like a PostgreSQL URL but is not one: write postgresql://USER@HOST/DB "
                    "or postgresql:///DB?host=/run/postgresql (two slashes after the scheme)")
    if is_postgres_url(target):
        return PgBackend(str(target), error=error, connect_timeout_s=connect_timeout_s)
    return SqliteBackend(Path(target), error=error, busy_timeout_s=busy_timeout_s)


def retry_delay(attempt: int, rng: random.Random) -> float:
    """Reconnect backoff: full jitter, 0.05 s doubling to a 2 s cap."""
    return rng.uniform(0.0, min(2.0, 0.05 * 2 ** attempt)) + 0.02
