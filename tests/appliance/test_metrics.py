"""The Prometheus exporter, scraped over real HTTP while a real run goes on."""

from __future__ import annotations

import platform
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance._version import __version__
from appliance.config import load_config
from appliance.metrics import MetricsExporter, run_state
from appliance.pipeline import Supervisor


def _scrape(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _hist(seconds):
    from appliance.pipeline.histogram import LatencyHistogram

    h = LatencyHistogram()
    for x in seconds:
        h.add(int(x * 1e9))
    return h.sparse()


def test_exporter_serves_a_sample_with_conventional_names():
    sample = {
        "state": "acquiring", "frames_acquired": 12, "frames_planned": 208,
        "rings": {"raw.0.0": {"occupancy": 3, "n_slots": 64, "written": 12, "read": 9, "drops": 1},
                  "corrected.0.0": {"occupancy": 1, "n_slots": 64, "written": 9, "read": 8, "drops": 0}},
        "stages": {"source-0": {"alive": True, "restarts": 0, "frames_in": 12, "frames_out": 12},
                   "preprocess-0": {"stage": "preprocess", "replica": 0, "alive": True, "restarts": 0, "frames_in": 9, "frames_out": 9},
                   "kernel-0": {"alive": False, "exitcode": -9, "restarts": 2},
                   "basecall-0": {"alive": False, "exitcode": 0, "restarts": 0},
                   "writer-0": {"alive": True, "restarts": 0, "stage_latency_hist": _hist([2e-3, 2e-3, 0.2]), "e2e_latency_hist": _hist([0.3, 3.0]),
                                "stage_latency_sum_s": 0.204, "e2e_latency_sum_s": 3.3}},
        "alerts": [{"rule": "stage_over_budget", "subject": "kernel-0", "severity": "warning", "message": "m", "first_seen": 1.0}],
    }
    events = [{"kind": "alert", "rule": "stage_over_budget"}, {"kind": "alert", "rule": "frames_dropped"}, {"kind": "alert", "rule": "frames_dropped"},
              {"kind": "event", "rule": "frames_dropped", "cleared": 2.0}, {"kind": "event", "message": "paused"}]
    with MetricsExporter(lambda: (sample, events), port=0) as exp:
        m = _scrape(exp.port)
    assert m[("appliance_ring_occupancy", (("ring", "raw.0.0"),))] == 3
    assert m[("appliance_ring_drops_total", (("ring", "raw.0.0"),))] == 1
    assert m[("appliance_stage_items_total", (("outcome", "in"), ("stage", "preprocess-0")))] == 9
    assert m[("appliance_stage_items_total", (("outcome", "out"), ("stage", "preprocess-0")))] == 9
    assert m[("appliance_stage_items_total", (("outcome", "dropped"), ("stage", "source-0")))] == 1
    assert m[("appliance_stage_restarts_total", (("stage", "kernel-0"),))] == 2
    assert m[("appliance_stage_up", (("stage", "kernel-0"),))] == 0  # killed
    assert m[("appliance_stage_up", (("stage", "basecall-0"),))] == 1  # finished normally: not down
    assert m[("appliance_stage_state", (("stage", "basecall-0"), ("state", "finished")))] == 1
    assert m[("appliance_stage_state", (("stage", "kernel-0"), ("state", "failed")))] == 1
    assert m[("appliance_stage_state", (("stage", "source-0"), ("state", "running")))] == 1
    assert m[("appliance_alerts_total", (("alert", "frames_dropped"),))] == 2  # raised twice; the clear is not counted
    assert m[("appliance_alerts_total", (("alert", "stage_over_budget"),))] == 1
    assert m[("appliance_alert_active", (("alert", "stage_over_budget"), ("severity", "warning"), ("stage", "kernel-0")))] == 1
    assert not [k for k in m if k[0] == "appliance_alert_active" and dict(k[1])["alert"] == "frames_dropped"]
    assert m[("appliance_run_state", (("state", "acquiring"),))] == 1
    assert m[("appliance_build_info", (("python", platform.python_version()), ("version", __version__)))] == 1
    assert m[("process_resident_memory_bytes", ())] > 0
    assert m[("process_cpu_seconds_total", ())] >= 0
    assert m[("appliance_stage_latency_seconds_bucket", (("le", "0.0025"), ("stage", "writer-0")))] == 2
    assert m[("appliance_stage_latency_seconds_bucket", (("le", "+Inf"), ("stage", "writer-0")))] == 3
    assert m[("appliance_stage_latency_seconds_count", (("stage", "writer-0"),))] == 3
    assert m[("appliance_e2e_latency_seconds_bucket", (("le", "0.5"),))] == 1
    assert m[("appliance_e2e_latency_seconds_bucket", (("le", "5.0"),))] == 2
    assert m[("appliance_stage_latency_seconds_sum", (("stage", "writer-0"),))] == pytest.approx(0.204)  # exact, not from edges
    assert m[("appliance_e2e_latency_seconds_sum", ())] == pytest.approx(3.3)


def test_the_histogram_keeps_the_exact_sum_and_a_sample_without_one_is_estimated():
    from appliance.metrics import StatsCollector
    from appliance.pipeline.histogram import LatencyHistogram

    h = LatencyHistogram()
    for ns in (1_500_000, 2_000_000, 250_000_000):
        h.add(ns)
    assert h.sum_ns == 253_500_000 and h.sum_s == pytest.approx(0.2535) and h.total == 3
    buckets, exact = StatsCollector._buckets(h.sparse(), h.sum_s)
    assert exact == pytest.approx(0.2535) and buckets[-1] == ("+Inf", 3)
    _, estimated = StatsCollector._buckets(h.sparse())  # edges: within a bucket's width (~12%) above
    assert 0.2535 <= estimated <= 0.2535 * 1.13


def test_run_state_says_draining_once_the_source_finished():
    stages = {"source-0": {"alive": False, "exitcode": 0}, "writer-0": {"alive": True}}
    assert run_state({"state": "acquiring", "stages": stages}) == "draining"
    assert run_state({"state": "draining", "stages": {}}) == "draining"
    assert run_state({"state": "acquiring", "stages": {"source-0": {"alive": True}}}) == "acquiring"
    crashed = {"source-0": {"alive": False, "exitcode": 1}}
    assert run_state({"state": "acquiring", "stages": crashed}) == "acquiring"
    assert run_state({"state": "done", "stages": stages}) == "done"


def test_exporter_during_a_real_run(tmp_path):
    import socket

    with socket.socket() as s:  # a free port for the run's exporter
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = load_config(overrides=[f'output.root="{tmp_path}"', "source.synthetic.tile_size=256", "source.rate_hz=40", f"metrics.port={port}"])
    sup = Supervisor(cfg, run_id="METRICS")
    thread = threading.Thread(target=sup.run)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        seen = 0
        while seen < 20:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.5)
            try:
                scraped = _scrape(port)
                seen = scraped.get(("appliance_frames_acquired_total", (("instrument", "SIM01"),)), 0)
            except OSError:
                continue
    finally:
        thread.join(120)
    # every series carries the instrument, the process collector's too
    assert all(dict(labels).get("instrument") == "SIM01" for _, labels in scraped), [k for k in scraped if "instrument" not in dict(k[1])][:5]
    try:
        _scrape(port)
        raise AssertionError("exporter still serving after the run")
    except OSError:
        pass


