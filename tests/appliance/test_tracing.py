"""Traces of a real run: the run span, its cycles, sampled frames with a span per stage, and an
offload job of the run, all one trace whose ids every process computes from the run id."""

from __future__ import annotations

import time

import pytest

from appliance.pipeline import Supervisor
from appliance.tracing import read_spans, span_id_for, trace_id_for
from tests.runs import small_run_config

RUN_ID = "TRACED"


def _hex(n: int, width: int) -> str:
    return f"0x{n:0{width}x}"


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    root = tmp_path_factory.mktemp("traced")
    cfg = small_run_config(root, "run.cycles=6", "run.tiles=[1101, 1102]", "tracing.frame_sample=1.0")
    summary = Supervisor(cfg, run_id=RUN_ID).run()
    return cfg, root, summary


def test_the_trace_of_a_real_run_is_run_cycles_frames_stages(traced):
    cfg, root, summary = traced
    spans = list(read_spans(root / ".state" / RUN_ID))
    tid = _hex(trace_id_for(RUN_ID), 32)
    assert spans and {s["context"]["trace_id"] for s in spans} == {tid}
    by_id = {s["context"]["span_id"]: s for s in spans}
    (run,) = [s for s in spans if s["name"] == f"run {RUN_ID}"]
    assert run["parent_id"] is None and run["context"]["span_id"] == _hex(span_id_for(RUN_ID, "run"), 16)
    assert run["attributes"]["cycles"] == 6 and run["attributes"]["run.state"] == "done"
    cycles = {s["attributes"]["cycle"]: s for s in spans if s["name"].startswith("cycle ")}
    assert sorted(cycles) == list(range(1, 7))
    for c, s in cycles.items():
        assert s["parent_id"] == run["context"]["span_id"] and s["context"]["span_id"] == _hex(span_id_for(RUN_ID, "cycle", c), 16)
        assert s["attributes"]["tiles"] == 2
    frames = [s for s in spans if s["name"].startswith("frame ")]
    calls = [s for s in frames if s["attributes"]["frame.kind"] == 3]  # FrameKind.CALLS: one per tile-cycle
    assert len(calls) == 2 * 6
    for f in frames:  # under its cycle (positions and filters, cycle 0: under the run)
        parent = by_id[f["parent_id"]]
        assert parent["name"] == (f"cycle {f['attributes']['cycle']}" if f["attributes"]["cycle"] else f"run {RUN_ID}")
    # every calls frame has a span per stage it passed, in order, inside the frame's span
    for f in calls:
        kids = sorted((s for s in spans if s["parent_id"] == f["context"]["span_id"]), key=lambda s: s["start_time"])
        assert [k["name"] for k in kids] == ["source", "preprocess", "kernel", "basecall", "writer"], [k["name"] for k in kids]
        assert all(f["start_time"] <= k["start_time"] <= k["end_time"] <= f["end_time"] for k in kids)


def test_an_offload_job_of_the_run_is_a_span_of_its_trace(traced, tmp_path):
    from appliance.offload import Orchestrator

    cfg, root, _summary = traced
    orch = Orchestrator(cfg.offload, root, scan=False, tracing=cfg.tracing)
    orch.start()
    try:
        job = orch.submit("cycle-qc", {"run": RUN_ID, "cycle": 1}).job
        deadline = time.monotonic() + 120
        while orch.ledger.get(job.id).state != "succeeded":
            assert time.monotonic() < deadline, orch.ledger.get(job.id)
            time.sleep(0.1)
        time.sleep(0.5)  # collected on the next tick or wake
    finally:
        orch.stop(30)
    spans = list(read_spans(root / ".offload"))
    (span,) = [s for s in spans if s["name"] == "job cycle-qc" and s["attributes"]["job.id"] == job.id]
    assert span["context"]["trace_id"] == _hex(trace_id_for(RUN_ID), 32)
    assert span["parent_id"] == _hex(span_id_for(RUN_ID, "run"), 16)
    kids = {s["name"]: s for s in spans if s["parent_id"] == span["context"]["span_id"]}
    assert set(kids) == {"queue wait", "attempt 1"}
    # the ledger's history names the attempt's span: a history line leads to it
    from appliance.offload import Ledger

    with Ledger(orch.ledger_path) as led:
        history = led.events(job.id)
    attempt = kids["attempt 1"]
    ids = {(e["trace_id"], e["span_id"]) for e in history if e["to_state"] != "queued"}
    assert ids == {(attempt["context"]["trace_id"][2:], attempt["context"]["span_id"][2:])}
    assert [e["to_state"] for e in history if e["span_id"]] == ["leased", "running", "succeeded"]


def test_tracing_settings_are_validated():
    from appliance.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="tracing.frame_sample"):
        load_config(overrides=["tracing.frame_sample=2"])
    with pytest.raises(ConfigError, match="tracing.otlp_endpoint"):
        load_config(overrides=['tracing.otlp_endpoint="collector:4318"'])
