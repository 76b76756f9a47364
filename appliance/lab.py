"""The lab's one view of its instruments: ``appliance lab status``.

``[lab.instruments.NAME]`` tables name each instrument's control plane (``connect``: a socket
directory, ``ipc://PATH`` or ``tcp://HOST:PORT`` with CURVE key files, as ``appliance ctl``
takes them); the lab ledger is ``offload.ledger``. :func:`fleet_rows` is the pure part: each
instrument's two status replies (a second apart, for frames/s) and the ledger's backlog per
instrument in, one row per instrument out. :func:`collect` is the shell that asks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from appliance.configfile import ConfigError

__all__ = ["LabInstrument", "LabSection", "collect", "fleet_rows", "format_fleet", "lab_section", "ledger_backlog"]

CLASSES = ("realtime", "batch", "reprocess")


@dataclass(frozen=True)
class LabInstrument:
    """One instrument's control plane, as ``appliance ctl --connect/--socket-dir`` takes it."""

    connect: str
    client_key: str = ""  #: this client's CURVE secret key file (tcp://)
    server_key: str = ""  #: the instrument's CURVE public key file (tcp://)


@dataclass(frozen=True)
class LabSection:
    instruments: dict[str, LabInstrument] = field(default_factory=dict)


def lab_section(d: dict) -> LabSection:
    """``[lab]``, validated: every instrument needs ``connect``; tcp:// needs both key files."""
    raw = d.get("instruments") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"lab.instruments = {raw!r} is invalid: allowed [lab.instruments.NAME] tables with connect = ...")
    out = {}
    for name, t in raw.items():
        key = f"lab.instruments.{name}"
        if not isinstance(t, dict):
            raise ConfigError(f"{key} = {t!r} is invalid: allowed a table with connect, client_key, server_key")
        unknown = sorted(set(t) - {"connect", "client_key", "server_key"})
        if unknown:
            raise ConfigError(f"unknown config key {key}.{unknown[0]}; known keys here: client_key, connect, server_key")
        connect = t.get("connect")
        if not isinstance(connect, str) or not connect:
            raise ConfigError(f"{key}.connect = {connect!r} is invalid: allowed a socket directory, ipc://PATH or tcp://HOST:PORT")
        if "://" in connect and not connect.startswith(("ipc://", "tcp://")):
            raise ConfigError(f"{key}.connect = {connect!r} is invalid: allowed a socket directory, ipc://PATH or tcp://HOST:PORT")
        keys = (str(t.get("client_key", "")), str(t.get("server_key", "")))
        if connect.startswith("tcp://") and not all(keys):
            raise ConfigError(f"{key}: tcp:// needs client_key and server_key (CURVE key files, docs/control-protocol.md)")
        out[str(name)] = LabInstrument(connect, *keys)
    return LabSection(out)


def _fps(first: dict | None, second: dict | None) -> float | None:
    if not first or not second or first.get("run_id") != second.get("run_id"):
        return None
    t0, t1 = first.get("t"), second.get("t")
    if t0 is None or t1 is None or t1 <= t0:
        return None
    return (int(second.get("frames_acquired") or 0) - int(first.get("frames_acquired") or 0)) / (t1 - t0)


def fleet_rows(replies: dict[str, tuple[dict | None, dict | None, str | None]], backlog: dict[str, dict]) -> list[dict]:
    """One row per instrument (those configured, then any other the ledger has jobs of):
    ``replies[name] = (first status, second status, error)``; ``backlog`` from
    :meth:`~appliance.offload.Ledger.backlog_by_instrument`."""
    from appliance.progress import describe

    rows = []
    for name in [*replies, *sorted(set(backlog) - set(replies))]:
        first, second, error = replies.get(name, (None, None, "not in [lab.instruments]"))
        sample = second or first
        b = backlog.get(name, {})
        row: dict[str, Any] = {"instrument": name, "state": "unreachable" if error and sample is None else "?", "error": error,
                               "run_id": None, "cycle": None, "cycles": None, "frames": None, "frames_per_s": None,
                               "drops": None, "alerts": None,
                               "waiting": {c: int((b.get("waiting") or {}).get(c, 0)) for c in CLASSES},
                               "in_flight": int(b.get("in_flight", 0)), "oldest_waiting_age_s": b.get("oldest_waiting_age_s")}
        if sample is not None:
            view = describe(sample, now=sample.get("t") or time.time())
            idle = sample.get("state") == "idle"
            row.update(state=sample.get("state") or view.phase, run_id=sample.get("run_id"))
            if not idle:
                row.update(cycle=view.cycle, cycles=view.cycles, frames=view.frames, drops=view.drops,
                           alerts=view.alerts, frames_per_s=_fps(first, second))
        rows.append(row)
    return rows


