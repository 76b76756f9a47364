"""The registry of named, versioned algorithms: the real-time kernel chain's and base caller's
parameters plus the code that builds the chain, with a production and a candidate channel.

An :class:`Algorithm` is ``name@version`` with parameters (overrides of the pipeline's own
defaults: ``{"chain": {ChainConfig field: value}, "basecall": {lag, window,
estimation_cycles}}``) and an entry point ``"module:function"`` called like
``kernels.chain.TileChain(shape, config, dark=..., xp=...)``. The built-in ``chain@1`` (no
overrides, the built-in chain) is production until something else is promoted.

One :class:`AlgorithmRegistry`, one document (the algorithms, the ``production`` and
``candidate`` channels, the ``previous`` productions, per-instrument ``pins`` and the
``history``), and two stores of it:

- the data root's file ``<data_root>/.offload/algorithms.json`` (an instrument with its own
  SQLite ledger): every change is a read-modify-write under an exclusive ``fcntl.flock`` on
  ``algorithms.lock`` and lands by an atomic rename, so two processes never lose each other's
  changes and a crash never leaves half a file;
- the lab database when ``offload.ledger`` is a PostgreSQL URL: one row of
  ``algorithm_registries`` (a jsonb document), changed in one transaction under ``SELECT ...
  FOR UPDATE``, so every instrument of the lab sees one production, one candidate and the
  same pins. The tables' schema is versioned (``algorithm_registry_schema``) and a database
  from a newer release is refused.

``promote`` makes the candidate production and remembers the previous production;
``rollback`` drops the candidate, or (with no candidate) restores the previous production;
``pin`` makes one instrument's runs use a given version instead of production.

The real-time pipeline asks :func:`run_algorithm` once per run: the instrument's pinned
algorithm, or else production, is recorded in the run's state folder (``algorithm.json``, with
which pin applied or ``"source": "production"``), so a promotion during a run takes effect with
the next run, and a restarted stage keeps the run's algorithm. With the lab database
unreachable at a run's start, the last copy this instrument read
(``<data_root>/.offload/algorithms.lab.json``) decides, and the record says so.
"""

from __future__ import annotations

import dataclasses
import fcntl
import importlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "Algorithm",
    "AlgorithmError",
    "AlgorithmRegistry",
    "BUILTIN",
    "RegistryUnavailable",
    "build_chain",
    "is_lab_target",
    "param_keys",
    "pipeline_settings",
    "read_run_record",
    "registry_target",
    "run_algorithm",
    "run_algorithm_info",
    "validate_params",
]

log = logging.getLogger(__name__)

FORMAT = "appliance-algorithms"
FORMAT_VERSION = 2  #: 2 added ``pins``; a version-1 document is read as one without pins
REGISTRY_FILE = "algorithms.json"
LAB_CACHE_FILE = "algorithms.lab.json"
LOCK_FILE = "algorithms.lock"
RUN_RECORD = "algorithm.json"
DEFAULT_ENTRY = "kernels.chain:TileChain"
BUILTIN_NAME, BUILTIN_VERSION = "chain", "1"
_BASECALL_KEYS = ("lag", "window", "estimation_cycles")


def _chain_keys() -> tuple[str, ...]:
    from kernels.chain import ChainConfig

    return tuple(f.name for f in dataclasses.fields(ChainConfig))


class AlgorithmError(ValueError):
    """A bad algorithm (unknown name, invalid parameters) or an unusable registry file; the
    message names the problem and the fix."""


def param_keys() -> dict[str, tuple[str, ...]]:
    """Parameter section -> the parameter names allowed in it."""
    return {"chain": _chain_keys(), "basecall": _BASECALL_KEYS}


