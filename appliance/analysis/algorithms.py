"""The registry of named, versioned algorithms: the real-time kernel chain's and base caller's
parameters plus the code that builds the chain, with a production and a candidate channel.

An :class:`Algorithm` is ``name@version`` with parameters (overrides of the pipeline's own
defaults: ``{"chain": {ChainConfig field: value}, "basecall": {lag, window,
estimation_cycles}}``) and an entry point ``"module:function"`` called like
``kernels.chain.TileChain(shape, config, dark=..., xp=...)``. The built-in ``chain@1`` (no
overrides, the built-in chain) is production until something else is promoted.

:class:`AlgorithmRegistry` keeps the registry in ``<data_root>/.offload/algorithms.json``:
every change is a read-modify-write under an exclusive ``fcntl.flock`` on
``algorithms.lock`` and lands by an atomic rename, so two processes never lose each other's
changes and a crash never leaves half a file. ``promote`` makes the candidate production and
remembers the previous production; ``rollback`` drops the candidate, or (with no candidate)
restores the previous production.

The real-time pipeline asks :func:`run_algorithm` once per run: the production algorithm is
pinned in the run's state folder (``algorithm.json``), so a promotion during a run takes effect
with the next run, and a restarted stage keeps the run's algorithm.
"""

from __future__ import annotations

import dataclasses
import fcntl
import importlib
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "Algorithm",
    "AlgorithmError",
    "AlgorithmRegistry",
    "BUILTIN",
    "build_chain",
    "param_keys",
    "pipeline_settings",
    "read_run_record",
    "run_algorithm",
    "validate_params",
]

FORMAT = "appliance-algorithms"
FORMAT_VERSION = 1
REGISTRY_FILE = "algorithms.json"
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
    return {"format": FORMAT, "version": FORMAT_VERSION, "algorithms": [], "production": BUILTIN.key, "candidate": None, "previous": [], "history": []}