def format_fleet(rows: list[dict]) -> str:
    """The table ``appliance lab status`` prints."""
    def age(s):
        if s is None:
            return "-"
        s = int(s)
        return f"{s} s" if s < 120 else f"{s // 60} min" if s < 7200 else f"{s // 3600} h"

    head = ("INSTRUMENT", "STATE", "RUN", "CYCLE", "FRAMES", "FRAMES/S", "DROPS", "ALERTS", "RT", "BATCH", "REPROC", "RUNNING", "OLDEST WAIT")
    body = []
    for r in rows:
        w = r["waiting"]
        body.append((r["instrument"], r["state"], r["run_id"] or "-",
                     f"{r['cycle']}/{r['cycles']}" if r["cycles"] else "-",
                     "-" if r["frames"] is None else str(r["frames"]),
                     "-" if r["frames_per_s"] is None else f"{r['frames_per_s']:.1f}",
                     "-" if r["drops"] is None else str(r["drops"]), "-" if r["alerts"] is None else str(r["alerts"]),
                     str(w["realtime"]), str(w["batch"]), str(w["reprocess"]), str(r["in_flight"]), age(r["oldest_waiting_age_s"])))
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(v.ljust(widths[i]) for i, v in enumerate(head)).rstrip()]
    lines += ["  ".join(v.ljust(widths[i]) for i, v in enumerate(b)).rstrip() for b in body]
    for r in rows:
        if r["error"]:
            lines.append(f"{r['instrument']}: {r['error']}")
    return "\n".join(lines)


def ledger_backlog(config) -> Callable[[], dict[str, dict]]:
    """The backlog per instrument of ``config``'s lab ledger (``offload.ledger``), as a callable
    for :func:`collect`: opened on each call (an SQLite file not made yet has none)."""
    from pathlib import Path

    target = config.offload.ledger_target(Path(config.output.root))
    is_pg = str(target).startswith(("postgresql://", "postgres://"))

    def backlog() -> dict[str, dict]:
        from appliance.offload import Ledger

        if not is_pg and not Path(target).exists():
            return {}
        with Ledger(target, config=config.offload) as led:
            return led.backlog_by_instrument()

    return backlog


def collect(lab: LabSection, backlog: Callable[[], dict[str, dict]] | None, *, timeout_s: float = 2.0,
            interval_s: float = 1.0) -> list[dict]:
    """Ask every instrument for ``status`` twice, ``interval_s`` apart (frames/s), and the
    ledger for the backlog; an unreachable instrument or ledger is a row's error, not a failure."""
    from appliance.control import ControlClient, ControlError, CurveKeys

    clients: dict[str, Any] = {}
    replies: dict[str, list] = {}
    for name, inst in lab.instruments.items():
        try:
            keys = CurveKeys.from_files(inst.client_key, inst.server_key) if inst.connect.startswith("tcp://") else None
            clients[name] = ControlClient(inst.connect, timeout_s=timeout_s, curve_keys=keys)
            replies[name] = [None, None, None]
        except (ControlError, OSError, ValueError) as exc:
            replies[name] = [None, None, f"cannot connect to {inst.connect}: {exc}"]
    try:
        for i in (0, 1):
            if i:
                time.sleep(interval_s)
            for name, client in clients.items():
                if replies[name][2]:
                    continue
                try:
                    replies[name][i] = client.request("status")
                except (ControlError, OSError, ValueError) as exc:
                    replies[name][2] = f"{lab.instruments[name].connect}: {exc}"
    finally:
        for client in clients.values():
            client.close()
    try:
        jobs = backlog() if backlog is not None else {}
        ledger_error = None
    except Exception as exc:  # noqa: BLE001 - a lost ledger is shown, not fatal
        jobs, ledger_error = {}, f"the lab ledger: {exc}"
    rows = fleet_rows({k: tuple(v) for k, v in replies.items()}, jobs)
    if ledger_error:
        for r in rows:
            r["error"] = r["error"] or ledger_error
    return rows
