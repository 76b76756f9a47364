"""The job ledger: the durable system of record of every offload job.

One ledger, two backends (appliance/offload/backend.py): a SQLite file (WAL mode, the embedded
default of one instrument) or a PostgreSQL database (``offload.ledger = "postgresql://..."``, the
lab ledger many instruments and orchestrators share, docs/lab.md). The logic below is written
once; the backend supplies the connection, the placeholders and the locking.

Several processes use one ledger at once (the orchestrator, its workers heartbeating their
leases, ``appliance jobs`` from a shell): every write is one short transaction (SQLite:
``BEGIN IMMEDIATE``; PostgreSQL: the rows it reads to change are locked ``FOR UPDATE``, leasing
skips rows another orchestrator holds with ``SKIP LOCKED``, submitters serialise on an advisory
lock). On PostgreSQL a lost connection is transient: the operation is retried on a new
connection with backoff (up to ``reconnect_s``), and submissions made while the server is
unreachable go to the instrument's outbox (appliance/offload/_outbox.py) and are handed over
when it is back, under the same idempotency keys. Each job has an idempotency key; submitting
the same key again returns the existing job. Jobs move through the states::

    queued --lease--> leased --start--> running --complete--> succeeded
      ^                  |                 |
      |                  +---- fail / lease expired ----+--> retrying --(backoff)--> leased ...
      |                                                 +--> held (attempts used up, or a permanent error)
      +--- requeue (held, cancelled) / retry (held) ----+
    queued, retrying, leased, running, held --cancel--> cancelled

Every transition is recorded in the ``events`` table with its time and reason.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from appliance.offload.backend import CHANNEL as _CHANNEL, Transient, open_backend, retry_delay
from appliance.offload.admission import ALERT_RULE, Watermarks, admits, over_watermark
from appliance.offload.config import CLASSES, OffloadConfig
from appliance.offload.errors import AdmissionRefused, LedgerError, OffloadError

__all__ = [
    "InFlightRow",
    "Job",
    "Ledger",
    "RetryPolicy",
    "STATES",
    "Submitted",
    "backoff_delay",
    "job_key",
    "run_inputs",
    "SCHEMA_VERSION",
    "PG_MIGRATIONS",
]

_log = logging.getLogger(__name__)

STATES = ("queued", "leased", "running", "succeeded", "retrying", "held", "cancelled")
ACTIVE = ("leased", "running")
WAITING = ("queued", "retrying")


@dataclass(frozen=True)
class RetryPolicy:
    """How often a kind may fail and how long to wait between attempts."""

    max_attempts: int = 3
    backoff_s: float = 5.0
    backoff_cap_s: float = 300.0


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]."""
    r = rng or random
    return r.uniform(0.0, min(cap, base * (2 ** max(0, attempt - 1))))


def job_key(kind: str, params: Mapping[str, Any], inputs: Mapping[str, str] | None = None,
            algorithm: str | None = None, algorithm_version: str | None = None) -> str:
    """The idempotency key: sha256 over the kind, the parameters, the input checksums and the
    algorithm name@version. Same inputs and algorithm -> same key -> the same job."""
    doc = {
        "kind": kind,
        "params": params,
        "inputs": dict(sorted((inputs or {}).items())),
        "algorithm": f"{algorithm}@{algorithm_version}" if algorithm else None,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def run_inputs(run_dir: str | Path, cycle: int | None = None) -> dict[str, str]:
    """Checksums of what a job on ``run_dir`` depends on: the per-cycle manifest of ``cycle``, or
    ``Manifest/run.json`` for a whole-run job (it lists every file with its checksum)."""
    from appliance.runfolder.layout import RUN_MANIFEST, Layout

    rel = Layout.cycle_manifest(cycle) if cycle is not None else RUN_MANIFEST
    path = Path(run_dir) / rel
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OffloadError(f"{path}: cannot read the manifest a job depends on ({exc.strerror}); "
                           "submit the job once the run (or cycle) is complete") from None
    return {rel: hashlib.sha256(data).hexdigest()}


@dataclass(frozen=True)
class InFlightRow:
    """Leased and running jobs of one class, lease owner and instrument (:meth:`Ledger.in_flight`)."""

    priority: str
    lease_owner: str
    instrument_id: str
    n: int


@dataclass(frozen=True)
class Job:
    """One ledger row."""

    id: int
    key: str
    kind: str
    priority: str
    params: dict
    state: str
    attempts: int
    max_attempts: int
    next_attempt_at: float
    lease_owner: str | None
    lease_expires: float | None
    heartbeat_at: float | None
    error: str | None
    error_transient: bool | None
    result: dict | None
    output_dir: str | None
    algorithm: str | None
    algorithm_version: str | None
    depends_on: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    #: the instrument whose run (or operator) submitted the job (``run.instrument_id``); "" unknown
    instrument_id: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Submitted:
    """What :meth:`Ledger.submit` did: the job and whether it was created now (False: the key
    existed and this is the job submitted earlier)."""

    job: Job
    created: bool


# -- schema ------------------------------------------------------------------------------------

def _m1(c: sqlite3.Connection) -> None:
    c.execute("""CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        priority TEXT NOT NULL,
        params TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        next_attempt_at REAL NOT NULL,
        lease_owner TEXT, lease_expires REAL, heartbeat_at REAL,
        error TEXT, error_transient INTEGER,
        result TEXT, output_dir TEXT,
        created_at REAL NOT NULL, started_at REAL, finished_at REAL)""")
    c.execute("CREATE INDEX jobs_state ON jobs(state, priority, next_attempt_at)")


def _m2(c: sqlite3.Connection) -> None:
    c.execute("ALTER TABLE jobs ADD COLUMN algorithm TEXT")
    c.execute("ALTER TABLE jobs ADD COLUMN algorithm_version TEXT")
    c.execute("ALTER TABLE jobs ADD COLUMN depends_on INTEGER REFERENCES jobs(id)")
    c.execute("CREATE INDEX jobs_depends_on ON jobs(depends_on)")
    c.execute("""CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        at REAL NOT NULL,
        from_state TEXT, to_state TEXT NOT NULL,
        owner TEXT, reason TEXT NOT NULL DEFAULT '')""")
    c.execute("CREATE INDEX events_job ON events(job_id, id)")
    c.execute("CREATE INDEX events_to ON events(to_state, at)")
    # jobs of a version-1 file get their history started here
    c.execute("INSERT INTO events(job_id, at, from_state, to_state, reason) "
              "SELECT id, created_at, NULL, state, 'history starts at migration to schema 2' FROM jobs")


def _m3(c: sqlite3.Connection) -> None:
    c.execute("ALTER TABLE jobs ADD COLUMN instrument_id TEXT NOT NULL DEFAULT ''")
    c.execute("CREATE INDEX jobs_instrument ON jobs(instrument_id, state)")


def _m4(c: sqlite3.Connection) -> None:
    # the trace and span of the attempt an entry belongs to (appliance.tracing.attempt_ids)
    c.execute("ALTER TABLE events ADD COLUMN trace_id TEXT")
    c.execute("ALTER TABLE events ADD COLUMN span_id TEXT")


#: ordered migrations: MIGRATIONS[i] takes a file from version i to version i + 1
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_m1, _m2, _m3, _m4)
SCHEMA_VERSION = len(MIGRATIONS)

