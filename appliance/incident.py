"""The incident bundle: what a post-mortem of one run needs, in one ``.tar.zst``, without secrets.

``collect(run, cfg, out)`` gathers a run's config and pinned algorithm, its state files
(summaries, ``stats.jsonl``, alerts), the flight recorder's records of the run's time span, the
alerts and the JSON logs around them, the ledger's history of the run's jobs, the host's
topology and ``sysconfig verify``, ring statistics, traces and profiles; redacts every text
member (:func:`redact_text`, :func:`redact_obj`); and writes a zstd-compressed tar atomically
(temporary name, fsync, rename). ``MANIFEST.json`` (the first member) lists every member with
its size and sha256, and what was not available and why. A part that fails (a ledger that
cannot be reached, a host probe that raises) is recorded in the manifest; it never fails the
bundle.

The bundle is laid out so the existing readers take it unchanged::

    incident-RUN_ID/
      MANIFEST.json
      runs/RUN_ID/                  RunInfo.xml, RunCompletionStatus.xml, Manifest/run.json, markers
      runs/.state/RUN_ID/           config.json, algorithm.json, summary.json, stats.jsonl, ...,
                                    profiles/, traces* (as the run left them)
      runs/.state/recorder/         the flight recorder's records of the run (one segment)
      alerts.json                   the run's alerts and events
      logs/                         appliance.jsonl (JSON logs around the alerts), journal.jsonl
      ledger.json                   the run's jobs with their history
      host/                         topology.json, sysconfig-verify.json
      rings.json                    per-ring statistics from the samples, and live rings

so ``appliance tui --replay incident-RUN_ID/runs/RUN_ID`` and ``appliance report
incident-RUN_ID/runs/RUN_ID`` work on it; :func:`open_bundle` extracts and checks one.
See docs/root-cause.md ("The incident bundle").
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "FORMAT",
    "MANIFEST",
    "REDACTED",
    "Bundle",
    "IncidentError",
    "RunRef",
    "collect",
    "find_run",
    "open_bundle",
    "redact_dsn",
    "redact_obj",
    "redact_text",
]

FORMAT = "appliance-incident/1"
MANIFEST = "MANIFEST.json"
REDACTED = "***"
#: JSON log lines this close (s) to one of the run's alerts are kept (besides those tagged with the run id)
LOG_WINDOW_S = 60.0
#: flight recorder events this long (s) before and after the run's span are kept (context)
RECORDER_MARGIN_S = 60.0
#: a state-folder member larger than this is left out (and said so in the manifest)
MAX_MEMBER_BYTES = 512 << 20
#: files of the run folder worth having (the data itself stays out)
_RUN_FOLDER_FILES = ("RunInfo.xml", "RunCompletionStatus.xml", "RunParameters.xml", "CopyComplete.txt",
                     "RTAComplete.txt", "RTARead1Complete.txt", "Manifest/run.json")
#: state-folder files not worth having: checkpoints, the reference, the report (rebuilt on replay)
_STATE_SKIP = re.compile(r"(\.ckpt|\.tmp|\.fa|\.fasta|report\.html)$")


class IncidentError(Exception):
    """No bundle can be made or read; the message names the problem and the fix."""


# -- redaction -----------------------------------------------------------------------------------

_Z85 = r"0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#"
# a 40-character Z85 string (a CURVE key): a run of exactly 40 Z85 characters, or 40 after
# "=" or ":" (key=VALUE), standing alone
_Z85_KEY = re.compile(rf"(?:(?<=[=:])|(?<![{_Z85}]))[{_Z85}]{{40}}(?![{_Z85}])")
# 40 characters of a path, a host name or an identifier (a SHA-1 digest too): not taken for a key.
# A random CURVE key has none of Z85's other 20 characters with probability (65/85)**40 = 2e-5;
# key files never go in, and ``secret-key = ...`` is redacted by its name whatever its value.
_PATHLIKE = re.compile(r"[0-9A-Za-z./-]+")
_PEM = re.compile(r"-----BEGIN.*?(?:-----END[^\n]*?-----|\Z)", re.S)
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"<>]*):(?P<pw>[^\s@'\"<>]+)@")
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|AIPA)[0-9A-Z]{16}\b")
_SECRET_NAMES = (r"aws_secret_access_key|aws_access_key_id|aws_session_token|secret[-_]?access[-_]?key|access[-_]?key[-_]?id"
                 r"|session[-_]?token|secret[-_]?key|private[-_]?key|api[-_]?key|passphrase|password|passwd|secret|token|credentials?")
_KEY_VALUE = re.compile(rf"(?i)(?P<key>[\"']?(?<![A-Za-z0-9])[A-Za-z0-9_.-]*?(?:{_SECRET_NAMES})(?![A-Za-z0-9])[\"']?)(?P<sep>\s*[=:]\s*)(?P<val>\"[^\"\n]*\"|'[^'\n]*'|[^\s,;&)}}\]]+)")
#: a dict key naming a secret: its value is replaced whole
_SECRET_KEY = re.compile(rf"(?i)(?:^|[-_.])(?:{_SECRET_NAMES})(?:$|[-_.])")
#: a cheap test that a JSON line may need redacting (a superset of what the rules match)
_TRIGGER = re.compile(rf"(?i)(?:{_SECRET_NAMES}|-----begin|://|AKIA|ASIA|AGPA|AIDA|AROA|ANPA|AIPA)")


def redact_dsn(dsn: str) -> str:
    """A DSN or URL without its password: ``postgresql://user:pass@host/db`` ->
    ``postgresql://user:***@host/db``; libpq's ``password=...`` keyword too."""
    try:
        parts = urlsplit(dsn)
        if parts.password is not None:
            host = parts.netloc.rsplit("@", 1)[-1]
            dsn = urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{REDACTED}@{host}"))
    except ValueError:
        pass
    return redact_text(dsn)[0]


