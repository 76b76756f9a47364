"""The Prometheus exporter: the supervisor's latest stats sample, in conventional names.

Metrics are computed at scrape time from the sample the supervisor takes at 2 Hz (ring
control blocks and process state), so a scrape never touches the data path. Per-stage item
counts come from the rings: what a stage consumed is the read counter of its input rings,
what it produced the write counter of its output rings.
"""

from __future__ import annotations

import threading
from typing import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import start_http_server

from appliance.schema import PIPELINE, StatsSample, ring_samples, stage_samples
from appliance.pipeline.histogram import LatencyHistogram

__all__ = [
    "BuildInfoCollector",
    "JobsCollector",
    "LabelledRegistry",
    "LATENCY_BUCKETS_S",
    "MetricsExporter",
    "RUN_STATES",
    "STAGE_STATES",
    "StatsCollector",
    "StorageCollector",
    "TransferCollector",
    "alerts_raised",
    "run_state",
    "stage_process_state",
]

#: histogram bucket bounds (seconds) of the exported latency histograms
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


#: the values of appliance_run_state's ``state`` label
RUN_STATES = ("starting", "prerendering", "acquiring", "paused", "draining", "done", "stopped_early", "failed")
#: the values of appliance_stage_state's ``state`` label
STAGE_STATES = ("running", "finished", "failed")


def stage_process_state(st: dict) -> str:
    """``running``, ``finished`` (exited 0: its work is done) or ``failed`` (gone otherwise)."""
    if st.get("alive"):
        return "running"
    return "finished" if st.get("exitcode") == 0 else "failed"


def run_state(sample: dict) -> str | None:
    """The run's state for appliance_run_state: the supervisor's, except that a run whose
    source has finished (every frame acquired) while the rest still works is ``draining``."""
    state = sample.get("state")
    if state in ("acquiring", "paused"):
        stages = sample.get("stages") or {}
        sources = [st for name, st in stages.items() if name.startswith("source")]
        if sources and all(stage_process_state(st) == "finished" for st in sources):
            return "draining"
    return state


def alerts_raised(events: list) -> dict[str, int]:
    """How many times each alert (rule) was raised, from the run's events (a cleared alert
    is not counted again)."""
    counts: dict[str, int] = {}
    for ev in events:
        if ev.get("kind") in ("alert", "error") and ev.get("rule") and "cleared" not in ev:
            counts[ev["rule"]] = counts.get(ev["rule"], 0) + 1
    return counts


class BuildInfoCollector:
    """``appliance_build_info{version, python}`` = 1, the usual way to export a version."""

    def collect(self):
        import platform

        from appliance._version import __version__

        info = GaugeMetricFamily("appliance_build_info", "Always 1: the appliance's version and Python", labels=["version", "python"])
        info.add_metric([__version__, platform.python_version()], 1)
        yield info