def validate_params(params: Any) -> dict:
    """``params`` checked and normalised (sections and keys sorted); AlgorithmError naming
    the unknown section/key and the allowed ones, or the invalid value."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise AlgorithmError(f"algorithm parameters must be a table of sections (chain, basecall), got {type(params).__name__}")
    keys = param_keys()
    out: dict = {}
    for section, values in params.items():
        if section not in keys:
            raise AlgorithmError(f"unknown parameter section {section!r}; allowed: {', '.join(keys)}")
        if not isinstance(values, dict):
            raise AlgorithmError(f"parameter section {section!r} must be a table of key = value")
        unknown = sorted(set(values) - set(keys[section]))
        if unknown:
            raise AlgorithmError(f"unknown {section} parameter(s) {', '.join(unknown)}; allowed: {', '.join(keys[section])}")
        if values:
            out[section] = {k: values[k] for k in sorted(values)}
    chain = out.get("chain", {})
    if chain:
        from kernels.chain import ChainConfig

        try:
            ChainConfig(**chain)
        except (TypeError, ValueError) as exc:
            raise AlgorithmError(f"chain parameters: {exc}") from None
    for k, v in out.get("basecall", {}).items():
        low = 6 if k == "estimation_cycles" else 0
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise AlgorithmError(f"basecall parameter {k}={v!r} is invalid; allowed: an integer >= {low}")
    return out


def _check_entry(entry: str) -> str:
    if not isinstance(entry, str) or entry.count(":") != 1 or not all(entry.split(":")):
        raise AlgorithmError(f"entry={entry!r} must be 'module:function' (e.g. {DEFAULT_ENTRY})")
    return entry


def _check_id(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value or any(c in value for c in "@/ \t\n") or value.startswith("."):
        raise AlgorithmError(f"algorithm {what}={value!r} must be a non-empty string without '@', '/' or spaces")
    return value


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """One named, versioned algorithm (see the module docstring)."""

    name: str
    version: str
    params: dict = dataclasses.field(default_factory=dict, hash=False, compare=True)
    entry: str = DEFAULT_ENTRY
    appliance_version: str = ""
    registered_at: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"

    def chain_config(self, **base):
        """The ChainConfig: the pipeline's ``base`` values overridden by ``params.chain``."""
        from kernels.chain import ChainConfig

        return ChainConfig(**{**base, **self.params.get("chain", {})})

    def basecall_kwargs(self) -> dict:
        """Keyword arguments for :class:`kernels.basecall.StreamingBasecaller`."""
        return dict(self.params.get("basecall", {}))

    def chain_factory(self):
        module, func = _check_entry(self.entry).split(":")
        try:
            return getattr(importlib.import_module(module), func)
        except (ImportError, AttributeError) as exc:
            raise AlgorithmError(f"algorithm {self.key}: entry {self.entry!r} cannot be loaded ({exc}); install its module or register a fixed version") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Algorithm:
        try:
            return cls(
                name=_check_id("name", d["name"]),
                version=_check_id("version", str(d["version"])),
                params=validate_params(d.get("params") or {}),
                entry=_check_entry(d.get("entry") or DEFAULT_ENTRY),
                appliance_version=str(d.get("appliance_version", "")),
                registered_at=float(d.get("registered_at", 0.0)),
            )
        except (KeyError, TypeError) as exc:
            raise AlgorithmError(f"not an algorithm record ({exc!r}): {d!r}") from None


def _appliance_version() -> str:
    from appliance._version import __version__

    return __version__


BUILTIN = Algorithm(BUILTIN_NAME, BUILTIN_VERSION, {}, DEFAULT_ENTRY, "builtin", 0.0)


def _empty() -> dict:
    return {"format": FORMAT, "version": FORMAT_VERSION, "algorithms": [], "production": BUILTIN.key, "candidate": None,
            "previous": [], "pins": {}, "history": []}


def _now() -> float:
    return round(time.time(), 3)


def _who() -> str:
    """Who changed the registry: ``host:pid`` (recorded in the history and on pins)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def is_lab_target(target: Any) -> bool:
    """``target`` (``offload.ledger``) names the lab's PostgreSQL database."""
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def registry_target(config: Any) -> str | None:
    """The lab database URL the registry lives in for ``config`` (a run config, an
    :class:`~appliance.offload.OffloadConfig`, an ``offload.ledger`` string or None), or None
    for the data root's file (a SQLite ledger keeps the registry on the instrument)."""
    if isinstance(config, (str, os.PathLike)) or config is None:
        ledger = config
    else:
        off = getattr(config, "offload", config)
        ledger = getattr(off, "ledger", None) if off is not None else None
    if isinstance(ledger, str) and ledger.startswith(("postgresql:", "postgres:")) and not is_lab_target(ledger):
        raise AlgorithmError(f"offload.ledger {ledger!r} looks like a PostgreSQL URL but is not one: write "
                             "postgresql://USER@HOST/DB or postgresql:///DB?host=/run/postgresql (two slashes)")
    return str(ledger) if is_lab_target(ledger) else None