def _key_value(m: re.Match) -> str:
    val = m.group("val")
    if val in ('""', "''") or val.startswith(REDACTED) or val.strip("\"'") == REDACTED:
        return m.group(0)
    q = val[0] if val[0] in "\"'" else ""
    return f"{m.group('key')}{m.group('sep')}{q}{REDACTED}{q}"


def _z85(m: re.Match) -> str:
    s = m.group(0)
    if _PATHLIKE.fullmatch(s) or "://" in s or REDACTED in s:  # a path, a URL, or redacted already
        return s
    return f"[{REDACTED} curve key]"


def redact_text(text: str) -> tuple[str, int]:
    """``text`` with its secrets replaced, and how many were: PEM blocks (``-----BEGIN``),
    passwords in URLs and DSNs, AWS access key ids, ``password=``/``secret:``/``token=``/
    ``aws_secret_access_key = ...`` values, and 40-character Z85 strings (CURVE keys)."""
    total = 0

    def sub(pattern: re.Pattern, fn) -> None:
        nonlocal text, total

        def one(m: re.Match) -> str:
            nonlocal total
            new = fn(m)
            total += new != m.group(0)
            return new

        text = pattern.sub(one, text)

    sub(_PEM, lambda m: f"[{REDACTED} PEM block]")
    sub(_URL_PASSWORD, lambda m: f"{m.group('head')}:{REDACTED}@")
    sub(_AWS_KEY_ID, lambda m: m.group(0)[:4] + REDACTED)
    sub(_KEY_VALUE, _key_value)
    sub(_Z85_KEY, _z85)
    return text, total


def redact_obj(obj: Any) -> tuple[Any, int]:
    """A JSON-like value with its secrets replaced, and how many were: the value of every dict
    key that names a secret (password, secret, token, aws_access_key_id, aws_secret_access_key,
    private_key, ...) whole, and :func:`redact_text` on every other string."""
    count = 0

    def walk(v: Any) -> Any:
        nonlocal count
        if isinstance(v, dict):
            out = {}
            for k, x in v.items():
                if isinstance(k, str) and _SECRET_KEY.search(k) and x not in (None, "", [], {}, False):
                    count += 1
                    out[k] = REDACTED
                else:
                    out[k] = walk(x)
            return out
        if isinstance(v, (list, tuple)):
            return [walk(x) for x in v]
        if isinstance(v, str):
            s, n = redact_text(v)
            count += n
            return s
        return v

    return walk(obj), count


def _redact_jsonl(text: str) -> tuple[str, int]:
    """A JSON-lines text redacted line by line (lines with nothing to redact kept byte for byte)."""
    out, total = [], 0
    for line in text.splitlines(keepends=True):
        if not (_TRIGGER.search(line) or _Z85_KEY.search(line)):
            out.append(line)
            continue
        end = "\n" if line.endswith("\n") else ""
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            red, n = redact_text(line)
        else:
            obj, n = redact_obj(obj)
            red = json.dumps(obj, ensure_ascii=False, default=str) + end if n else line
        out.append(red)
        total += n
    return "".join(out), total


def _is_key_file(path: Path, curve_dirs: tuple[Path, ...] = ()) -> bool:
    name = path.name
    if name.endswith((".key_secret", ".key", ".pem", ".p12", ".pfx")) or name in ("id_rsa", "id_ed25519", "credentials"):
        return True
    try:
        rp = path.resolve()
        return any(d and (rp == d or d in rp.parents) for d in curve_dirs)
    except OSError:
        return False


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class RunRef:
    """Where a run's things are: ``run_dir`` (ROOT/RUN_ID; may not exist), ``state_dir``
    (STATE_ROOT/RUN_ID), ``state_root`` (with ``recorder/``) and the data root."""

    run_id: str
    run_dir: Path
    state_dir: Path
    state_root: Path
    data_root: Path