class StatsCollector:
    """A prometheus-client collector over ``snapshot()``: (stats sample, events list)."""

    def __init__(self, snapshot: Callable[[], tuple[dict, list]]) -> None:
        self._snapshot = snapshot

    def collect(self):
        sample, events = self._snapshot()
        rings = sample.get("rings", {})
        occ = GaugeMetricFamily("appliance_ring_occupancy", "Frames in the ring now", labels=["ring"])
        cap = GaugeMetricFamily("appliance_ring_capacity", "Slots of the ring", labels=["ring"])
        drops = CounterMetricFamily("appliance_ring_drops", "Frames dropped at the ring (drop_newest policy)", labels=["ring"])
        written = CounterMetricFamily("appliance_ring_written", "Frames committed into the ring", labels=["ring"])
        items = CounterMetricFamily("appliance_stage_items", "Frames a stage consumed (in) and produced (out)", labels=["stage", "outcome"])
        per_stage: dict[tuple[str, str], int] = {}
        for name, r in sorted(rings.items()):
            occ.add_metric([name], r["occupancy"])
            cap.add_metric([name], r["n_slots"])
            drops.add_metric([name], r["drops"])
            written.add_metric([name], r["written"])
        for r in ring_samples(sample):  # the frames a camera could not put into its ring
            if r.drops:
                per_stage[(r.producer, "dropped")] = per_stage.get((r.producer, "dropped"), 0) + r.drops
        # each stage's own counts, from its status record: they move frame by frame and end at
        # the stage's totals (a ring's read counter moves only when the stage releases slots)
        for st in stage_samples(sample):
            if st.stage != PIPELINE[0]:  # the source takes nothing in
                per_stage[(st.name, "in")] = st.frames_in
            if st.stage != PIPELINE[-1]:  # the writer sends nothing on
                per_stage[(st.name, "out")] = st.frames_out
        for (stage, outcome), n in sorted(per_stage.items()):
            items.add_metric([stage, outcome], n)
        up = GaugeMetricFamily("appliance_stage_up", "1 while the stage process runs or after it finished normally; 0 when it is gone otherwise (crashed, killed)", labels=["stage"])
        stage_state = GaugeMetricFamily("appliance_stage_state", "1 for the stage process's state: running, finished (exit 0) or failed", labels=["stage", "state"])
        restarts = CounterMetricFamily("appliance_stage_restarts", "Restarts of the stage after a crash", labels=["stage"])
        stages = sample.get("stages", {})
        for stage, st in sorted(stages.items()):
            now = stage_process_state(st)
            up.add_metric([stage], 0 if now == "failed" else 1)
            for s in STAGE_STATES:
                stage_state.add_metric([stage, s], 1 if now == s else 0)
            restarts.add_metric([stage], st["restarts"])
        frames = CounterMetricFamily("appliance_frames_acquired", "Frames the camera delivered (kept or dropped)")
        frames.add_metric([], sample.get("frames_acquired", 0))
        planned = GaugeMetricFamily("appliance_frames_planned", "Frames the run plans to acquire")
        planned.add_metric([], sample.get("frames_planned", 0))
        alerts = CounterMetricFamily("appliance_alerts", "Alerts raised in this run, by alert (rule) name", labels=["alert"])
        for name, n in sorted(alerts_raised(events).items()):
            alerts.add_metric([name], n)
        active = GaugeMetricFamily("appliance_alert_active", "1 while the alert is active; stage is its subject (a stage, ring, 'run' or 'data')", labels=["alert", "stage", "severity"])
        for a in sorted(StatsSample.from_dict(sample).alerts, key=lambda a: (a.rule, a.subject)):
            active.add_metric([a.rule, a.subject, a.severity], 1)
        state = GaugeMetricFamily("appliance_run_state", "1 for the run's current state", labels=["state"])
        current = run_state(sample)
        for s in RUN_STATES:
            state.add_metric([s], 1 if current == s else 0)
        stage_lat = HistogramMetricFamily("appliance_stage_latency_seconds", "Per frame: leaving the previous stage to done in this one (from the frames' trace timestamps)", labels=["stage"])
        e2e = HistogramMetricFamily("appliance_e2e_latency_seconds", "Per frame: acquisition to done at the writer")
        for stage, st in sorted(sample.get("stages", {}).items()):
            if st.get("stage_latency_hist"):
                stage_lat.add_metric([stage], *self._buckets(st["stage_latency_hist"], st.get("stage_latency_sum_s")))
            if stage.startswith("writer") and st.get("e2e_latency_hist"):
                e2e.add_metric([], *self._buckets(st["e2e_latency_hist"], st.get("e2e_latency_sum_s")))
        yield from (occ, cap, drops, written, items, up, stage_state, restarts, frames, planned, alerts, active, state, stage_lat, e2e)

    @staticmethod
    def _buckets(sparse: dict, sum_s: float | None = None) -> tuple[list[tuple[str, int]], float]:
        counts, total = LatencyHistogram.cumulative(sparse, LATENCY_BUCKETS_S)
        buckets = [(repr(b), c) for b, c in zip(LATENCY_BUCKETS_S, counts)] + [("+Inf", total)]
        if sum_s is not None:
            return buckets, float(sum_s)  # the stage's exact sum
        # a stats sample of an older release has no sum: estimated from the bucket upper edges
        return buckets, sum(LatencyHistogram.upper_edge_s(int(i)) * n for i, n in sparse.items())


