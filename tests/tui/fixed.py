"""Fixed data for the TUI's deterministic screens (the snapshot tests): a run's stats samples
and flight-recorder events with fixed times, in the shapes the supervisor writes them
(docs/pipeline.md: ``stats.jsonl``; appliance/recorder.py: ``{"topic", "t", "body"}``), and
a fixed clock for the console. The times are UTC; the snapshot tests run with ``TZ=UTC``."""

from __future__ import annotations

import json
from pathlib import Path

#: 2025-11-25 18:02:00 UTC, the first sample
T0 = 1764093720.0
RUN_ID = "251125_SIM01_0001_FC0001"
TILES = [1101, 1102]
CYCLES = 8
PLANNED = len(TILES) * CYCLES * 4
PRERENDER_SAMPLES = 4  # the first samples: the source renders, no frame acquired yet
N_SAMPLES = 40
PERIOD_S = 0.5

ALERT = {
    "rule": "stage_over_budget", "subject": "writer-0", "severity": "warning",
    "message": "stage writer-0: only 62% of items within its 50 ms budget over the last 10 s (p99 1342 ms): "
               "the writer is slower than the camera, the calls ring fills and the run will drop or stall",
}


def sample(i: int, *, run_id: str = RUN_ID, done: bool = False) -> dict:
    """Sample ``i`` of the fixed run: pre-render for the first samples, then 4 frames/s."""
    acquired = 0 if i < PRERENDER_SAMPLES else min(PLANNED, 2 * (i - PRERENDER_SAMPLES + 1))
    written = max(0, acquired - 3)
    stages = {}
    for k, (name, budget) in enumerate((("source", None), ("preprocess", 20), ("kernel", 250), ("basecall", 100), ("writer", 50))):
        stages[f"{name}-0"] = {
            "alive": not done, "restarts": 1 if name == "preprocess" and i >= 20 else 0,
            "frames_in": acquired, "busy_fraction": 0.1 * k, "budget_ms": budget,
            "stage_latency_ms_p99": None if budget is None else budget * (0.5 + 0.3 * k),
        }
    ring = lambda occ, n, w, r: {"occupancy": occ, "n_slots": n, "written": w, "read": r, "drops": 0}  # noqa: E731
    occ = 0 if done else min(4, max(0, acquired - written))
    out = {
        "t": T0 + PERIOD_S * i, "run_id": run_id, "state": "done" if done else "acquiring",
        "frames_acquired": acquired, "frames_planned": PLANNED, "tiles": TILES, "cycles": CYCLES,
        "host": {"cpu_percent": 12.0, "memory_available": 22 * 2**30, "memory_total": 32 * 2**30,
                 "disk_free": 80 * 2**30, "disk_total": 250 * 2**30},
        "rings": {
            "raw.0.0": ring(0, 64, acquired, acquired),
            "corrected.0.0": ring(1 if acquired else 0, 64, acquired, max(0, acquired - 1)),
            "intensities.0.0": ring(0, 4, acquired // 4, acquired // 4),
            "calls.0.0": ring(occ, 4, acquired // 4, max(0, acquired // 4 - occ)),
        },
        "stages": stages,
        "e2e_latency_ms_p99": 3490.0 if acquired else None, "e2e_latency_budget_ms": 2000.0,
        "alerts": [dict(ALERT, first_seen=T0 + PERIOD_S * 12)] if 12 <= i and not done else [],
    }
    return out


def samples(run_id: str = RUN_ID, n: int = N_SAMPLES) -> list[dict]:
    out = [sample(i, run_id=run_id) for i in range(n - 1)]
    out.append(sample(n - 1, run_id=run_id, done=True))
    return out


def events(run_id: str = RUN_ID) -> list[tuple[str, dict]]:
    """``(topic, body)`` of the fixed run's alerts and events, in time order."""
    at = lambda i: T0 + PERIOD_S * i  # noqa: E731
    return [
        ("event", {"t": at(1), "kind": "event", "message": f"run {run_id} started: 2 tiles x 8 cycles", "run_id": run_id}),
        ("alert", {"t": at(12) - 0.1, "kind": "alert", **{k: v for k, v in ALERT.items()}, "first_seen": at(12)}),
        ("alert", {"t": at(19) + 0.1, "kind": "alert", "message": "stage preprocess-0 crashed (exit -9); restart 1 in 0.1 s", "stage": "preprocess-0"}),
        ("event", {"t": at(20) + 0.1, "kind": "event", "message": "stage preprocess-0 restarted (1 so far)", "stage": "preprocess-0"}),
        ("event", {"t": at(38) + 0.1, "kind": "event", "message": f"cleared: {ALERT['message']}", "rule": ALERT["rule"],
                   "subject": ALERT["subject"], "cleared": at(38)}),
    ]


def logs() -> list[dict]:
    """Log records (the ``log`` topic) of the fixed run."""
    return [
        {"t": T0 + 0.2, "level": "INFO", "logger": "appliance.supervisor", "message": f"run {RUN_ID}: 5 stages, 4 rings, output runs/{RUN_ID}"},
        {"t": T0 + 6.1, "level": "WARNING", "logger": "appliance.stage", "message": "writer-0: write of s_1102_c3 took 1342 ms "
         "(budget 50 ms): the run folder's disk is slow or the writer is throttled (fault drill writer-0:slow_ms=200)"},
    ]


def write_run(root: Path, run_id: str = RUN_ID) -> Path:
    """The fixed run as a run writes it: ``ROOT/.state/RUN/stats.jsonl`` and a flight
    recorder segment in ``ROOT/.state/recorder``; returns the state folder."""
    state = root / ".state" / run_id
    state.mkdir(parents=True)
    (state / "stats.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples(run_id)))
    recorder = root / ".state" / "recorder"
    recorder.mkdir()
    lines = [{"topic": "stats", "t": s["t"], "body": s} for s in samples(run_id)]
    lines += [{"topic": topic, "t": body["t"], "body": {k: v for k, v in body.items() if k != "t"}} for topic, body in events(run_id)]
    lines.sort(key=lambda r: r["t"])
    (recorder / "flight-00000001.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return state


class FixedClock:
    """The console's clock (epoch seconds) that moves only when a test moves it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