#: the same schema versions on PostgreSQL (statements per version; ``ledger_schema`` holds it)
PG_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    ("""CREATE TABLE jobs (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        priority TEXT NOT NULL,
        params TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        lease_owner TEXT, lease_expires DOUBLE PRECISION, heartbeat_at DOUBLE PRECISION,
        error TEXT, error_transient INTEGER,
        result TEXT, output_dir TEXT,
        created_at DOUBLE PRECISION NOT NULL, started_at DOUBLE PRECISION, finished_at DOUBLE PRECISION)""",
     "CREATE INDEX jobs_state ON jobs(state, priority, next_attempt_at)"),
    ("ALTER TABLE jobs ADD COLUMN algorithm TEXT",
     "ALTER TABLE jobs ADD COLUMN algorithm_version TEXT",
     "ALTER TABLE jobs ADD COLUMN depends_on BIGINT REFERENCES jobs(id)",
     "CREATE INDEX jobs_depends_on ON jobs(depends_on)",
     """CREATE TABLE events (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        job_id BIGINT NOT NULL REFERENCES jobs(id),
        at DOUBLE PRECISION NOT NULL,
        from_state TEXT, to_state TEXT NOT NULL,
        owner TEXT, reason TEXT NOT NULL DEFAULT '')""",
     "CREATE INDEX events_job ON events(job_id, id)",
     "CREATE INDEX events_to ON events(to_state, at)",
     "INSERT INTO events(job_id, at, from_state, to_state, reason) "
     "SELECT id, created_at, NULL, state, 'history starts at migration to schema 2' FROM jobs"),
    ("ALTER TABLE jobs ADD COLUMN instrument_id TEXT NOT NULL DEFAULT ''",
     "CREATE INDEX jobs_instrument ON jobs(instrument_id, state)"),
    ("ALTER TABLE events ADD COLUMN trace_id TEXT",
     "ALTER TABLE events ADD COLUMN span_id TEXT"),
)
assert len(PG_MIGRATIONS) == SCHEMA_VERSION, "every schema version exists on both backends"

_COLUMNS = tuple(Job.__dataclass_fields__)


def _transient(method):
    """Run a ledger operation; on a transient database error (PostgreSQL: connection lost,
    server restarting, deadlock) retry it on a new connection with backoff for up to
    ``reconnect_s``, then raise :class:`LedgerError`. Every operation is one transaction and safe
    to repeat (a lease or a completion repeated finds the job already moved and says so)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kw):
        deadline = time.monotonic() + self.reconnect_s
        attempt = 0
        while True:
            try:
                return method(self, *args, **kw)
            except Transient as exc:
                attempt += 1
                if time.monotonic() >= deadline:
                    raise LedgerError(f"the ledger database {self.path} is unreachable ({exc}); tried for "
                                      f"{self.reconnect_s:g} s: check the server and the network (docs/lab.md); "
                                      "nothing was lost, the operation can be repeated") from None
                time.sleep(min(retry_delay(attempt, self._rng), max(0.0, deadline - time.monotonic())))

    return wrapper


def _row_to_job(row) -> Job:
    d = {k: row[k] for k in _COLUMNS}
    d["params"] = json.loads(d["params"])
    d["result"] = json.loads(d["result"]) if d["result"] is not None else None
    d["error_transient"] = None if d["error_transient"] is None else bool(d["error_transient"])
    d["instrument_id"] = d["instrument_id"] or ""
    return Job(**d)


def _pg_hex_id(digest: str, digits: int) -> str:
    """SQL (PostgreSQL): the first ``digits`` hex digits of sha256(``digest``), ...01 for all
    zeros, as appliance.tracing's ids (``int.from_bytes(sha256(...)[:n]) or 1``)."""
    h = f"encode(substr(sha256(convert_to({digest}, 'UTF8')), 1, {digits // 2}), 'hex')"
    return f"CASE WHEN {h} = repeat('0', {digits}) THEN lpad('1', {digits}, '0') ELSE {h} END"


#: SQL (PostgreSQL): the run a job reads, as appliance.tracing.attempt_ids takes it (a string
#: run id; NULL for none or ""), and which jobs the SQL ids are exact for (a string run or none)
_PG_RUN = "NULLIF(CASE WHEN jsonb_typeof(params::jsonb -> 'run') = 'string' THEN params::jsonb ->> 'run' END, '')"
_PG_RUN_EXACT = "COALESCE(jsonb_typeof(params::jsonb -> 'run'), 'null') IN ('string', 'null')"
#: the attempt's trace and span ids of a history entry, from ``u`` (run, id, attempts)
_PG_TRACE = "CASE WHEN u.run IS NULL OR u.attempts < 1 THEN NULL ELSE " + _pg_hex_id("'trace:' || u.run", 32) + " END"
_PG_SPAN = ("CASE WHEN u.run IS NULL OR u.attempts < 1 THEN NULL ELSE "
            + _pg_hex_id("'span:' || u.run || ':job:' || u.id::text || ':attempt:' || u.attempts::text", 16) + " END")

#: ``complete`` on PostgreSQL in one statement (one round trip, its own transaction): lock the
#: row, mark it succeeded, write its history entry (with the attempt's trace and span ids) and
#: send the NOTIFY. No row back: the job is not there, already succeeded or cancelled, or reads
#: a run id that is not a string, and Ledger.complete decides in a transaction as on SQLite.
_COMPLETE_PG = (
    "WITH o AS (SELECT id, state, lease_owner, attempts, " + _PG_RUN + " AS run FROM jobs WHERE id = ? "
    "AND state NOT IN ('succeeded','cancelled') AND " + _PG_RUN_EXACT + " FOR UPDATE), "
    "u AS (UPDATE jobs j SET state='succeeded', result=?, finished_at=?, lease_owner=NULL, lease_expires=NULL, "
    "error=NULL, error_transient=NULL FROM o WHERE j.id = o.id "
    "RETURNING o.id, o.state AS from_state, o.lease_owner AS was_owner, o.attempts, o.run), "
    "e AS (INSERT INTO events(job_id, at, from_state, to_state, owner, reason, trace_id, span_id) "
    "SELECT u.id, ?, u.from_state, 'succeeded', CAST(? AS TEXT), CASE WHEN u.was_owner = ? THEN 'completed' "
    "ELSE 'completed by ' || CAST(? AS TEXT) || ' (lease had been lost)' END, " + _PG_TRACE + ", " + _PG_SPAN + " FROM u) "
    "SELECT pg_notify(?, 'complete') FROM u")