class StorageCollector:
    """Storage tiering gauges over ``stats()`` of an ``appliance.storage.StorageManager``
    (register it on ``MetricsExporter.registry``; the shape is in docs/storage.md)."""

    def __init__(self, stats: Callable[[], dict]) -> None:
        self._stats = stats

    def collect(self):
        s = self._stats()
        size = GaugeMetricFamily("appliance_storage_bytes", "Bytes with a verified copy on the tier", labels=["tier"])
        files = GaugeMetricFamily("appliance_storage_files", "Files with a verified copy on the tier", labels=["tier"])
        for tier, t in sorted(s.get("tiers", {}).items()):
            size.add_metric([tier], t["bytes"])
            files.add_metric([tier], t["files"])
        free = GaugeMetricFamily("appliance_storage_hot_free_fraction", "Free fraction of the hot tier's file system")
        free.add_metric([], s.get("hot_free_fraction", 1.0))
        marks = GaugeMetricFamily("appliance_storage_hot_watermark", "The policy's free-fraction watermarks of the hot tier (high: evict; critical: refuse new runs)", labels=["level"])
        for level, value in sorted((s.get("watermarks") or {}).items()):
            marks.add_metric([level], value)
        pending = GaugeMetricFamily("appliance_storage_pending_moves", "Copies, archives and deletes the policy wants and are not done yet")
        pending.add_metric([], s.get("pending_moves", 0))
        corrupt = GaugeMetricFamily("appliance_storage_corrupt_copies", "Copies marked corrupt and not yet repaired")
        corrupt.add_metric([], s.get("corrupt_copies", 0))
        held = GaugeMetricFamily("appliance_storage_held_copies", "Corrupt copies past mover.max_attempts: no longer retried until an operator's verify")
        held.add_metric([], s.get("held_copies", 0))
        failures = CounterMetricFamily("appliance_storage_verification_failures", "Copies that failed a verify re-read (copy, scrub, verify)")
        failures.add_metric([], s.get("verification_failures", 0))
        yield from (size, files, free, marks, pending, corrupt, held, failures)


class TransferCollector:
    """Transfer figures from the transfer journal (``appliance.transfer``; the file at ``path``,
    default ``<data root>/.offload/transfers.sqlite``), read-only at scrape time with one
    aggregate query: bytes sent, bytes re-read for verification and egress bytes (re-reads and
    pulls from an object store, billed apart), transfers by state, attempts; each by direction
    (push, publish, pull). No journal file: no samples (nothing was ever transferred)."""

    #: the states a transfer row can be in, each exported (0 when none)
    STATES = ("running", "verified", "waiting", "failed")

    def __init__(self, path) -> None:
        from pathlib import Path

        self.path = Path(path)

    def collect(self):
        from appliance.transfer import read_totals

        rows = read_totals(self.path)
        if not rows:
            return
        sent = CounterMetricFamily("appliance_transfer_bytes_sent", "Bytes sent to destinations (every attempt)", labels=["direction"])
        reread = CounterMetricFamily("appliance_transfer_bytes_reread", "Bytes read back from destinations to verify them", labels=["direction"])
        egress = CounterMetricFamily("appliance_transfer_egress_bytes", "Bytes read out of an object store (verification re-reads, pulls): billed as egress", labels=["direction"])
        attempts = CounterMetricFamily("appliance_transfer_attempts", "Attempts of transfers (a resumed transfer counts one more)", labels=["direction"])
        seconds = CounterMetricFamily("appliance_transfer_seconds", "Time spent transferring", labels=["direction"])
        states = GaugeMetricFamily("appliance_transfers", "Transfers in the journal by direction and state", labels=["direction", "state"])
        by_dir: dict[str, dict[str, float]] = {}
        by_state: dict[tuple[str, str], int] = {}
        for r in rows:
            d = by_dir.setdefault(r["direction"], {"bytes_sent": 0, "bytes_reread": 0, "egress_bytes": 0, "attempts": 0, "duration_s": 0.0})
            for k in d:
                d[k] += r[k] or 0
            by_state[(r["direction"], r["state"])] = r["transfers"]
        for direction, d in sorted(by_dir.items()):
            sent.add_metric([direction], d["bytes_sent"])
            reread.add_metric([direction], d["bytes_reread"])
            egress.add_metric([direction], d["egress_bytes"])
            attempts.add_metric([direction], d["attempts"])
            seconds.add_metric([direction], d["duration_s"])
            for state in sorted({*self.STATES, *(s for (dd, s) in by_state if dd == direction)}):
                states.add_metric([direction, state], by_state.get((direction, state), 0))
        yield from (sent, reread, egress, attempts, seconds, states)