def _run_spans(folder: Path, run_id: str) -> list[dict]:
    """The spans of ``run_id``'s trace in the span files (JSON lines) of ``folder``."""
    from appliance.tracing import trace_hex

    want = "0x" + trace_hex(run_id)
    out = []
    for f in sorted(folder.glob("*.jsonl")) if folder.is_dir() else ():
        try:
            lines = f.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                span = json.loads(line)
            except ValueError:
                continue  # a torn last line of a killed process
            if isinstance(span, dict) and (span.get("context") or {}).get("trace_id") == want:
                out.append(span)
    return out


def _state_root(cfg, data_root: Path) -> Path:
    return Path(cfg.output.state_root) if cfg.output.state_root else data_root / ".state"


def _is_state_dir(p: Path) -> bool:
    return any((p / n).is_file() for n in ("config.json", "stats.jsonl", "summary.json", "algorithm.json"))


def _is_run_folder(p: Path) -> bool:
    return any((p / n).exists() for n in ("RunInfo.xml", "RunCompletionStatus.xml", "Manifest"))


def _latest(data_root: Path, state_root: Path) -> str | None:
    newest: dict[str, float] = {}
    for base, test in ((state_root, _is_state_dir), (data_root, _is_run_folder)):
        try:
            entries = list(base.iterdir())
        except OSError:
            continue
        for p in entries:
            if p.name.startswith(".") or p.name == "recorder" or not p.is_dir() or not test(p):
                continue
            try:
                m = max((c.stat().st_mtime for c in p.iterdir()), default=p.stat().st_mtime)
            except OSError:
                continue
            newest[p.name] = max(newest.get(p.name, 0.0), m)
    return max(newest, key=lambda k: (newest[k], k)) if newest else None


def find_run(run: str | os.PathLike | None, cfg) -> RunRef:
    """The run ``run`` names: None (the latest under ``output.root``), a run id, a run folder
    (ROOT/RUN_ID) or a state folder (STATE_ROOT/RUN_ID). Raise IncidentError when none is found."""
    data_root = Path(cfg.output.root)
    state_root = _state_root(cfg, data_root)
    if run is None:
        run_id = _latest(data_root, state_root)
        if run_id is None:
            raise IncidentError(f"no run under {data_root} (state {state_root}): pass RUN (a run id, run folder or state folder), or --set output.root=DIR")
        return RunRef(run_id, data_root / run_id, state_root / run_id, state_root, data_root)
    p = Path(run).expanduser()
    if p.is_dir() and _is_state_dir(p) and not _is_run_folder(p):
        sr = p.parent
        root = sr.parent if sr.name == ".state" else data_root
        return RunRef(p.name, root / p.name, p, sr, root)
    if p.is_dir() and _is_run_folder(p):
        root = p.parent
        sr = Path(cfg.output.state_root) if cfg.output.state_root else root / ".state"
        return RunRef(p.name, p, sr / p.name, sr, root)
    name = str(run)
    if "/" not in name and ((data_root / name).is_dir() or (state_root / name).is_dir()):
        return RunRef(name, data_root / name, state_root / name, state_root, data_root)
    raise IncidentError(f"{run}: no such run: give a run id under {data_root}, a run folder (ROOT/RUN_ID) or a state folder (ROOT/.state/RUN_ID)")


# -- gathering ----------------------------------------------------------------------------------


def _json_lines(path: Path) -> list[dict]:
    out = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.strip()
                if line.startswith("<") and ">" in line[:4]:  # a syslog priority prefix (<4>{...})
                    line = line[line.index(">") + 1:]
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(obj, dict):
                    out.append(obj)
    except OSError:
        pass
    return out


def _log_time(rec: dict) -> float | None:
    t = rec.get("t")
    if isinstance(t, (int, float)):
        return float(t)
    ts = rec.get("ts")
    if isinstance(ts, str):
        try:
            return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    rt = rec.get("__REALTIME_TIMESTAMP")  # journalctl -o json: microseconds
    if isinstance(rt, str) and rt.isdigit():
        return int(rt) / 1e6
    return None