#: a lease statement (``UPDATE jobs ... RETURNING *``) on PostgreSQL with its history entry
#: ("attempt N of M", the attempt's trace and span ids) in the same statement; ``logged`` is
#: false for a job whose run id is not a string (Ledger.lease_next writes that entry itself)
_LEASED_PG = (
    "WITH u AS ({lease}, " + _PG_RUN + " AS run, " + _PG_RUN_EXACT + " AS logged), "
    "e AS (INSERT INTO events(job_id, at, from_state, to_state, owner, reason, trace_id, span_id) "
    "SELECT u.id, ?, NULL, 'leased', CAST(? AS TEXT), 'attempt ' || u.attempts::text || ' of ' || u.max_attempts::text, "
    + _PG_TRACE + ", " + _PG_SPAN + " FROM u WHERE u.logged) "
    "SELECT * FROM u")

#: a submission's INSERT (``... RETURNING *``) on PostgreSQL with its history entry and the
#: NOTIFY in the same statement (SQLite: three statements, no notifications)
_SUBMITTED_PG = (
    "WITH ins AS ({insert}), "
    "e AS (INSERT INTO events(job_id, at, from_state, to_state, owner, reason) SELECT ins.id, ?, NULL, 'queued', NULL, "
    "CAST(? AS TEXT) FROM ins) "
    "SELECT ins.*, pg_notify(?, 'submit') AS notified FROM ins")