class JobsCollector:
    """Offload gauges over ``stats()`` of an ``appliance.offload.Orchestrator`` (or a Ledger):
    jobs per class and state, queue depth and oldest waiting age per class, backpressure; and
    the transfer figures (:class:`TransferCollector`) of ``transfers``, the transfer journal,
    by default the orchestrator's data root's (``<data root>/.offload/transfers.sqlite``)."""

    def __init__(self, stats: Callable[[], dict], *, transfers=None) -> None:
        self._stats = stats
        if transfers is None and getattr(getattr(stats, "__self__", None), "data_root", None) is not None:
            from appliance.transfer import default_journal_path

            transfers = default_journal_path(stats.__self__.data_root)
        self._transfers = TransferCollector(transfers) if transfers is not None else None

    def collect(self):
        s = self._stats()
        jobs = GaugeMetricFamily("appliance_jobs", "Offload jobs in the ledger by priority class and state", labels=["class", "state"])
        depth = GaugeMetricFamily("appliance_jobs_queue_depth", "Jobs waiting to run (queued + retrying)", labels=["class"])
        age = GaugeMetricFamily("appliance_jobs_oldest_waiting_age_seconds", "Age of the oldest waiting job", labels=["class"])
        for cls, counts in sorted(s.get("classes", {}).items()):
            for state, n in sorted(counts.items()):
                if state not in ("depth", "oldest_queued_age_s"):
                    jobs.add_metric([cls, state], n)
            depth.add_metric([cls], counts.get("depth", 0))
            age.add_metric([cls], counts.get("oldest_queued_age_s") or 0.0)
        bp = GaugeMetricFamily("appliance_jobs_backpressure", "1 while the ledger is past an admission watermark")
        bp.add_metric([], 1 if s.get("backpressure", {}).get("active") else 0)
        yield from (jobs, depth, age, bp)
        rows = s.get("pools")
        if rows:  # an orchestrator with compute pools: one gauge family per figure, labelled pool
            from appliance.offload.pools import pool_metrics

            for name, doc, values in pool_metrics(rows):
                g = GaugeMetricFamily(name, doc, labels=["pool"])
                for pool, v in sorted(values.items()):
                    g.add_metric([pool], v)
                yield g
        if s.get("burst"):  # cloud pools' burst policy (docs/burst.md)
            from appliance.offload.pools import burst_metrics

            for name, doc, labels, values in burst_metrics(s["burst"]):
                g = GaugeMetricFamily(name, doc, labels=labels)
                for key, v in sorted(values.items()):
                    g.add_metric(list(key), v)
                yield g
        if self._transfers is not None:
            yield from self._transfers.collect()


class LabelledRegistry(CollectorRegistry):
    """A registry that adds constant labels (``instrument``) to every sample it exposes, so
    that one Prometheus scraping a lab's instruments tells their series apart without
    relabelling rules. A sample's own label of the same name wins (a lab ledger's jobs)."""

    def __init__(self, labels: dict[str, str] | None = None) -> None:
        super().__init__(auto_describe=False)
        self.labels = dict(labels or {})

    def collect(self):
        for metric in super().collect():
            if self.labels:
                metric.samples = [s._replace(labels={**s.labels, **{k: v for k, v in self.labels.items() if k not in s.labels}})
                                  for s in metric.samples]
            yield metric


class MetricsExporter:
    """Serves ``/metrics`` over HTTP on ``address:port`` (port 0: an ephemeral one) from its
    own registry, in a daemon thread. ``start()``/``stop()``; a context manager."""

    def __init__(self, snapshot: Callable[[], tuple[dict, list]], port: int, address: str = "127.0.0.1",
                 instrument: str | None = None) -> None:
        from prometheus_client import PlatformCollector, ProcessCollector

        #: every series carries ``instrument`` (run.instrument_id) when one is given
        self.registry = LabelledRegistry({"instrument": instrument} if instrument else None)
        self.registry.register(StatsCollector(snapshot))
        self.registry.register(BuildInfoCollector())
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        PlatformCollector(registry=self.registry)  # python_info
        self.address = address
        self.port = port
        self._server = None
        self._thread: threading.Thread | None = None

    def start(self) -> "MetricsExporter":
        if self._server is None:
            self._server, self._thread = start_http_server(self.port, self.address, self.registry)
            self.port = self._server.server_port
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, close the listening socket and join the thread (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout)
            self._server = self._thread = None

    def __enter__(self) -> "MetricsExporter":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