@dataclass
class Bundle:
    """A bundle being built in ``top`` (a staging folder, the bundle's layout), or one read
    back: ``manifest`` (MANIFEST.json), and for a read one the run's folders in it."""

    top: Path
    manifest: dict = field(default_factory=dict)
    members: list[dict] = field(default_factory=list)
    missing: list[dict] = field(default_factory=list)
    parts: dict[str, str] = field(default_factory=dict)
    redactions: int = 0
    path: Path | None = None  #: the bundle file
    run_dir: Path | None = None
    state_dir: Path | None = None
    problems: list[str] = field(default_factory=list)

    # -- adding members ------------------------------------------------------------------------
    def _put(self, arc: str, data: bytes, source: str, redactions: int | None, kind: str) -> None:
        path = self.top / arc
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        row = {"path": arc, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "source": source, "kind": kind}
        if redactions is not None:
            row["redactions"] = redactions
            self.redactions += redactions
        self.members.append(row)

    def add_json(self, arc: str, obj: Any, source: str) -> None:
        obj, n = redact_obj(obj)
        self._put(arc, (json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n").encode(), source, n, "json")

    def add_jsonl(self, arc: str, records, source: str) -> None:
        text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)
        text, n = _redact_jsonl(text)
        self._put(arc, text.encode(), source, n, "jsonl")

    def add_text(self, arc: str, text: str, source: str) -> None:
        text, n = redact_text(text)
        self._put(arc, text.encode(), source, n, "text")

    def add_file(self, arc: str, path: Path, curve_dirs: tuple[Path, ...] = ()) -> bool:
        """Copy one file in, redacted by its kind (JSON, JSON lines, text); a binary file goes in
        as it is unless it holds key material. Key files never go in. False: left out (said why)."""
        if _is_key_file(path, curve_dirs):
            self.note_missing(arc, "a key file: key material is never put in a bundle")
            return False
        try:
            size = path.stat().st_size
            if size > MAX_MEMBER_BYTES:
                self.note_missing(arc, f"{size} bytes, over the {MAX_MEMBER_BYTES >> 20} MiB a member may have")
                return False
            data = path.read_bytes()
        except OSError as exc:
            self.note_missing(arc, f"cannot read {path}: {exc}")
            return False
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            if b"-----BEGIN" in data or _Z85_KEY.search(data.decode("latin-1")):
                self.note_missing(arc, "a binary file holding key material (-----BEGIN or a CURVE key): left out")
                return False
            self._put(arc, data, str(path), None, "binary")
            return True
        if path.suffix == ".jsonl":
            red, n = _redact_jsonl(text)
            self._put(arc, red.encode(), str(path), n, "jsonl")
            return True
        if path.suffix == ".json":
            try:
                obj = json.loads(text)
            except json.JSONDecodeError:
                pass
            else:
                self.add_json(arc, obj, str(path))
                self.members[-1]["source"] = str(path)
                return True
        red, n = redact_text(text)
        self._put(arc, red.encode(), str(path), n, "text")
        return True

    def add_tree(self, arc: str, folder: Path, curve_dirs: tuple[Path, ...] = ()) -> int:
        n = 0
        for p in sorted(folder.rglob("*")):
            if p.is_file() and not p.is_symlink():
                n += self.add_file(f"{arc}/{p.relative_to(folder).as_posix()}", p, curve_dirs)
        return n

    def note_missing(self, what: str, why: str) -> None:
        self.missing.append({"what": what, "why": redact_text(why)[0]})

    def part(self, name: str, fn) -> None:
        """Run one part; a failure is recorded (manifest ``parts`` and ``missing``), not raised."""
        try:
            fn()
        except Exception as exc:  # one part failing never fails the bundle
            msg = redact_text(f"{type(exc).__name__}: {exc}")[0]
            self.parts[name] = f"failed: {msg}"
            self.note_missing(name, msg)
        else:
            self.parts.setdefault(name, "ok")


def _span(ref: RunRef, samples: list[dict], summary: dict | None) -> tuple[float, float] | None:
    ts = [float(s["t"]) for s in samples if isinstance(s.get("t"), (int, float))]
    for ev in (summary or {}).get("events") or []:
        if isinstance(ev.get("t"), (int, float)):
            ts.append(float(ev["t"]))
    if not ts:
        try:
            ts = [p.stat().st_mtime for p in ref.state_dir.iterdir()]
        except OSError:
            return None
    return (min(ts), max(ts)) if ts else None


def _capture(fn, *args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = fn(*args)
    return int(code or 0), out.getvalue(), err.getvalue()


def _topology() -> dict:
    """What ``appliance topology --json`` prints for this host."""
    from appliance.commands import topology

    parser = argparse.ArgumentParser()
    topology.configure(parser)
    code, out, err = _capture(topology.run, parser.parse_args(["--json"]))
    if code != 0:
        raise RuntimeError(f"appliance topology exited {code}: {err.strip()}")
    return json.loads(out)


def _sysconfig_verify(profile: str) -> dict:
    """What ``appliance sysconfig verify --profile PROFILE --json`` reports for this host."""
    from appliance import tuning

    report = tuning.verify(profile, Path("/"), None)
    doc = report.to_dict()
    doc["exit_code"] = report.exit_code
    return doc


def _ring_stats(samples: list[dict], run_id: str) -> dict:
    rings: dict[str, dict] = {}
    for s in samples:
        for key, r in (s.get("rings") or {}).items():
            row = rings.setdefault(key, {"samples": 0, "max_occupancy": 0})
            row["samples"] += 1
            row["max_occupancy"] = max(row["max_occupancy"], int(r.get("occupancy", 0) or 0))
            for k in ("n_slots", "written", "read", "drops", "peak_occupancy", "full_waits", "empty_waits"):
                if k in r:
                    row[k] = r[k]
    for row in rings.values():
        if row.get("n_slots"):
            row["max_fraction"] = round(row["max_occupancy"] / row["n_slots"], 4)
    doc: dict[str, Any] = {"from": "stats.jsonl samples (the last value of each counter, the highest occupancy seen)", "rings": rings}
    live = []
    try:
        import dataclasses

        import rt

        for name, path in rt.list_rings():
            if run_id not in name:
                continue
            try:
                stats = rt.inspect(name)
                st = dataclasses.asdict(stats)
                st["path"], st["stale"] = str(path), rt.is_stale(stats)
            except rt.RingError as exc:
                st = {"name": name, "path": str(path), "error": str(exc)}
            live.append(st)
    except Exception as exc:  # the live rings are extra: their absence is said, not fatal
        doc["live_error"] = f"{type(exc).__name__}: {exc}"
    doc["live"] = live
    return doc


def _journal(run_id: str, timeout_s: float = 10.0) -> list[dict] | str:
    exe = shutil.which("journalctl")
    if exe is None:
        return "journalctl is not installed (no systemd journal on this host)"
    try:
        done = subprocess.run([exe, "-o", "json", "--no-pager", f"RUN_ID={run_id}"], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"journalctl failed: {exc}"
    rows = []
    for line in done.stdout.splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            rows.append(obj)
    if not rows:
        why = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no entries"
        return f"the journal has no entries with RUN_ID={run_id} ({why})"
    return rows


def _default_log_paths() -> list[Path]:
    paths = []
    env = os.environ.get("LOGS_DIRECTORY")
    if env:
        paths.append(Path(env.split(":")[0]))
    paths.append(Path("/var/log/appliance"))
    return paths


def _log_files(paths) -> list[Path]:
    files = []
    for p in paths:
        p = Path(p)
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files += sorted(x for x in p.iterdir() if x.is_file() and re.match(r".*\.jsonl(\.\d+)?$", x.name))
    return files


def collect(
    ref: RunRef,
    cfg,
    out: Path,
    *,
    log_paths: list[Path] | None = None,
    journal: bool = True,
    host: bool = True,
    sysconfig_profile: str | None = None,
    log_window_s: float = LOG_WINDOW_S,
    level: int = 6,
) -> Bundle:
    """Build the bundle of run ``ref`` and write it to ``out`` (``.tar.zst``) atomically; return
    it (``manifest`` as written). ``log_paths``: JSON log files or folders holding them (default
    ``$LOGS_DIRECTORY``, ``/var/log/appliance``); ``journal``: ask journalctl for the run's
    entries; ``host``: topology and sysconfig verify of this host."""
    from appliance._version import __version__
    from appliance.recorder import read_records

    if not ref.state_dir.is_dir() and not ref.run_dir.is_dir():
        raise IncidentError(f"{ref.run_id}: neither its run folder {ref.run_dir} nor its state folder {ref.state_dir} exists")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    top_name = f"incident-{ref.run_id}"
    curve_dirs = tuple(Path(d).resolve() for d in (cfg.control.curve_dir,) if d)
    with tempfile.TemporaryDirectory(prefix=".incident-", dir=out.parent) as staging:
        b = Bundle(Path(staging) / top_name)
        b.top.mkdir()
        run_arc, state_arc, rec_arc = f"runs/{ref.run_id}", f"runs/.state/{ref.run_id}", "runs/.state/recorder"
        (b.top / run_arc).mkdir(parents=True)  # the report and the replay need the folder, even empty
        (b.top / state_arc).mkdir(parents=True)

        # the run folder's small files
        if ref.run_dir.is_dir():
            for name in _RUN_FOLDER_FILES:
                p = ref.run_dir / name
                if p.is_file():
                    b.add_file(f"{run_arc}/{name}", p, curve_dirs)
            if not (ref.run_dir / "RunCompletionStatus.xml").is_file():
                b.note_missing(f"{run_arc}/RunCompletionStatus.xml", "the run wrote none (it did not end, or predates it)")
        else:
            b.note_missing(run_arc, f"no run folder at {ref.run_dir}")

        # the state folder: config, pinned algorithm, summaries, stats, alerts, profiles, traces
        samples: list[dict] = []
        summary = None
        if ref.state_dir.is_dir():
            for p in sorted(ref.state_dir.iterdir()):
                if p.is_file() and not _STATE_SKIP.search(p.name) and not p.name.startswith("traces"):  # traces: below
                    b.add_file(f"{state_arc}/{p.name}", p, curve_dirs)
            for name, why in (("config.json", "the run's config"), ("algorithm.json", "the run's pinned algorithm"),
                              ("stats.jsonl", "the run's stats time series"), ("summary.json", "the run's summary (written when `appliance run` ends)")):
                if not (ref.state_dir / name).is_file():
                    b.note_missing(f"{state_arc}/{name}", f"{why}: not in {ref.state_dir}")
            profiles = ref.state_dir / "profiles"
            if profiles.is_dir():
                b.add_tree(f"{state_arc}/profiles", profiles, curve_dirs)
                b.parts["profiles"] = "ok"
            else:
                b.parts["profiles"] = "none"
                b.note_missing(f"{state_arc}/profiles", "no profile was taken (appliance profile stores them here)")
            traces = sorted(ref.state_dir.glob("traces*"))
            for t in traces:
                if t.is_dir():
                    b.add_tree(f"{state_arc}/{t.name}", t, curve_dirs)
                elif t.is_file():
                    b.add_file(f"{state_arc}/{t.name}", t, curve_dirs)
            # the run's spans that other processes wrote: its offload jobs (the orchestrator's
            # <root>/.offload/traces/) and its storage moves and verifications (<root>/.storage/traces/)
            for where in (".offload", ".storage"):
                spans = _run_spans(ref.data_root / where / "traces", ref.run_id)
                if spans:
                    b.add_jsonl(f"{state_arc}/traces-{where[1:]}.jsonl", spans, str(ref.data_root / where / "traces"))
                    traces.append(ref.data_root / where / "traces")
            b.parts["traces"] = "ok" if traces else "none"
            if not traces:
                b.note_missing(f"{state_arc}/traces*", "none: the run left no trace files (tracing.enabled = false, or its spans went to tracing.otlp_endpoint)")
            from appliance.report import load_stats

            samples = load_stats(ref.state_dir / "stats.jsonl")
            try:
                summary = json.loads((ref.state_dir / "summary.json").read_text())
            except (OSError, json.JSONDecodeError):
                summary = None
        else:
            b.note_missing(state_arc, f"no state folder at {ref.state_dir}")

        # the flight recorder's records of the run
        recorder = ref.state_root / "recorder"
        rec_samples: list[dict] = []

        def recorder_part():
            if not recorder.is_dir():
                b.parts["recorder"] = "none"
                b.note_missing(rec_arc, f"no flight recorder at {recorder}")
                return
            span = _span(ref, samples, summary)
            keep = []
            for rec in read_records(recorder):
                body = rec.get("body") if isinstance(rec.get("body"), dict) else {}
                t = float(rec.get("t") or 0)
                rid = body.get("run_id")
                if rid is not None:
                    if rid == ref.run_id:
                        keep.append(rec)
                        if rec.get("topic") == "stats":
                            rec_samples.append(body)
                    continue
                if span is not None and span[0] - RECORDER_MARGIN_S <= t <= span[1] + RECORDER_MARGIN_S:
                    keep.append(rec)
            if not keep:
                b.note_missing(rec_arc, f"the flight recorder {recorder} holds nothing of this run (its oldest records are dropped first)")
                b.parts["recorder"] = "none"
                return
            b.add_jsonl(f"{rec_arc}/flight-00000000.jsonl", keep, str(recorder))

        b.part("recorder", recorder_part)
        if not samples:
            samples = sorted(rec_samples, key=lambda s: float(s.get("t", 0)))
            if samples and not (ref.state_dir / "stats.jsonl").is_file():
                b.add_jsonl(f"{state_arc}/stats.jsonl", samples, f"{recorder} (stats of run {ref.run_id})")
        span = _span(ref, samples, summary)

        # the alerts: the summary's events, the stages' alerts.jsonl, the recorder's within the span
        alerts: list[dict] = []

        def alerts_part():
            seen = set()

            def add(ev: dict, source: str):
                key = (round(float(ev.get("t") or 0), 3), str(ev.get("message", "")))
                if key in seen:
                    return
                seen.add(key)
                alerts.append({**ev, "source": source})

            for ev in (summary or {}).get("events") or []:
                if isinstance(ev, dict):
                    add(ev, "summary.json")
            for ev in _json_lines(ref.state_dir / "alerts.jsonl"):
                add(ev, "alerts.jsonl")
            rec_file = b.top / rec_arc / "flight-00000000.jsonl"
            if rec_file.is_file() and span is not None:
                for rec in _json_lines(rec_file):
                    t = float(rec.get("t") or 0)
                    if rec.get("topic") in ("event", "alert") and span[0] - 1.0 <= t <= span[1] + 1.0 and isinstance(rec.get("body"), dict):
                        add({"t": t, **rec["body"]}, "recorder")
            alerts.sort(key=lambda e: float(e.get("t") or 0))
            active = (samples[-1].get("alerts") if samples else None) or []
            b.add_json("alerts.json", {"run_id": ref.run_id,
                                       "alerts": [a for a in alerts if a.get("kind") == "alert" or a.get("rule")],
                                       "events": alerts, "active_at_last_sample": active}, "summary.json, alerts.jsonl, flight recorder")

        b.part("alerts", alerts_part)

        # the logs around the alerts
        def logs_part():
            files = _log_files(log_paths if log_paths is not None else _default_log_paths())
            alert_ts = [float(a["t"]) for a in alerts if (a.get("kind") == "alert" or a.get("rule")) and isinstance(a.get("t"), (int, float))]
            kept = []
            for f in files:
                for rec in _json_lines(f):
                    t = _log_time(rec)
                    tagged = rec.get("run_id") == ref.run_id or rec.get("RUN_ID") == ref.run_id
                    near = t is not None and any(abs(t - a) <= log_window_s for a in alert_ts)
                    if tagged or near:
                        kept.append((t or 0.0, rec))
            if kept:
                kept.sort(key=lambda x: x[0])
                b.add_jsonl("logs/appliance.jsonl", [r for _, r in kept], ", ".join(map(str, files)))
            else:
                if files:
                    why = f"no log lines of this run or near its alerts in {', '.join(map(str, files))}"
                else:
                    why = "no JSON log files ($LOGS_DIRECTORY/appliance.jsonl*, /var/log/appliance, or --logs PATH)"
                b.note_missing("logs/appliance.jsonl", why)
            if not journal:
                b.note_missing("logs/journal.jsonl", "skipped (--no-journal)")
            else:
                rows = _journal(ref.run_id)
                if isinstance(rows, str):
                    b.note_missing("logs/journal.jsonl", rows)
                else:
                    b.add_jsonl("logs/journal.jsonl", rows, "journalctl -o json RUN_ID=" + ref.run_id)
            b.note_missing("logs/stderr", "the stages' and the supervisor's stderr is not kept on disk: only the JSON log file "
                           "($LOGS_DIRECTORY/appliance.jsonl under systemd) and the journal are collected")

        b.part("logs", logs_part)

        # the ledger's history of the run's jobs
        def ledger_part():
            from appliance.offload import Ledger

            target = cfg.offload.ledger_target(ref.data_root)
            is_pg = str(target).startswith(("postgresql://", "postgres://"))
            shown = redact_dsn(str(target))
            if not is_pg and not Path(target).exists():
                b.parts["ledger"] = "none"
                b.note_missing("ledger.json", f"no ledger at {shown} (the run was not offloaded here)")
                return
            with Ledger(target, config=cfg.offload, connect_timeout_s=3.0) as led:
                jobs = led.jobs(run=ref.run_id, limit=100_000)
                rows = []
                for job in reversed(jobs):
                    row = job.to_dict()
                    row["history"] = led.events(job.id, limit=10_000)
                    rows.append(row)
                b.add_json("ledger.json", {"ledger": shown, "backend": led.backend, "run_id": ref.run_id, "jobs": rows}, shown)

        b.part("ledger", ledger_part)

        # the host
        if host:
            b.part("topology", lambda: b.add_json("host/topology.json", _topology(), "appliance topology --json"))
            profile = sysconfig_profile or cfg.supervisor.sysconfig_profile or "instrument"
            b.part("sysconfig", lambda: b.add_json("host/sysconfig-verify.json", _sysconfig_verify(profile),
                                                   f"appliance sysconfig verify --profile {profile} --json"))
        else:
            b.parts["topology"] = b.parts["sysconfig"] = "skipped"
            b.note_missing("host", "skipped (--no-host)")

        b.part("rings", lambda: b.add_json("rings.json", _ring_stats(samples, ref.run_id), f"{state_arc}/stats.jsonl, rt.list_rings"))

        b.manifest = {
            "format": FORMAT,
            "created": time.time(),
            "created_iso": datetime.now().astimezone().isoformat(timespec="seconds"),
            "appliance_version": __version__,
            "host": socket.gethostname(),
            "run_id": ref.run_id,
            "run_dir": str(ref.run_dir),
            "state_dir": str(ref.state_dir),
            "span": list(span) if span else None,
            "layout": {"run_dir": run_arc, "state_dir": state_arc, "recorder": rec_arc},
            "parts": b.parts,
            "redactions": b.redactions,
            "members": b.members,
            "missing": b.missing,
        }
        manifest_bytes = (json.dumps(redact_obj(b.manifest)[0], indent=2, default=str) + "\n").encode()
        (b.top / MANIFEST).write_bytes(manifest_bytes)
        _write_tar(b.top, [MANIFEST, *(m["path"] for m in b.members)], out, level=level, mtime=int(b.manifest["created"]))
    b.path = out
    return b


def _write_tar(top: Path, arcs: list[str], out: Path, *, level: int, mtime: int) -> None:
    import zstandard

    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as raw:
            with zstandard.ZstdCompressor(level=level).stream_writer(raw, closefd=False) as zw:
                with tarfile.open(fileobj=zw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                    dirs = set()
                    for arc in arcs:
                        parts = arc.split("/")[:-1]
                        for i in range(1, len(parts) + 1):  # the folders first, so empty ones survive too
                            d = "/".join(parts[:i])
                            if d not in dirs:
                                dirs.add(d)
                                _add(tar, f"{top.name}/{d}", None, mtime)
                        _add(tar, f"{top.name}/{arc}", top / arc, mtime)
                    for d in sorted(p.relative_to(top).as_posix() for p in top.rglob("*") if p.is_dir()):
                        if d not in dirs:
                            _add(tar, f"{top.name}/{d}", None, mtime)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):
        fd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _add(tar: tarfile.TarFile, name: str, path: Path | None, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if path is None:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
        return
    info.size = path.stat().st_size
    info.mode = 0o644
    with open(path, "rb") as f:
        tar.addfile(info, f)


# -- reading one back ---------------------------------------------------------------------------


def open_bundle(path: str | os.PathLike, into: str | os.PathLike | None = None) -> Bundle:
    """Extract bundle ``path`` into ``into`` (default a new temporary folder, left for the
    caller) and check every member against MANIFEST.json (``problems`` lists mismatches).
    Returns it with ``top`` the extracted bundle folder and ``run_dir``/``state_dir`` the run's
    folders in it, as ``appliance tui --replay`` and ``appliance report`` read them."""
    import zstandard

    path = Path(path)
    if not path.is_file():
        raise IncidentError(f"{path}: no such bundle (write one with appliance incident RUN -o FILE.tar.zst)")
    dest = Path(into) if into is not None else Path(tempfile.mkdtemp(prefix="appliance-incident-"))
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve()
    first = None
    try:
        with open(path, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as zr, tarfile.open(fileobj=zr, mode="r|") as tar:
            for member in tar:
                first = first or member.name.split("/", 1)[0]
                tar.extract(member, dest, filter="data")  # no absolute paths, links out or devices
    except (tarfile.TarError, zstandard.ZstdError, EOFError, OSError) as exc:
        raise IncidentError(f"{path}: not an incident bundle (a zstd-compressed tar): {exc}") from None
    top = dest / (first or "")
    if first is None or not (top / MANIFEST).is_file():
        raise IncidentError(f"{path}: no {MANIFEST} in the bundle: not an incident bundle")
    try:
        manifest = json.loads((top / MANIFEST).read_text())
    except json.JSONDecodeError as exc:
        raise IncidentError(f"{top / MANIFEST}: not valid JSON: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise IncidentError(f"{path}: format {manifest.get('format')!r}, this appliance reads {FORMAT!r}")
    b = Bundle(top, manifest=manifest, members=list(manifest.get("members") or []), missing=list(manifest.get("missing") or []),
               parts=dict(manifest.get("parts") or {}), redactions=int(manifest.get("redactions") or 0))
    for m in b.members:
        p = top / m["path"]
        if not p.is_file():
            b.problems.append(f"{m['path']}: listed in the manifest, not in the bundle")
            continue
        data = p.read_bytes()
        if len(data) != m.get("size") or hashlib.sha256(data).hexdigest() != m.get("sha256"):
            b.problems.append(f"{m['path']}: size or sha256 differs from the manifest")
    layout = manifest.get("layout") or {}
    b.run_dir = top / layout.get("run_dir", f"runs/{manifest.get('run_id')}")
    b.state_dir = top / layout.get("state_dir", f"runs/.state/{manifest.get('run_id')}")
    return b