def test_jobs_collector_over_a_real_ledger(tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest

    from appliance.metrics import JobsCollector
    from appliance.offload import Ledger

    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        for i in range(3):
            ledger.submit("fastq", {"run": f"R{i}"}, priority="realtime")
        ledger.submit("reprocess", {"run": "R0"}, priority="reprocess")
        job = ledger.lease_next("me", 30.0)
        assert job is not None and job.priority == "realtime"
        reg = CollectorRegistry(auto_describe=False)
        reg.register(JobsCollector(ledger.stats))
        families = {f.name: f for f in text_string_to_metric_families(generate_latest(reg).decode())}
    depth = {s.labels["class"]: s.value for s in families["appliance_jobs_queue_depth"].samples}
    assert depth == {"realtime": 2.0, "batch": 0.0, "reprocess": 1.0}
    jobs = {(s.labels["class"], s.labels["state"]): s.value for s in families["appliance_jobs"].samples}
    assert jobs[("realtime", "leased")] == 1.0 and jobs[("realtime", "queued")] == 2.0
    assert families["appliance_jobs_backpressure"].samples[0].value == 0.0
    ages = {s.labels["class"]: s.value for s in families["appliance_jobs_oldest_waiting_age_seconds"].samples}
    assert ages["realtime"] >= 0.0 and ages["batch"] == 0.0


def test_pool_gauges_and_the_instrument_label():
    """An orchestrator with compute pools exports one gauge family per pool figure, labelled
    by pool; a LabelledRegistry adds ``instrument`` to every series but keeps a series' own."""
    from prometheus_client import generate_latest

    from appliance.metrics import JobsCollector, LabelledRegistry

    stats = {"classes": {"realtime": {"queued": 2, "depth": 2}}, "backpressure": {"active": False},
             "pools": [{"pool": "local", "slots": 2, "used": 1, "free": 1, "pending_jobs": 0, "backlog": 2, "starved_s": 0},
                       {"pool": "hpc", "slots": 0, "used": 0, "free": 0, "pending_jobs": 3, "backlog": 5, "starved_s": 640.0}]}
    reg = LabelledRegistry({"instrument": "SIM07"})
    reg.register(JobsCollector(lambda: stats))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(reg).decode())}
    free = {s.labels["pool"]: s.value for s in families["appliance_pool_slots_free"].samples}
    assert free == {"local": 1.0, "hpc": 0.0}
    starved = {s.labels["pool"]: s.value for s in families["appliance_pool_starved_seconds"].samples}
    assert starved == {"local": 0.0, "hpc": 640.0}
    assert {s.labels["pool"]: s.value for s in families["appliance_pool_pending_jobs"].samples}["hpc"] == 3.0
    assert all(s.labels["instrument"] == "SIM07" for f in families.values() for s in f.samples)
    # a series with its own instrument label (a lab ledger's) keeps it
    from prometheus_client.core import GaugeMetricFamily

    class Own:
        def collect(self):
            g = GaugeMetricFamily("lab_backlog", "x", labels=["instrument"])
            g.add_metric(["SIM02"], 4)
            yield g

    reg.register(Own())
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(reg).decode())}
    assert families["lab_backlog"].samples[0].labels == {"instrument": "SIM02"}
