"""The Prometheus exporter, scraped over real HTTP while a real run goes on."""

from __future__ import annotations

import threading
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from appliance.config import load_config
from appliance.metrics import MetricsExporter
from appliance.pipeline import Supervisor


def _scrape(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _hist(seconds):
    from appliance.pipeline._histogram import LatencyHistogram

    h = LatencyHistogram()
    for x in seconds:
        h.add(int(x * 1e9))
    return h.sparse()


def test_exporter_serves_a_sample_with_conventional_names():
    sample = {
        "state": "acquiring", "frames_acquired": 12, "frames_planned": 208,
        "rings": {"raw.0.0": {"occupancy": 3, "n_slots": 64, "written": 12, "read": 9, "drops": 1},
                  "corrected.0.0": {"occupancy": 1, "n_slots": 64, "written": 9, "read": 8, "drops": 0}},
        "stages": {"source-0": {"alive": True, "restarts": 0}, "kernel-0": {"alive": False, "restarts": 2},
                   "writer-0": {"alive": True, "restarts": 0, "stage_latency_hist": _hist([2e-3, 2e-3, 0.2]), "e2e_latency_hist": _hist([0.3, 3.0])}},
    }
    events = [{"kind": "alert"}, {"kind": "alert"}, {"kind": "event"}]
    with MetricsExporter(lambda: (sample, events), port=0) as exp:
        m = _scrape(exp.port)
    assert m[("appliance_ring_occupancy", (("ring", "raw.0.0"),))] == 3
    assert m[("appliance_ring_drops_total", (("ring", "raw.0.0"),))] == 1
    assert m[("appliance_stage_items_total", (("outcome", "in"), ("stage", "preprocess-0")))] == 9
    assert m[("appliance_stage_items_total", (("outcome", "out"), ("stage", "preprocess-0")))] == 9
    assert m[("appliance_stage_items_total", (("outcome", "dropped"), ("stage", "source-0")))] == 1
    assert m[("appliance_stage_restarts_total", (("stage", "kernel-0"),))] == 2
    assert m[("appliance_stage_up", (("stage", "kernel-0"),))] == 0
    assert m[("appliance_alerts_total", (("kind", "alert"),))] == 2
    assert m[("appliance_run_state", (("state", "acquiring"),))] == 1
    assert m[("appliance_stage_latency_seconds_bucket", (("le", "0.0025"), ("stage", "writer-0")))] == 2
    assert m[("appliance_stage_latency_seconds_bucket", (("le", "+Inf"), ("stage", "writer-0")))] == 3
    assert m[("appliance_stage_latency_seconds_count", (("stage", "writer-0"),))] == 3
    assert m[("appliance_e2e_latency_seconds_bucket", (("le", "0.5"),))] == 1
    assert m[("appliance_e2e_latency_seconds_bucket", (("le", "5.0"),))] == 2


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
                seen = _scrape(port).get(("appliance_frames_acquired_total", ()), 0)
            except OSError:
                continue
    finally:
        thread.join(120)
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