class AlgorithmRegistry:
    """Named, versioned algorithms with production and candidate channels, persisted at
    ``<data_root>/.offload/algorithms.json`` (see the module docstring)."""

    def __init__(self, data_root: str | os.PathLike) -> None:
        self.data_root = Path(data_root)
        self.dir = self.data_root / ".offload"
        self.path = self.dir / REGISTRY_FILE

    # -- storage -------------------------------------------------------------------------------
    def _load(self) -> dict:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return _empty()
        try:
            doc = json.loads(raw)
            if doc.get("format") != FORMAT or doc.get("version") != FORMAT_VERSION:
                raise ValueError(f"format {doc.get('format')!r} version {doc.get('version')!r}")
            doc["algorithms"] = [Algorithm.from_dict(a).to_dict() for a in doc["algorithms"]]
            for k in ("production", "candidate", "previous", "history"):
                doc.setdefault(k, _empty()[k])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise AlgorithmError(f"{self.path}: not a readable algorithm registry ({exc}); restore it from a backup or move it away (the built-in chain@1 is then production)") from None
        return doc

    def _save(self, doc: dict) -> None:
        tmp = self.path.with_name(f".{REGISTRY_FILE}.{os.getpid()}.tmp")
        data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    @contextmanager
    def _locked(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            doc = self._load()
            yield doc
            self._save(doc)
        finally:
            os.close(fd)  # closing releases the lock

    def _all(self, doc: dict) -> dict[str, Algorithm]:
        algos = {BUILTIN.key: BUILTIN}
        for a in doc["algorithms"]:
            alg = Algorithm.from_dict(a)
            algos[alg.key] = alg
        return algos

    @staticmethod
    def _key(name: str, version: str) -> str:
        return f"{_check_id('name', name)}@{_check_id('version', str(version))}"

    # -- queries -------------------------------------------------------------------------------
    def ls(self) -> list[Algorithm]:
        """Every algorithm, the built-in first, then by registration."""
        return list(self._all(self._load()).values())

    def get(self, name: str, version: str) -> Algorithm:
        """``name@version``; AlgorithmError naming the known ones when there is none."""
        algos = self._all(self._load())
        key = self._key(name, version)
        if key not in algos:
            raise AlgorithmError(f"no algorithm {key}; known: {', '.join(algos)} (register it first: appliance algo register)")
        return algos[key]

    def production(self) -> Algorithm:
        doc = self._load()
        return self._all(doc).get(doc["production"], BUILTIN)

    def candidate(self) -> Algorithm | None:
        doc = self._load()
        return self._all(doc).get(doc["candidate"]) if doc["candidate"] else None

    def history(self) -> list[dict]:
        """Channel changes, oldest first: ``{"t", "event", "algorithm", "previous"}``."""
        return list(self._load()["history"])

    def status(self) -> dict:
        doc = self._load()
        return {"production": doc["production"], "candidate": doc["candidate"], "previous": list(doc["previous"])}

    # -- changes -------------------------------------------------------------------------------
    def register(self, name: str, version: str, params: dict | None = None, entry: str | None = None) -> Algorithm:
        """Add ``name@version``; registering the same definition again returns it, a different
        definition under an existing name@version is an AlgorithmError (versions never change)."""
        alg = Algorithm(_check_id("name", name), _check_id("version", str(version)), validate_params(params or {}),
                        _check_entry(entry or DEFAULT_ENTRY), _appliance_version(), round(time.time(), 3))
        with self._locked() as doc:
            existing = self._all(doc).get(alg.key)
            if existing is not None:
                if (existing.params, existing.entry) != (alg.params, alg.entry):
                    raise AlgorithmError(f"{alg.key} is already registered with other parameters or entry; versions never change: register a new version")
                return existing
            doc["algorithms"].append(alg.to_dict())
            doc["history"].append({"t": alg.registered_at, "event": "register", "algorithm": alg.key, "previous": None})
        return alg

    def set_candidate(self, name: str, version: str) -> Algorithm:
        """Make ``name@version`` the candidate (it runs in shadow; production is unchanged)."""
        with self._locked() as doc:
            alg = self._get_in(doc, name, version)
            if alg.key == doc["production"]:
                raise AlgorithmError(f"{alg.key} is production already; a candidate must differ from production")
            prev = doc["candidate"]
            doc["candidate"] = alg.key
            doc["history"].append({"t": round(time.time(), 3), "event": "candidate", "algorithm": alg.key, "previous": prev})
        return alg

    def promote(self) -> Algorithm:
        """The candidate becomes production; the old production is remembered for rollback."""
        with self._locked() as doc:
            if not doc["candidate"]:
                raise AlgorithmError("there is no candidate to promote; set one first: appliance algo candidate NAME VERSION")
            prev = doc["production"]
            doc["previous"].append(prev)
            doc["production"], doc["candidate"] = doc["candidate"], None
            doc["history"].append({"t": round(time.time(), 3), "event": "promote", "algorithm": doc["production"], "previous": prev})
            return self._all(doc)[doc["production"]]

    def rollback(self) -> dict:
        """Drop the candidate if there is one; else restore the previous production.
        Returns ``{"dropped_candidate": key | None, "production": key}``."""
        with self._locked() as doc:
            if doc["candidate"]:
                dropped = doc["candidate"]
                doc["candidate"] = None
                doc["history"].append({"t": round(time.time(), 3), "event": "drop-candidate", "algorithm": dropped, "previous": None})
                return {"dropped_candidate": dropped, "production": doc["production"]}
            if not doc["previous"]:
                raise AlgorithmError(f"nothing to roll back: no candidate, and production {doc['production']} has no previous production")
            was = doc["production"]
            doc["production"] = doc["previous"].pop()
            doc["history"].append({"t": round(time.time(), 3), "event": "rollback", "algorithm": doc["production"], "previous": was})
            return {"dropped_candidate": None, "production": doc["production"]}

    def _get_in(self, doc: dict, name: str, version: str) -> Algorithm:
        algos = self._all(doc)
        key = self._key(name, version)
        if key not in algos:
            raise AlgorithmError(f"no algorithm {key}; known: {', '.join(algos)} (register it first: appliance algo register)")
        return algos[key]


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


def run_algorithm(data_root: str | os.PathLike, state_dir: str | os.PathLike, config) -> tuple[Algorithm, dict]:
    """The algorithm (and pipeline settings) a run uses: pinned in ``state_dir/algorithm.json``
    at its first use (the registry's production then), read back from there afterwards."""
    record = Path(state_dir) / RUN_RECORD
    if not record.is_file():
        alg = AlgorithmRegistry(data_root).production()
        doc = {"algorithm": alg.to_dict(), "key": alg.key, "pipeline": pipeline_settings(config)}
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


def read_run_record(path: str | os.PathLike) -> tuple[Algorithm, dict]:
    """(algorithm, pipeline settings) from a run's ``algorithm.json``."""
    try:
        doc = json.loads(Path(path).read_text())
        return Algorithm.from_dict(doc["algorithm"]), doc["pipeline"]
    except (ValueError, KeyError, TypeError) as exc:
        raise AlgorithmError(f"{path}: not a readable run algorithm record ({exc}); delete it to pin the registry's production again") from None