def _check_instrument(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 16 or not all(ch.isalnum() or ch == "-" for ch in value):
        raise AlgorithmError(f"instrument {value!r} must be an instrument id as in run.instrument_id: 1-16 letters, digits or '-'")
    return value


class RegistryUnavailable(AlgorithmError):
    """The lab database that holds the registry cannot be reached (lost connection, server
    down, refused login); the message names the database (password masked) and the fix."""


def _decode(raw: Any, where: str, fix: str) -> dict:
    """The stored document checked and normalised (format 1, without pins, is read as 2)."""
    if raw is None:
        return _empty()
    version = raw.get("version") if isinstance(raw, dict) else None
    if isinstance(raw, dict) and raw.get("format") == FORMAT and isinstance(version, int) and version > FORMAT_VERSION:
        raise AlgorithmError(f"{where}: the algorithm registry has format version {version}, newer than this appliance's "
                             f"{FORMAT_VERSION}: upgrade the appliance software (every instrument of a lab runs the same "
                             "release, docs/lab.md)")
    try:
        if not isinstance(raw, dict) or raw.get("format") != FORMAT or version not in (1, FORMAT_VERSION):
            fmt = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
            raise ValueError(f"format {fmt!r} version {version!r}")
        doc = {**_empty(), **raw, "version": FORMAT_VERSION}
        doc["algorithms"] = [Algorithm.from_dict(a).to_dict() for a in doc["algorithms"]]
        if not isinstance(doc["pins"], dict) or not all(isinstance(p, dict) and isinstance(p.get("algorithm"), str)
                                                        for p in doc["pins"].values()):
            raise ValueError(f"pins {doc['pins']!r}")
        if not isinstance(doc["previous"], list) or not isinstance(doc["history"], list):
            raise ValueError("previous and history must be lists")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AlgorithmError(f"{where}: not a readable algorithm registry ({exc}); {fix}") from None
    return doc


def _all(doc: dict) -> dict[str, Algorithm]:
    algos = {BUILTIN.key: BUILTIN}
    for a in doc["algorithms"]:
        alg = Algorithm.from_dict(a)
        algos[alg.key] = alg
    return algos


def _resolve(doc: dict, instrument: str | None) -> tuple[Algorithm, dict | None]:
    """(the algorithm ``instrument``'s runs use, its pin or None): the pin if it has one, else production."""
    algos = _all(doc)
    pin = doc["pins"].get(instrument) if instrument else None
    if pin is not None:
        alg = algos.get(pin["algorithm"])
        if alg is not None:
            return alg, {"instrument": instrument, **pin}
        log.warning("instrument %s is pinned to %s, which is not registered: using production %s", instrument,
                    pin["algorithm"], doc["production"])
    return algos.get(doc["production"], BUILTIN), None


def _event(doc: dict, event: str, algorithm: str | None, previous: str | None, **extra) -> None:
    doc["history"].append({"t": _now(), "event": event, "algorithm": algorithm, "previous": previous, "by": _who(), **extra})


# -- the two stores of the one document ------------------------------------------------------------

class _FileStore:
    """The document as ``<data_root>/.offload/algorithms.json``: every change a read-modify-write
    under an exclusive ``fcntl.flock`` on ``algorithms.lock``, landed by an atomic rename."""

    backend = "file"
    fix = "restore it from a backup or move it away (the built-in chain@1 is then production)"

    def __init__(self, folder: Path) -> None:
        self.dir = folder
        self.path = folder / REGISTRY_FILE
        self.where = str(self.path)

    def read(self) -> Any:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise AlgorithmError(f"{self.where}: not a readable algorithm registry ({exc}); {self.fix}") from None

    def update(self, change: Callable[[Any], tuple[dict, Any]]) -> Any:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            doc, result = change(self.read())
            _write_atomic(self.path, doc)
            return result
        finally:
            os.close(fd)  # closing releases the lock

    def close(self) -> None:
        """Nothing held between calls."""


def _write_atomic(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


#: the lab database's tables of the registry; their schema is versioned like the ledger's
PG_TABLE = "algorithm_registries"
PG_SCHEMA_TABLE = "algorithm_registry_schema"
#: schema migrations, each a list of statements; the schema version is len() of those applied
PG_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (f"CREATE TABLE {PG_TABLE} (name TEXT PRIMARY KEY, doc JSONB, revision BIGINT NOT NULL DEFAULT 0, "
     "updated_at DOUBLE PRECISION NOT NULL DEFAULT 0, updated_by TEXT NOT NULL DEFAULT '')",),
)
_PG_MIGRATE_LOCK = 0x616C676F_0001  # pg_advisory_xact_lock key ("algo"): registry migrations
_PG_FIX = "restore the lab database from its backup (docs/lab.md), or delete the row to start again from chain@1"


class _PgStore:
    """The document as one row (``name``, jsonb ``doc``, ``revision``) of ``algorithm_registries``
    in the lab database. A change is one transaction: ``SELECT ... FOR UPDATE`` of the row (so
    every writer of the lab queues on it), the change, ``UPDATE``. Connections and transactions
    are the offload ledger's :class:`~appliance.offload.backend.PgBackend`."""

    backend = "postgresql"
    fix = _PG_FIX

    def __init__(self, dsn: str, name: str, connect_timeout_s: float) -> None:
        # the leaf module, not the appliance.offload package: the orchestrator imports this one
        from appliance.offload.backend import PgBackend, Transient

        self._transient = Transient
        self.name = name
        try:
            self._db = PgBackend(dsn, error=RegistryUnavailable, connect_timeout_s=connect_timeout_s)
        except RegistryUnavailable as exc:
            raise RegistryUnavailable(f"the lab algorithm registry: {exc}") from None
        import psycopg

        self._pg = psycopg
        self.dsn = self._db.where  # the password masked
        self.where = f"{self.dsn} (table {PG_TABLE}, registry {name!r})"
        try:
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def _unreachable(self, exc: Exception, outcome: str) -> RegistryUnavailable:
        return RegistryUnavailable(
            f"the lab algorithm registry in {self.dsn} cannot be reached ({exc}); {outcome}. Check offload.ledger "
            "(postgresql://USER@HOST/DB or postgresql:///DB?host=/run/postgresql), that the server runs (pg_isready) "
            "and that pg_hba.conf lets this role in (docs/lab.md), then repeat the command")

    def _refused(self, exc: Exception, what: str) -> AlgorithmError:
        return AlgorithmError(f"{self.where}: the database refused to {what} ({' '.join(str(exc).split())}); "
                              "check the role's grants on the registry tables (docs/lab.md)")

    def _migrate(self) -> int:
        """Bring the tables to ``len(PG_MIGRATIONS)`` in one transaction under an advisory lock;
        refuse a database from a newer release."""
        try:  # the ledger backend's migration, on the registry's own tables and lock
            return self._db.migrate(PG_MIGRATIONS, table=PG_SCHEMA_TABLE, lock=_PG_MIGRATE_LOCK, what=f"the algorithm registry in {self.dsn}",
                                    owner_command="appliance algo ls", refused=AlgorithmError)
        except self._transient as exc:
            raise self._unreachable(exc, "nothing was changed") from None
        except self._pg.Error as exc:
            raise self._refused(exc, "set up the registry tables") from None

    def schema_version(self) -> int:
        rows = self._db.read(f"SELECT version FROM {PG_SCHEMA_TABLE}")
        return rows[0][0] if rows else 0

    def read(self) -> Any:
        for attempt in range(2):  # a read is safe to repeat on a new connection
            try:
                rows = self._db.read(f"SELECT doc FROM {PG_TABLE} WHERE name = ?", (self.name,))
                return rows[0][0] if rows else None
            except self._transient as exc:
                if attempt:
                    raise self._unreachable(exc, "nothing was read") from None
                time.sleep(0.05)
            except self._pg.Error as exc:
                raise self._refused(exc, "read the registry") from None
        raise AssertionError("unreachable")

    def update(self, change: Callable[[Any], tuple[dict, Any]]) -> Any:
        select = f"SELECT doc FROM {PG_TABLE} WHERE name = ? FOR UPDATE"
        for attempt in range(2):
            locked = False
            try:
                with self._db.tx() as c:
                    row = c.execute(select, (self.name,)).fetchone()
                    if row is None:  # the registry's first change: create its row (two first writers: one wins)
                        c.execute(f"INSERT INTO {PG_TABLE} (name, doc) VALUES (?, NULL) ON CONFLICT (name) DO NOTHING",
                                  (self.name,))
                        row = c.execute(select, (self.name,)).fetchone()
                    locked = True
                    doc, result = change(row[0])
                    c.execute(f"UPDATE {PG_TABLE} SET doc = ?::jsonb, revision = revision + 1, updated_at = ?, "
                              "updated_by = ? WHERE name = ?", (json.dumps(doc, sort_keys=True), time.time(), _who(), self.name))
                return result
            except self._transient as exc:
                # Lost before the row was locked: nothing happened, so try once more on a new
                # connection. Lost after: the commit may have landed, so say so instead of repeating.
                if locked or attempt:
                    outcome = ("the change may or may not have been applied: look with appliance algo ls and history"
                               if locked else "nothing was changed")
                    raise self._unreachable(exc, outcome) from None
                time.sleep(0.05)
            except self._pg.Error as exc:
                raise self._refused(exc, "change the registry") from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._db.close()


LAB_REGISTRY = "lab"


class AlgorithmRegistry:
    """Named, versioned algorithms with production and candidate channels and per-instrument
    pins: one document, in ``<data_root>/.offload/algorithms.json`` or, when ``ledger`` is a
    PostgreSQL URL (``offload.ledger``), in the lab database, shared by every instrument
    (see the module docstring). Close it (or use ``with``) to drop a database connection."""

    def __init__(self, data_root: str | os.PathLike, ledger: str | None = None, *, name: str = LAB_REGISTRY,
                 connect_timeout_s: float = 3.0) -> None:
        self.data_root = Path(data_root)
        self.dir = self.data_root / ".offload"
        self.path = self.dir / REGISTRY_FILE
        ledger = registry_target(ledger)  # refuses a malformed PostgreSQL URL
        if ledger is not None:
            self._store: _FileStore | _PgStore = _PgStore(str(ledger), name, connect_timeout_s)
        else:
            self._store = _FileStore(self.dir)
        #: "file" or "postgresql"
        self.backend = self._store.backend
        #: where the document lives, for messages (the file, or the database with its password masked)
        self.where = self._store.where

    @classmethod
    def open(cls, data_root: str | os.PathLike, config: Any = None, **kw) -> AlgorithmRegistry:
        """The registry ``config`` (run config, OffloadConfig or ``offload.ledger``) names: the lab
        database when ``offload.ledger`` is a PostgreSQL URL, else the data root's file."""
        return cls(data_root, registry_target(config), **kw)

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> AlgorithmRegistry:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- storage -------------------------------------------------------------------------------
    def _load(self) -> dict:
        return _decode(self._store.read(), self.where, self._store.fix)

    def _change(self, fn: Callable[[dict], Any]) -> Any:
        """Apply ``fn(doc)`` (it changes ``doc`` in place and returns the result) under the
        store's lock; an exception from ``fn`` changes nothing."""
        def change(raw: Any) -> tuple[dict, Any]:
            doc = _decode(raw, self.where, self._store.fix)
            return doc, fn(doc)
        return self._store.update(change)

    def schema_version(self) -> int | None:
        """The lab database's registry schema version (None for the file)."""
        return self._store.schema_version() if isinstance(self._store, _PgStore) else None

    @staticmethod
    def _key(name: str, version: str) -> str:
        return f"{_check_id('name', name)}@{_check_id('version', str(version))}"

    @staticmethod
    def _get_in(doc: dict, name: str, version: str) -> Algorithm:
        algos = _all(doc)
        key = AlgorithmRegistry._key(name, version)
        if key not in algos:
            raise AlgorithmError(f"no algorithm {key}; known: {', '.join(algos)} (register it first: appliance algo register)")
        return algos[key]

    # -- queries -------------------------------------------------------------------------------
    def ls(self) -> list[Algorithm]:
        """Every algorithm, the built-in first, then by registration."""
        return list(_all(self._load()).values())

    def get(self, name: str, version: str) -> Algorithm:
        """``name@version``; AlgorithmError naming the known ones when there is none."""
        return self._get_in(self._load(), name, version)

    def production(self) -> Algorithm:
        doc = self._load()
        return _all(doc).get(doc["production"], BUILTIN)

    def candidate(self) -> Algorithm | None:
        doc = self._load()
        return _all(doc).get(doc["candidate"]) if doc["candidate"] else None

    def pins(self) -> dict[str, str]:
        """Instrument id -> the ``name@version`` its runs use instead of production."""
        return {inst: p["algorithm"] for inst, p in sorted(self._load()["pins"].items())}

    def resolve(self, instrument: str | None) -> tuple[Algorithm, dict | None]:
        """What a run of ``instrument`` uses: ``(algorithm, pin)``, the pin
        (``{"instrument", "algorithm", "t", "by"}``) if it has one, else ``(production, None)``."""
        return _resolve(self._load(), instrument)

    def history(self) -> list[dict]:
        """Changes, oldest first: ``{"t", "event", "algorithm", "previous", "by"}`` (pin and unpin
        events also name the ``instrument``)."""
        return list(self._load()["history"])

    def status(self) -> dict:
        doc = self._load()
        return {"production": doc["production"], "candidate": doc["candidate"], "previous": list(doc["previous"]),
                "pins": {inst: p["algorithm"] for inst, p in sorted(doc["pins"].items())},
                "backend": self.backend, "registry": self.where}

    # -- changes -------------------------------------------------------------------------------
    def register(self, name: str, version: str, params: dict | None = None, entry: str | None = None) -> Algorithm:
        """Add ``name@version``; registering the same definition again returns it, a different
        definition under an existing name@version is an AlgorithmError (versions never change)."""
        alg = Algorithm(_check_id("name", name), _check_id("version", str(version)), validate_params(params or {}),
                        _check_entry(entry or DEFAULT_ENTRY), _appliance_version(), _now())

        def fn(doc: dict) -> Algorithm:
            existing = _all(doc).get(alg.key)
            if existing is not None:
                if (existing.params, existing.entry) != (alg.params, alg.entry):
                    raise AlgorithmError(f"{alg.key} is already registered with other parameters or entry; versions never change: register a new version")
                return existing
            doc["algorithms"].append(alg.to_dict())
            _event(doc, "register", alg.key, None)
            return alg
        return self._change(fn)

    def set_candidate(self, name: str, version: str) -> Algorithm:
        """Make ``name@version`` the candidate (it runs in shadow; production is unchanged)."""
        def fn(doc: dict) -> Algorithm:
            alg = self._get_in(doc, name, version)
            if alg.key == doc["production"]:
                raise AlgorithmError(f"{alg.key} is production already; a candidate must differ from production")
            prev = doc["candidate"]
            doc["candidate"] = alg.key
            _event(doc, "candidate", alg.key, prev)
            return alg
        return self._change(fn)

    def promote(self) -> Algorithm:
        """The candidate becomes production; the old production is remembered for rollback."""
        def fn(doc: dict) -> Algorithm:
            if not doc["candidate"]:
                raise AlgorithmError("there is no candidate to promote; set one first: appliance algo candidate NAME VERSION")
            prev = doc["production"]
            doc["previous"].append(prev)
            doc["production"], doc["candidate"] = doc["candidate"], None
            _event(doc, "promote", doc["production"], prev)
            return _all(doc)[doc["production"]]
        return self._change(fn)

    def rollback(self) -> dict:
        """Drop the candidate if there is one; else restore the previous production.
        Returns ``{"dropped_candidate": key | None, "production": key}``."""
        def fn(doc: dict) -> dict:
            if doc["candidate"]:
                dropped = doc["candidate"]
                doc["candidate"] = None
                _event(doc, "drop-candidate", dropped, None)
                return {"dropped_candidate": dropped, "production": doc["production"]}
            if not doc["previous"]:
                raise AlgorithmError(f"nothing to roll back: no candidate, and production {doc['production']} has no previous production")
            was = doc["production"]
            doc["production"] = doc["previous"].pop()
            _event(doc, "rollback", doc["production"], was)
            return {"dropped_candidate": None, "production": doc["production"]}
        return self._change(fn)

    def pin(self, instrument: str, name: str, version: str) -> Algorithm:
        """Runs of ``instrument`` use ``name@version`` instead of production (until :meth:`unpin`);
        pinning again replaces the pin. An unregistered version is refused, naming the registered ones."""
        inst = _check_instrument(instrument)
        key = self._key(name, version)

        def fn(doc: dict) -> Algorithm:
            algos = _all(doc)
            if key not in algos:
                same = [k.split("@", 1)[1] for k in algos if k.split("@", 1)[0] == name]
                versions = f"registered versions of {name}: {', '.join(same)}" if same else f"no version of {name} is registered"
                raise AlgorithmError(f"cannot pin {inst} to {key}: it is not registered ({versions}; every algorithm: "
                                     f"{', '.join(algos)}); register it first: appliance algo register {name} {version} --params FILE.toml")
            prev = doc["pins"].get(inst, {}).get("algorithm")
            if prev != key:
                doc["pins"][inst] = {"algorithm": key, "t": _now(), "by": _who()}
                _event(doc, "pin", key, prev, instrument=inst)
            return algos[key]
        return self._change(fn)

    def unpin(self, instrument: str, name: str | None = None) -> str:
        """Drop ``instrument``'s pin (its runs use production again); with ``name``, only if the
        pin is a version of that algorithm. Returns the key it was pinned to."""
        inst = _check_instrument(instrument)
        if name is not None:
            _check_id("name", name)

        def fn(doc: dict) -> str:
            pin = doc["pins"].get(inst)
            if pin is None:
                pinned = ", ".join(f"{i} -> {p['algorithm']}" for i, p in sorted(doc["pins"].items())) or "none"
                raise AlgorithmError(f"instrument {inst} has no pin (pins: {pinned}); its runs use production {doc['production']}")
            key = pin["algorithm"]
            if name is not None and key.split("@", 1)[0] != name:
                raise AlgorithmError(f"instrument {inst} is pinned to {key}, not to a version of {name}; "
                                     f"to drop it anyway: appliance algo unpin {inst}")
            del doc["pins"][inst]
            _event(doc, "unpin", key, None, instrument=inst)
            return key
        return self._change(fn)


# -- the real-time pipeline's use -------------------------------------------------------------

def pipeline_settings(config) -> dict:
    """What the pipeline feeds an algorithm besides its parameters: the chain's base values
    (from the run config), the camera's dark level, the tile shape and the backend."""
    from appliance.simparams import synthetic_params

    s = config.source.synthetic
    return {
        "chain_base": {"psf_sigma": float(s.psf_sigma)},
        "dark": float(synthetic_params(config).offset),
        "tile_shape": [int(s.tile_size), int(s.tile_size)],
        "backend": config.stages["kernel"].backend,
        "cycles": int(config.run.cycles),
    }


def build_chain(algorithm: Algorithm, settings: dict, xp):
    """One tile's chain for ``algorithm`` with the pipeline ``settings`` (see
    :func:`pipeline_settings`): what the kernel stage and reprocessing both call."""
    cfg = algorithm.chain_config(**settings["chain_base"])
    return algorithm.chain_factory()(tuple(settings["tile_shape"]), cfg, dark=settings["dark"], xp=xp)


def _instrument_of(config) -> str | None:
    run = getattr(config, "run", None)
    inst = getattr(run, "instrument_id", None)
    return inst if isinstance(inst, str) and inst else None


def _resolve_for_run(data_root: Path, config, instrument: str | None) -> tuple[Algorithm, dict | None, str]:
    """(algorithm, pin, where it was decided) for a run of ``instrument``. From the lab database,
    the document is also kept as this instrument's cached copy; with the database unreachable,
    that copy decides (a run never waits on, or fails for, the lab database when it has one)."""
    target = registry_target(config)
    cache = data_root / ".offload" / LAB_CACHE_FILE
    try:
        with AlgorithmRegistry(data_root, target, connect_timeout_s=2.0) as reg:
            doc = reg._load()
            where = reg.where
    except RegistryUnavailable as exc:
        if target is None or not cache.is_file():
            raise
        try:
            cached = json.loads(cache.read_text())
            doc = _decode(cached["doc"], str(cache), "delete it (it is only a copy of the lab registry)")
        except (OSError, ValueError, KeyError, TypeError) as bad:
            raise RegistryUnavailable(f"{exc}; and this instrument's copy {cache} is unreadable ({bad})") from None
        where = f"{cached.get('registry', 'the lab database')}: unreachable, the copy of {cached.get('t')} in {cache}"
        log.warning("%s: using this instrument's copy of the lab registry (%s)", exc, cache)
    else:
        if target is not None:
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                _write_atomic(cache, {"registry": where, "t": _now(), "doc": doc})
            except OSError as exc:
                log.warning("cannot keep a copy of the lab algorithm registry at %s: %s", cache, exc)
    alg, pin = _resolve(doc, instrument)
    return alg, pin, where


def run_algorithm(data_root: str | os.PathLike, state_dir: str | os.PathLike, config) -> tuple[Algorithm, dict]:
    """The algorithm (and pipeline settings) a run uses: decided at its first use and recorded in
    ``state_dir/algorithm.json`` (the instrument's pin, ``run.instrument_id``, if it has one,
    else the registry's production; the registry is the lab database's when ``offload.ledger``
    is a PostgreSQL URL), read back from there afterwards."""
    record = Path(state_dir) / RUN_RECORD
    if not record.is_file():
        instrument = _instrument_of(config)
        alg, pin, where = _resolve_for_run(Path(data_root), config, instrument)
        doc = {"algorithm": alg.to_dict(), "key": alg.key, "pipeline": pipeline_settings(config),
               "instrument": instrument, "source": "pin" if pin else "production", "pin": pin, "registry": where}
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f".{RUN_RECORD}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        try:
            os.link(tmp, record)  # first writer wins; the kernel and basecall stages agree
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return read_run_record(record)


def run_algorithm_info(data_root: str | os.PathLike, run: str) -> dict | None:
    """What a run's ``algorithm.json`` says about where its algorithm came from, for the jobs of
    the run to carry: ``{"algorithm": "name@version", "algorithm_source": "production" | "pin",
    "pinned_instrument": id | None}``; None if the run has no record (it never reached the
    kernel stage, or predates the registry)."""
    path = Path(data_root) / ".state" / run / RUN_RECORD
    try:
        doc = json.loads(path.read_text())
        key = doc.get("key") or Algorithm.from_dict(doc["algorithm"]).key
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AlgorithmError(f"{path}: not a readable run algorithm record ({exc})") from None
    pin = doc.get("pin") or None
    return {"algorithm": key, "algorithm_source": doc.get("source", "production"),
            "pinned_instrument": pin.get("instrument") if isinstance(pin, dict) else None}


def read_run_record(path: str | os.PathLike) -> tuple[Algorithm, dict]:
    """(algorithm, pipeline settings) from a run's ``algorithm.json``."""
    try:
        doc = json.loads(Path(path).read_text())
        return Algorithm.from_dict(doc["algorithm"]), doc["pipeline"]
    except (ValueError, KeyError, TypeError) as exc:
        raise AlgorithmError(f"{path}: not a readable run algorithm record ({exc}); delete it to pin the registry's production again") from None