class Ledger:
    """A ledger, opened (and created or migrated) by this process.

    ``target``: a SQLite file path, or a PostgreSQL URL (``postgresql://USER@HOST/DB``,
    ``postgresql:///DB?host=/run/postgresql`` for a unix socket). One connection per instance,
    guarded by a lock, so an instance may be shared by threads; other processes open their own.
    ``on_alert`` is called with an alert dict when the backpressure watermark is passed or
    cleared (as seen by this instance). ``instrument_id`` is recorded on the jobs this instance
    submits unless a submission names another. ``outbox`` (PostgreSQL only): the instrument's
    outbox file; with it a submission never waits on an unreachable server (see :meth:`submit`).
    ``drain_outboxes``: other outbox files to hand over but never write (the data root's shared
    outbox of an earlier release). ``reconnect_s``: how long an operation retries a lost PostgreSQL connection before it raises
    :class:`LedgerError`.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        config: OffloadConfig | None = None,
        policy: Callable[[str], RetryPolicy] | None = None,
        on_alert: Callable[[dict], None] | None = None,
        busy_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        instrument_id: str = "",
        outbox: str | Path | None = None,
        drain_outboxes: tuple = (),
        reconnect_s: float = 30.0,
        connect_timeout_s: float = 3.0,
    ) -> None:
        self.config = config or OffloadConfig()
        self.watermarks = Watermarks(self.config.depth_high, self.config.oldest_age_s, self.config.instrument_depth_high)
        self._policy = policy or self._default_policy
        self.on_alert = on_alert
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.RLock()
        self._alert_active: str | None = None
        self.refused = 0  #: submissions this instance refused (admission)
        self.instrument_id = instrument_id
        self.reconnect_s = reconnect_s
        self._db = open_backend(path, error=LedgerError, busy_timeout_s=busy_timeout_s,
                                connect_timeout_s=connect_timeout_s)
        #: "sqlite" or "postgresql"
        self.backend = self._db.name
        #: the file (SQLite), or the URL without its password (PostgreSQL)
        self.path: Path | str = self._db.path if self.backend == "sqlite" else self._db.where
        self._outbox = None
        self._drain: list = []  #: outboxes handed over, never written
        try:
            self._db.migrate(MIGRATIONS if self.backend == "sqlite" else PG_MIGRATIONS)
        except Transient as exc:
            self._db.close()
            raise LedgerError(f"cannot prepare the ledger database {self.path}: {exc}; check the server") from None
        except BaseException:
            self._db.close()
            raise
        if outbox is not None and self.backend == "postgresql":
            from appliance.offload._outbox import Outbox

            try:
                self._outbox = Outbox(outbox, error=LedgerError)
                self._drain = [Outbox(p, error=LedgerError) for p in drain_outboxes if Path(p) != Path(outbox)]
            except BaseException:
                for box in (self._outbox, *self._drain):
                    if box is not None:
                        box.close()
                self._db.close()
                raise

    # -- plumbing ---------------------------------------------------------------------------------

    def _default_policy(self, kind: str) -> RetryPolicy:
        from appliance.offload.kinds import default_registry

        try:
            k = default_registry().get(kind, self.config)
        except KeyError:
            return RetryPolicy()
        return RetryPolicy(k.max_attempts, k.backoff_s, k.backoff_cap_s)

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._outbox is not None:
                self._outbox.close()
            for box in self._drain:
                box.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _tx(self):
        return self._db.tx()

    def _read(self, sql: str, args: tuple = ()) -> list:
        return self._db.read(sql, args)

    @property
    def schema_version(self) -> int:
        return _transient(lambda self: self._db.schema_version())(self)

    def wait_for_change(self, timeout: float, stop: threading.Event | None = None) -> bool:
        """Wait up to ``timeout`` s (or until ``stop`` is set) for a job submitted or completed
        anywhere on this ledger; True if a notification came. PostgreSQL: LISTEN/NOTIFY; SQLite
        has no notifications and just waits (the caller's tick is the poll)."""
        return self._db.wait_for_change(timeout, stop)

    def wake(self) -> None:
        """End a :meth:`wait_for_change` in another thread now."""
        self._db.wake()

    def _event(self, c, job_id: int, frm: str | None, to: str, reason: str, owner: str | None, now: float,
               attempt_of: Job | None = None) -> None:
        """One history entry. ``attempt_of``: the job as its current attempt sees it; the entry
        then carries that attempt's trace and span ids (appliance.tracing.attempt_ids)."""
        trace_id = span_id = None
        if attempt_of is not None:
            from appliance.tracing import attempt_ids

            trace_id, span_id = attempt_ids((attempt_of.params or {}).get("run"), attempt_of.id, attempt_of.attempts)
        c.execute("INSERT INTO events(job_id, at, from_state, to_state, owner, reason, trace_id, span_id) "
                  "VALUES (?,?,?,?,?,?,?,?)", (job_id, now, frm, to, owner, reason, trace_id, span_id))

    def _get(self, c, job_id: int, lock: bool = False) -> Job | None:
        row = c.execute("SELECT * FROM jobs WHERE id = ?" + (self._db.lock_rows if lock else ""), (job_id,)).fetchone()
        return _row_to_job(row) if row else None

    def _must(self, c, job_id: int) -> Job:
        """The job, its row locked for this transaction (PostgreSQL); LedgerError if none."""
        job = self._get(c, job_id, lock=True)
        if job is None:
            raise LedgerError(f"no job {job_id} in {self.path} (appliance jobs ls lists them)")
        return job

    # -- submission -------------------------------------------------------------------------------

    def submit(
        self,
        kind: str,
        params: Mapping[str, Any] | None = None,
        *,
        priority: str | None = None,
        key: str | None = None,
        inputs: Mapping[str, str] | None = None,
        depends_on: int | None = None,
        output_dir: str | Path | None = None,
        algorithm: str | None = None,
        algorithm_version: str | None = None,
        max_attempts: int | None = None,
        wait_s: float | None = None,
        reason: str = "submitted",
        instrument_id: str | None = None,
    ) -> Submitted:
        """Add a job, or return the job with the same idempotency key (``created`` False).

        Batch and reprocess submissions past a watermark wait up to ``wait_s`` (default
        ``offload.admission_wait_s``) and are then refused with :class:`AdmissionRefused`;
        realtime submissions are always admitted.

        With an outbox (a PostgreSQL ledger opened by an instrument), a submission the server
        cannot take now (unreachable, restarting) is kept in the outbox and returned at once as
        a job with a negative id (``created`` True); :meth:`handover` submits it later under the
        same key. Pending outbox entries are handed over first, so the order is kept.
        """
        params = dict(params or {})
        pol = self._policy(kind)
        if priority is None:
            from appliance.offload.kinds import default_registry

            try:
                priority = default_registry().get(kind).priority
            except KeyError:
                priority = "batch"
        if priority not in CLASSES:
            raise ValueError(f"priority {priority!r} is not one of {', '.join(CLASSES)}")
        try:
            json.dumps(params, sort_keys=True)
        except TypeError as exc:
            raise ValueError(f"job parameters must be JSON: {exc}") from None
        key = key or job_key(kind, params, inputs, algorithm, algorithm_version)
        sub = {"kind": kind, "params": params, "priority": priority, "depends_on": depends_on,
               "output_dir": str(output_dir) if output_dir is not None else None, "algorithm": algorithm,
               "algorithm_version": algorithm_version, "max_attempts": max_attempts or pol.max_attempts,
               "reason": reason, "instrument_id": self.instrument_id if instrument_id is None else instrument_id}
        if self._outbox is None:
            return _transient(Ledger._submit_now)(self, key, sub, wait_s)
        if depends_on is not None and depends_on < 0 or self._db.down():
            return self._to_outbox(key, sub)
        try:
            self._handover(self._outbox)
            if depends_on is not None and depends_on < 0:  # its dependency is still in the outbox
                return self._to_outbox(key, sub)
            return self._submit_now(key, sub, wait_s)
        except Transient:
            return self._to_outbox(key, sub)

    def _submit_now(self, key: str, sub: dict, wait_s: float | None) -> Submitted:
        existing = self._by_key(key)
        if existing is not None:
            return Submitted(existing, False)
        priority, kind = sub["priority"], sub["kind"]
        params_json = json.dumps(sub["params"], sort_keys=True)
        wait = self.config.admission_wait_s if wait_s is None else wait_s
        deadline = self._clock() + wait
        while True:
            now = self._clock()
            submitted = None
            with self._tx() as c:
                # Decided inside the write transaction, with the submitters of every process
                # serialised (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock), so
                # concurrent ones cannot all slip in under a watermark.
                self._db.serialise_submitters(c)
                instrument = sub["instrument_id"] or ""
                # the key re-check and the admission figures in one statement (one round trip)
                existing, depth, first, mine = c.execute(
                    "SELECT (SELECT id FROM jobs WHERE key = ?), COUNT(*), MIN(created_at), "
                    "COALESCE(SUM(CASE WHEN instrument_id = ? THEN 1 ELSE 0 END), 0) "
                    "FROM jobs WHERE state IN ('queued','retrying')", (key, instrument)).fetchone()
                if existing is not None:  # another process submitted it meanwhile
                    return Submitted(self._get(c, existing), False)
                oldest = (self._clock() - first) if first is not None else None
                if not (self.watermarks.instrument_depth and priority != "realtime"):
                    mine = 0
                refusal = admits(priority, depth, oldest, self.watermarks, instrument, mine)
                if refusal is None:
                    depends_on = sub["depends_on"]
                    if depends_on is not None and self._get(c, depends_on) is None:
                        raise LedgerError(f"depends_on: no job {depends_on}")
                    insert = ("INSERT INTO jobs(key, kind, priority, params, state, attempts, max_attempts, "
                              "next_attempt_at, output_dir, algorithm, algorithm_version, depends_on, created_at, "
                              "instrument_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) RETURNING *")
                    args = (key, kind, priority, params_json, "queued", 0, sub["max_attempts"], now, sub["output_dir"],
                            sub["algorithm"], sub["algorithm_version"], depends_on, now, instrument)
                    if self.backend == "postgresql":  # the history entry and the NOTIFY in the same statement
                        job = _row_to_job(c.execute(_SUBMITTED_PG.format(insert=insert),
                                                    (*args, now, sub["reason"], _CHANNEL)).fetchone())
                    else:
                        job = _row_to_job(c.execute(insert, args).fetchone())
                        self._event(c, job.id, None, "queued", sub["reason"], None, now)
                    submitted = Submitted(job, True)
            self._alert(over_watermark(depth, oldest, self.watermarks))  # outside the transaction
            if submitted is not None:
                return submitted
            # Refused for now: wait outside any transaction (workers keep draining), then retry.
            if self._clock() >= deadline:
                self.refused += 1
                raise AdmissionRefused(f"{kind} job refused ({priority} class): {refusal}")
            time.sleep(min(0.5, max(0.01, deadline - self._clock())))

    # -- the outbox -------------------------------------------------------------------------------

    def _to_outbox(self, key: str, sub: dict) -> Submitted:
        entry, created = self._outbox.put(key, sub, self._clock())
        return Submitted(self._outbox_job(entry), created)

    def _outbox_job(self, entry: dict) -> Job:
        """The job an outbox entry stands for: its lab id once delivered, ``-entry`` before."""
        s = entry["submission"]
        return Job(id=entry["job_id"] if entry["job_id"] is not None else -entry["id"], key=entry["key"], kind=s["kind"],
                   priority=s["priority"], params=s["params"], state="queued", attempts=0, max_attempts=s["max_attempts"],
                   next_attempt_at=entry["created_at"], lease_owner=None, lease_expires=None, heartbeat_at=None,
                   error=None, error_transient=None, result=None, output_dir=s["output_dir"], algorithm=s["algorithm"],
                   algorithm_version=s["algorithm_version"], depends_on=s["depends_on"], created_at=entry["created_at"],
                   started_at=None, finished_at=None, instrument_id=s["instrument_id"] or "")

    def outbox_pending(self) -> int:
        """Submissions waiting in this instrument's outbox for the lab ledger (0 without one)."""
        return 0 if self._outbox is None else sum(box.count_pending() for box in (self._outbox, *self._drain))

    def handover(self) -> int:
        """Submit the outbox's pending entries to the lab ledger, oldest first, each under its
        own key (a repeat returns the job already there). Returns how many were delivered;
        stops quietly while the server is unreachable (they stay in the outbox). An entry
        refused by admission stays too, and is offered again at the next handover."""
        if self._outbox is None or self._db.down():
            return 0
        done = 0
        try:
            for box in (*self._drain, self._outbox):  # an earlier release's entries first: they are older
                done += self._handover(box)
        except Transient:
            pass
        return done

    def _handover(self, outbox) -> int:
        done = 0
        if outbox.count_pending() == 0:
            return 0
        for entry in outbox.pending():
            sub = dict(entry["submission"])
            dep = sub["depends_on"]
            if dep is not None and dep < 0:
                parent = outbox.get(-dep)
                if parent is None or parent["job_id"] is None:
                    continue  # its dependency is not in the lab yet
                sub["depends_on"] = parent["job_id"]
            try:
                got = self._submit_now(entry["key"], sub, 0)
            except AdmissionRefused:
                continue
            except LedgerError as exc:  # one bad entry must not block the others
                _log.warning("ledger outbox %s: entry %s (%s) not handed over: %s", outbox.path, entry["id"],
                             sub["kind"], exc)
                continue
            if got.job.output_dir is None and sub["output_dir"] is not None:
                self._set_output_dir(got.job.id, sub["output_dir"])
            outbox.delivered(entry["id"], got.job.id, self._clock())
            done += 1
        return done

    def set_output_dir(self, job_id: int, output_dir: str | Path) -> None:
        """Record where a job's output goes (the orchestrator fills it in at first dispatch)."""
        if job_id < 0 and self._outbox is not None:
            entry = self._outbox.get(-job_id)
            if entry is not None and entry["job_id"] is None:
                self._outbox.update(-job_id, output_dir=str(output_dir))
                return
            if entry is not None:
                job_id = entry["job_id"]
        _transient(Ledger._set_output_dir)(self, job_id, output_dir)

    def _set_output_dir(self, job_id: int, output_dir: str | Path) -> None:
        with self._tx() as c:
            c.execute("UPDATE jobs SET output_dir = ? WHERE id = ? AND output_dir IS NULL", (str(output_dir), job_id))

    # -- reading ----------------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        """The job (a negative id: an outbox entry, see :meth:`submit`)."""
        if job_id < 0 and self._outbox is not None:
            entry = self._outbox.get(-job_id)
            if entry is None:
                return None
            if entry["job_id"] is None:
                return self._outbox_job(entry)
            job_id = entry["job_id"]
        return self._get_by_id(job_id)

    @_transient
    def _get_by_id(self, job_id: int) -> Job | None:
        rows = self._read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _row_to_job(rows[0]) if rows else None

    def by_key(self, key: str) -> Job | None:
        """The job of an idempotency key (still in the outbox: as :meth:`submit` returned it)."""
        if self._outbox is not None:
            entry = self._outbox.by_key(key)
            if entry is not None and entry["job_id"] is None:
                return self._outbox_job(entry)
        return _transient(Ledger._by_key)(self, key)

    def _by_key(self, key: str) -> Job | None:
        rows = self._read("SELECT * FROM jobs WHERE key = ?", (key,))
        return _row_to_job(rows[0]) if rows else None

    @_transient
    def jobs(self, *, state: str | None = None, kind: str | None = None, priority: str | None = None,
             run: str | None = None, instrument: str | None = None, limit: int = 100) -> list[Job]:
        """Jobs newest first, filtered by state, kind, priority class, run (``params.run``) and
        instrument."""
        where, args = [], []
        for col, v in (("state", state), ("kind", kind), ("priority", priority),
                       (self._db.json_text("params", "run"), run), ("instrument_id", instrument)):
            if v is not None:
                where.append(f"{col} = ?")
                args.append(v)
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?"
        return [_row_to_job(r) for r in self._read(sql, (*args, int(limit)))]

    @_transient
    def events(self, job_id: int | None = None, limit: int = 1000) -> list[dict]:
        """A job's history (or the whole ledger's, newest last): time, from, to, owner, reason."""
        if job_id is None:
            rows = self._read("SELECT * FROM (SELECT * FROM events ORDER BY id DESC LIMIT ?) AS e ORDER BY id", (limit,))
        else:
            rows = self._read("SELECT * FROM events WHERE job_id = ? ORDER BY id LIMIT ?", (job_id, limit))
        return [dict(r) for r in rows]

    # Fair share across instruments within a class (the dispatch order): first the jobs of the
    # instruments with the fewest of the class in flight (leased or running), then round robin
    # over the instruments by each one's waiting order, then the oldest. One instrument's
    # backlog therefore holds another's job back by at most the jobs already in flight, as a
    # single instrument's own queue does, and it cannot push the job out of the first per_class.
    # With offload.instrument_weights the same order is weighted (the scheduler's rule): an
    # instrument's rn-th waiting job ranks by (in flight + rn - 1) / weight, the load it would
    # have when that job is picked, so the first per_class hold the weighted share of each.
    _BUSY = ("busy AS (SELECT instrument_id, count(*) AS n FROM jobs "
             "WHERE state IN ('leased','running') AND priority = ? GROUP BY instrument_id)")
    _RANKED = ("ranked AS (SELECT j.id, ROW_NUMBER() OVER "
               "(PARTITION BY j.instrument_id ORDER BY j.next_attempt_at, j.id) AS rn "
               "FROM jobs j LEFT JOIN jobs d ON j.depends_on = d.id "
               "WHERE j.state IN ('queued','retrying') AND j.priority = ? AND j.next_attempt_at <= ? "
               "AND (j.depends_on IS NULL OR d.state = 'succeeded')) ")
    _READY = ("WITH " + _BUSY + ", " + _RANKED +
              "SELECT j.* FROM ranked r JOIN jobs j ON j.id = r.id LEFT JOIN busy b ON b.instrument_id = j.instrument_id "
              "ORDER BY COALESCE(b.n, 0), r.rn, j.next_attempt_at, j.id LIMIT ?")
    _READY_WEIGHTED = ("WITH " + _BUSY + ", {weights}, " + _RANKED +
                       "SELECT j.* FROM ranked r JOIN jobs j ON j.id = r.id "
                       "LEFT JOIN busy b ON b.instrument_id = j.instrument_id "
                       "LEFT JOIN w ON w.instrument_id = j.instrument_id "
                       "ORDER BY (COALESCE(b.n, 0) + r.rn - 1) / COALESCE(w.weight, 1.0), r.rn, j.next_attempt_at, j.id "
                       "LIMIT ?")

    def _weights(self) -> tuple[str, tuple]:
        """``w(instrument_id, weight)``: offload.instrument_weights as a VALUES list and its
        parameters (("", ()) without weights: the unweighted statements are used)."""
        weights = self.config.instrument_weights
        if not weights:
            return "", ()
        rows = ", ".join(["(CAST(? AS TEXT), CAST(? AS DOUBLE PRECISION))"] * len(weights))
        args = tuple(v for inst, w in sorted(weights.items()) for v in (str(inst), float(w)))
        return f"w(instrument_id, weight) AS (VALUES {rows})", args

    @_transient
    def ready(self, per_class: int = 64, now: float | None = None) -> list[Job]:
        """Jobs that may be leased now (waiting, backoff over, dependency succeeded), at most
        ``per_class`` of each class, in dispatch order: within a class, fair share across
        instruments (the instruments with the fewest jobs in flight first, round robin; with
        ``offload.instrument_weights``, the least in flight per unit of weight), then oldest
        first."""
        now = self._clock() if now is None else now
        weights, wargs = self._weights()
        sql = self._READY_WEIGHTED.format(weights=weights) if weights else self._READY
        out: list[Job] = []
        for cls in CLASSES:
            out.extend(_row_to_job(r) for r in self._read(sql, (cls, *wargs, cls, now, per_class)))
        return out

    @_transient
    def in_flight(self) -> list["InFlightRow"]:
        """Leased and running jobs counted per class, lease owner and instrument (one query:
        what the dispatcher needs each tick for its own limits and the instruments' weights)."""
        rows = self._read("SELECT priority, COALESCE(lease_owner, ''), instrument_id, COUNT(*) FROM jobs "
                          "WHERE state IN ('leased','running') GROUP BY priority, lease_owner, instrument_id")
        return [InFlightRow(str(r[0]), str(r[1]), str(r[2] or ""), int(r[3])) for r in rows]

    def running_by_class(self) -> dict[str, int]:
        """Leased and running jobs per class (every owner)."""
        counts = {c: 0 for c in CLASSES}
        for r in self._read("SELECT priority, COUNT(*) FROM jobs WHERE state IN ('leased','running') GROUP BY priority"):
            counts[r[0]] = r[1]
        return counts

    # -- leases -----------------------------------------------------------------------------------

    @_transient
    def lease(self, job_id: int, owner: str, lease_s: float) -> Job | None:
        """Take a waiting job for ``owner`` (one attempt counted); None if it is no longer waiting."""
        now = self._clock()
        with self._tx() as c:
            cur = c.execute(
                "UPDATE jobs SET state='leased', lease_owner=?, lease_expires=?, heartbeat_at=?, attempts=attempts+1 "
                "WHERE id=? AND state IN ('queued','retrying') AND next_attempt_at <= ?",
                (owner, now + lease_s, now, job_id, now))
            if cur.rowcount != 1:
                return None
            job = self._get(c, job_id)
            self._event(c, job_id, None, "leased", f"attempt {job.attempts} of {job.max_attempts}", owner, now, job)
            return job

    # the same fair share as ready() (the instrument with the fewest in flight, per unit of
    # weight, then the oldest), across the classes in one statement: the highest class first
    _RANK = "CASE j.priority " + " ".join(f"WHEN '{c}' THEN {i}" for i, c in enumerate(CLASSES)) + " END"
    _LEASE_NEXT = ("UPDATE jobs SET state='leased', lease_owner=?, lease_expires=?, heartbeat_at=?, attempts=attempts+1 "
                   "WHERE id = (WITH busy AS (SELECT priority, instrument_id, count(*) AS n FROM jobs "
                   "WHERE state IN ('leased','running') AND priority IN ({classes}) GROUP BY priority, instrument_id){weights} "
                   "SELECT j.id FROM jobs j LEFT JOIN jobs d ON j.depends_on = d.id "
                   "LEFT JOIN busy b ON b.instrument_id = j.instrument_id AND b.priority = j.priority{join} "
                   "WHERE j.state IN ('queued','retrying') AND j.next_attempt_at <= ? AND j.priority IN ({classes}) "
                   "AND (j.depends_on IS NULL OR d.state = 'succeeded') "
                   "ORDER BY " + _RANK + ", COALESCE(b.n, 0){per_weight}, j.next_attempt_at, j.id LIMIT 1{lock}) RETURNING *")

    @_transient
    def lease_next(self, owner: str, lease_s: float, priority: str | None = None) -> Job | None:
        """Lease the next ready job (of ``priority``, or the highest class with one) in one
        transaction: within the class, that of the instrument with the fewest jobs in flight
        (fair share; with ``offload.instrument_weights`` the fewest per unit of weight), then
        the oldest. On PostgreSQL the candidate row is taken ``FOR UPDATE SKIP LOCKED``: many
        orchestrators lease from one table at once, each skipping the rows the others hold."""
        now = self._clock()
        classes = CLASSES if priority is None else (priority,)
        weights, wargs = self._weights()
        # one statement finds, locks and leases the row (one round trip on PostgreSQL)
        sql = self._LEASE_NEXT.format(
            classes=", ".join("?" * len(classes)), lock=self._db.skip_locked,
            weights=", " + weights if weights else "", join=" LEFT JOIN w ON w.instrument_id = j.instrument_id" if weights else "",
            per_weight=" / COALESCE(w.weight, 1.0)" if weights else "")
        args = (owner, now + lease_s, now, *classes, *wargs, now, *classes)
        logged = False
        with self._tx() as c:
            if self.backend == "postgresql":  # and its history entry in the same statement
                row = c.execute(_LEASED_PG.format(lease=sql), (*args, now, owner)).fetchone()
                logged = row is not None and row["logged"]
            else:
                row = c.execute(sql, args).fetchone()
            if row is None:
                return None
            job = _row_to_job(row)
            if not logged:
                self._event(c, job.id, None, "leased", f"attempt {job.attempts} of {job.max_attempts}", owner, now, job)
            return job

    @_transient
    def start(self, job_id: int, owner: str, lease_s: float | None = None) -> bool:
        """The leased job's attempt began (leased -> running); False if the lease was lost."""
        now = self._clock()
        with self._tx() as c:
            row = c.execute(
                "UPDATE jobs SET state='running', started_at=?, heartbeat_at=?, "
                "lease_expires=COALESCE(?, lease_expires) WHERE id=? AND state='leased' AND lease_owner=? RETURNING *",
                (now, now, None if lease_s is None else now + lease_s, job_id, owner)).fetchone()
            if row is not None:
                self._event(c, job_id, "leased", "running", "", owner, now, _row_to_job(row))
            return row is not None

    @_transient
    def heartbeat(self, job_id: int, owner: str, lease_s: float) -> bool:
        """Extend ``owner``'s lease on the job; False if it holds it no longer (expired, cancelled)."""
        now = self._clock()
        # one statement, its own transaction (one round trip on PostgreSQL)
        return bool(self._db.statement(
            "UPDATE jobs SET lease_expires=?, heartbeat_at=? WHERE id=? AND lease_owner=? "
            "AND state IN ('leased','running') RETURNING id", (now + lease_s, now, job_id, owner)))

    @_transient
    def complete(self, job_id: int, owner: str, result: Mapping[str, Any] | None) -> bool:
        """Record success. Accepted unless the job was cancelled or already succeeded: an output
        committed after the lease was lost is still the job's one correct output."""
        now = self._clock()
        result_json = json.dumps(result or {}, sort_keys=True)
        if self.backend == "postgresql" and self._db.statement(
                _COMPLETE_PG, (job_id, result_json, now, now, owner, owner, owner, _CHANNEL)):
            return True
        # SQLite; or on PostgreSQL a job the one statement leaves alone (none, done, or a run id
        # that is not a string): the same change in a transaction, deciding in Python
        with self._tx() as c:
            job = self._must(c, job_id)
            if job.state in ("succeeded", "cancelled"):
                return False
            c.execute("UPDATE jobs SET state='succeeded', result=?, finished_at=?, lease_owner=NULL, "
                      "lease_expires=NULL, error=NULL, error_transient=NULL WHERE id=?", (result_json, now, job_id))
            reason = "completed" if job.lease_owner == owner else f"completed by {owner} (lease had been lost)"
            self._event(c, job_id, job.state, "succeeded", reason, owner, now, job)
            self._db.notify(c, "complete")
            return True

    def _failed(self, c, job: Job, error: str, transient: bool, owner: str | None, now: float) -> Job:
        pol = self._policy(job.kind)
        if transient and job.attempts < job.max_attempts:
            delay = backoff_delay(job.attempts, pol.backoff_s, pol.backoff_cap_s, self._rng)
            c.execute("UPDATE jobs SET state='retrying', next_attempt_at=?, error=?, error_transient=1, "
                      "lease_owner=NULL, lease_expires=NULL WHERE id=?", (now + delay, error, job.id))
            self._event(c, job.id, job.state, "retrying", f"{error} (retry in {delay:.1f} s)", owner, now, job)
        else:
            why = "attempts used up" if transient else "permanent error"
            c.execute("UPDATE jobs SET state='held', error=?, error_transient=?, finished_at=?, lease_owner=NULL, "
                      "lease_expires=NULL WHERE id=?", (error, int(transient), now, job.id))
            self._event(c, job.id, job.state, "held", f"{why}: {error}", owner, now, job)
        return self._get(c, job.id)

    @_transient
    def fail(self, job_id: int, owner: str, error: str, transient: bool) -> Job | None:
        """Record a failed attempt: retrying with backoff, or held (permanent, or attempts used
        up). None if ``owner`` no longer holds the job."""
        now = self._clock()
        with self._tx() as c:
            job = self._must(c, job_id)
            if job.state not in ACTIVE or job.lease_owner != owner:
                return None
            return self._failed(c, job, error, transient, owner, now)

    @_transient
    def release(self, job_id: int, owner: str, reason: str = "released") -> bool:
        """Give a leased or running job back (queued, its attempt not counted): a drain."""
        now = self._clock()
        with self._tx() as c:
            job = self._must(c, job_id)
            if job.state not in ACTIVE or job.lease_owner != owner:
                return False
            c.execute("UPDATE jobs SET state='queued', attempts=CASE WHEN attempts > 0 THEN attempts-1 ELSE 0 END, lease_owner=NULL, "
                      "lease_expires=NULL, next_attempt_at=? WHERE id=?", (now, job_id))
            self._event(c, job_id, job.state, "queued", reason, owner, now, job)
            return True

    @_transient
    def expire_leases(self, now: float | None = None) -> list[Job]:
        """Jobs whose lease ran out (their worker died or hung) -> retrying, or held past their
        attempts. Returns the jobs as they are now."""
        now = self._clock() if now is None else now
        out = []
        with self._tx() as c:
            rows = c.execute("SELECT * FROM jobs j WHERE state IN ('leased','running') AND lease_expires < ?"
                             + self._db.skip_locked, (now,)).fetchall()
            for row in rows:
                job = _row_to_job(row)
                msg = f"lease of {job.lease_owner} expired (no heartbeat for {now - (job.heartbeat_at or now):.1f} s: worker died or hung)"
                out.append(self._failed(c, job, msg, True, None, now))
        return out

    @_transient
    def resolve_dependencies(self) -> list[Job]:
        """Waiting jobs whose dependency is held -> held, cancelled -> cancelled (chains too)."""
        now = self._clock()
        out = []
        with self._tx() as c:
            while True:
                rows = c.execute(
                    "SELECT j.id, j.state, d.id AS dep, d.state AS dep_state FROM jobs j JOIN jobs d ON j.depends_on = d.id "
                    "WHERE j.state IN ('queued','retrying') AND d.state IN ('held','cancelled')").fetchall()
                if not rows:
                    break
                for r in rows:
                    to = r["dep_state"]
                    msg = f"dependency {r['dep']} is {to}"
                    cur = c.execute("UPDATE jobs SET state=?, error=?, error_transient=NULL, finished_at=? "
                                    "WHERE id=? AND state IN ('queued','retrying')", (to, msg, now, r["id"]))
                    if cur.rowcount != 1:
                        continue  # another orchestrator settled it
                    self._event(c, r["id"], r["state"], to, msg, None, now)
                    out.append(self._get(c, r["id"]))
        return out

    # -- operator actions -------------------------------------------------------------------------

    @_transient
    def retry(self, job_id: int, reason: str = "retry requested") -> Job:
        """Run a retrying job now (skip its backoff), or give a held job one more attempt."""
        now = self._clock()
        with self._tx() as c:
            job = self._must(c, job_id)
            if job.state == "retrying":
                c.execute("UPDATE jobs SET next_attempt_at=? WHERE id=?", (now, job_id))
                self._event(c, job_id, "retrying", "retrying", reason + " (backoff skipped)", None, now)
            elif job.state == "held":
                c.execute("UPDATE jobs SET state='queued', next_attempt_at=?, "
                          "max_attempts=CASE WHEN max_attempts > attempts THEN max_attempts ELSE attempts+1 END, "
                          "finished_at=NULL WHERE id=?", (now, job_id))
                self._event(c, job_id, "held", "queued", reason + " (one more attempt)", None, now)
                self._requeue_dependents(c, job_id, now)
            else:
                raise LedgerError(f"job {job_id} is {job.state}: only retrying or held jobs can be retried "
                                  "(requeue a cancelled job)")
            return self._get(c, job_id)

    def _requeue_dependents(self, c, job_id: int, now: float) -> None:
        for r in c.execute("SELECT id, state FROM jobs WHERE depends_on=? AND state IN ('held','cancelled') "
                           "AND error LIKE 'dependency % is %'", (job_id,)).fetchall():
            c.execute("UPDATE jobs SET state='queued', attempts=0, error=NULL, next_attempt_at=?, finished_at=NULL "
                      "WHERE id=?", (now, r["id"]))
            self._event(c, r["id"], r["state"], "queued", f"dependency {job_id} requeued", None, now)
            self._requeue_dependents(c, r["id"], now)

    @_transient
    def requeue(self, job_id: int, reason: str = "requeued") -> Job:
        """A held or cancelled job -> queued with its attempts reset (and the jobs that were held
        or cancelled only because they depend on it)."""
        now = self._clock()
        with self._tx() as c:
            job = self._must(c, job_id)
            if job.state not in ("held", "cancelled"):
                raise LedgerError(f"job {job_id} is {job.state}: only held or cancelled jobs can be requeued")
            c.execute("UPDATE jobs SET state='queued', attempts=0, error=NULL, error_transient=NULL, next_attempt_at=?, "
                      "finished_at=NULL WHERE id=?", (now, job_id))
            self._event(c, job_id, job.state, "queued", reason, None, now)
            self._requeue_dependents(c, job_id, now)
            return self._get(c, job_id)

    @_transient
    def cancel(self, job_id: int, reason: str = "cancelled") -> Job:
        """Cancel a job that has not succeeded; a running attempt loses its lease (its result is
        then refused) and jobs depending on it are cancelled at the next dispatch."""
        now = self._clock()
        with self._tx() as c:
            job = self._must(c, job_id)
            if job.state in ("succeeded", "cancelled"):
                raise LedgerError(f"job {job_id} is {job.state}: nothing to cancel")
            c.execute("UPDATE jobs SET state='cancelled', lease_owner=NULL, lease_expires=NULL, finished_at=? "
                      "WHERE id=?", (now, job_id))
            self._event(c, job_id, job.state, "cancelled", reason, job.lease_owner, now, job if job.state in ACTIVE else None)
            return self._get(c, job_id)

    # -- figures ----------------------------------------------------------------------------------

    def _depth_and_age(self, c=None) -> tuple[int, float | None]:
        """(queued + retrying jobs, age of the oldest), read in transaction ``c`` if given."""
        sql = "SELECT COUNT(*), MIN(created_at) FROM jobs WHERE state IN ('queued','retrying')"
        row = c.execute(sql).fetchone() if c is not None else self._read(sql)[0]
        return row[0], (self._clock() - row[1]) if row[1] is not None else None

    def _alert(self, message: str | None) -> None:
        which = None if message is None else ("depth" if message.startswith("ledger depth") else "age")
        if which == self._alert_active:
            return
        was, self._alert_active = self._alert_active, which
        if self.on_alert is None:
            return
        if message is not None:
            self.on_alert({"rule": ALERT_RULE, "action": "raised", "severity": "warning", "subject": str(self.path), "message": message})
        elif was is not None:
            self.on_alert({"rule": ALERT_RULE, "action": "cleared", "severity": "warning", "subject": str(self.path),
                           "message": f"ledger back under its {was} watermark"})

    @_transient
    @_transient
    def backlog_by_instrument(self) -> dict[str, dict]:
        """Per instrument: waiting jobs (queued + retrying) per class, jobs in flight (leased
        or running), and the age of its oldest waiting job (``appliance lab status``)."""
        now = self._clock()
        out: dict[str, dict] = {}
        for r in self._read("SELECT instrument_id, priority, state, COUNT(*), MIN(created_at) FROM jobs "
                            "WHERE state IN ('queued','retrying','leased','running') GROUP BY instrument_id, priority, state"):
            row = out.setdefault(r[0] or "", {"waiting": {c: 0 for c in CLASSES}, "in_flight": 0, "oldest_waiting_age_s": None})
            if r[2] in ("queued", "retrying"):
                row["waiting"][r[1]] = row["waiting"].get(r[1], 0) + r[3]
                age = now - r[4]
                old = row["oldest_waiting_age_s"]
                row["oldest_waiting_age_s"] = age if old is None else max(old, age)
            else:
                row["in_flight"] += r[3]
        return out

    def stats(self, recent: int = 10) -> dict:
        """Counts per class and state, oldest waiting age per class, running, held, recent
        failures and backpressure (the shape is documented in docs/offload.md)."""
        now = self._clock()
        classes = {c: {**{s: 0 for s in STATES}, "oldest_queued_age_s": None} for c in CLASSES}
        states = {s: 0 for s in STATES}
        for r in self._read("SELECT priority, state, COUNT(*), MIN(CASE WHEN state IN ('queued','retrying') "
                            "THEN created_at END) FROM jobs GROUP BY priority, state"):
            cls = classes.setdefault(r[0], {**{s: 0 for s in STATES}, "oldest_queued_age_s": None})
            cls[r[1]] = r[2]
            states[r[1]] = states.get(r[1], 0) + r[2]
            if r[3] is not None:
                age = now - r[3]
                old = cls["oldest_queued_age_s"]
                cls["oldest_queued_age_s"] = age if old is None else max(old, age)
        for cls in classes.values():
            cls["depth"] = cls["queued"] + cls["retrying"]
        failures = [
            {"job": r["job_id"], "kind": r["kind"], "at": r["at"], "state": r["to_state"], "reason": r["reason"]}
            for r in self._read("SELECT e.job_id, e.at, e.to_state, e.reason, j.kind FROM events e JOIN jobs j ON j.id = e.job_id "
                                "WHERE e.to_state IN ('retrying','held') AND (e.from_state IS NULL OR e.from_state <> e.to_state) "
                                "ORDER BY e.id DESC LIMIT ?", (recent,))
        ]
        depth, oldest = self._depth_and_age()
        message = over_watermark(depth, oldest, self.watermarks)
        self._alert(message)
        return {
            "at": now,
            "classes": classes,
            "states": states,
            "depth": depth,
            "oldest_queued_age_s": oldest,
            "running": states["leased"] + states["running"],
            "held": states["held"],
            "recent_failures": failures,
            "backpressure": {"active": message is not None, "message": message, "depth_high": self.watermarks.depth,
                             "oldest_age_s": self.watermarks.oldest_age_s, "refused_here": self.refused},
        }
