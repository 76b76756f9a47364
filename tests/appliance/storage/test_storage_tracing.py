"""Storage moves and verifications are spans of the run's trace (SDK in-memory exporter) over
real moves of the real run folder the package fixture writes; their log lines carry their ids."""

from __future__ import annotations

import io
import json
import logging

import pytest

from appliance.config import TracingSection
from appliance.logjson import JsonFormatter
from appliance.tracing import make_tracer, read_spans, span_id_for, trace_id_for
from tests.appliance.storage.conftest import RUN, flip_byte, manager


@pytest.fixture
def traced(tmp_path):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracer = make_tracer(TracingSection(), tmp_path / "spans", "storage-test", None, exporter=exporter)
    yield tracer, exporter
    tracer.close()


def _spans(exporter, name_prefix: str) -> list:
    return [s for s in exporter.get_finished_spans() if s.name.startswith(name_prefix)]


def _of_the_run(span) -> None:
    assert span.context.trace_id == trace_id_for(RUN) and span.parent.span_id == span_id_for(RUN, "run")
    assert span.attributes["run.id"] == RUN


def test_moves_and_verification_of_a_real_run_are_spans_of_its_trace(tiers, traced):
    hot, warm, cold, policy = tiers
    tracer, exporter = traced
    with manager(hot, policy, tracer=tracer) as m:
        assert m.gc()["errors"] == []
        files = m.catalog.files(RUN)
        res = m.verify(RUN)
        assert res["ok"]
    (to_warm,) = _spans(exporter, "storage move hot->warm")
    _of_the_run(to_warm)
    a = to_warm.attributes
    assert (a["storage.from_tier"], a["storage.to_tier"], a["storage.reason"]) == ("hot", "warm", "policy")
    assert a["storage.files"] == len(files) and a["storage.bytes"] == sum(f.size for f in files)
    assert a["storage.verified"] is True and a["storage.outcome"] == "ok" and a["storage.files_failed"] == 0
    bags = _spans(exporter, "storage move hot->cold")
    assert sorted(s.attributes["storage.data_class"] for s in bags) == sorted({f.data_class for f in files})
    for s in bags:
        _of_the_run(s)
        assert s.attributes["storage.verified"] is True and s.attributes["storage.outcome"] == "ok"
    assert sum(s.attributes["storage.files"] for s in bags) == len(files)
    assert sum(s.attributes["storage.bytes"] for s in bags) == sum(f.size for f in files)
    (verify,) = _spans(exporter, "storage verify")
    _of_the_run(verify)
    checked = sum(t["checked"] for t in res["tiers"].values())
    assert verify.attributes["storage.files"] == checked and verify.attributes["storage.verified"] is True
    assert verify.attributes["storage.outcome"] == "ok" and verify.attributes["storage.tiers"] == "hot,warm,cold"
    assert checked > len(files)  # warm and cold for every file, hot for those not deleted


def test_a_failed_verification_and_its_repair_are_spans_and_its_log_lines_carry_the_span(tiers, traced):
    hot, warm, cold, policy = tiers
    tracer, exporter = traced
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("appliance.storage")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)  # the repair's line is an info
    try:
        with manager(hot, policy, tracer=tracer) as m:
            assert m.gc()["errors"] == []
            victim = next(f for f in m.catalog.files(RUN) if f.data_class == "basecalls")
            flip_byte(warm / m.catalog.copies(victim.id)["warm"].url)
            res = m.verify(RUN)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert not res["ok"] and res["repaired"] == 1
    (verify,) = _spans(exporter, "storage verify")
    _of_the_run(verify)
    assert verify.attributes["storage.verified"] is False and verify.attributes["storage.corrupt"] == 1
    assert verify.attributes["storage.outcome"] == "failed: 1 of %d copies corrupt" % verify.attributes["storage.files"]
    (repair,) = [s for s in exporter.get_finished_spans() if s.attributes.get("storage.reason") == "repair"]
    _of_the_run(repair)
    assert repair.attributes["storage.to_tier"] == "warm" and repair.attributes["storage.rel"] == victim.rel
    assert repair.attributes["storage.verified"] is True and repair.attributes["storage.bytes"] == victim.size
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    corrupt = [x for x in lines if "marked corrupt" in x["msg"]]  # the mover's line and the alert's
    assert corrupt and all(x["span_id"] == f"{verify.context.span_id:016x}" for x in corrupt)
    assert all(x["trace_id"] == f"{trace_id_for(RUN):032x}" for x in corrupt)
    repaired = [x for x in lines if "recopied" in x["msg"]]
    assert repaired and all(x["span_id"] == f"{repair.context.span_id:016x}" for x in repaired)


def test_with_tracing_on_in_the_config_spans_go_to_the_catalog_folder(tiers):
    hot, warm, cold, policy = tiers
    with manager(hot, policy, tracing=TracingSection()) as m:
        m.gc()
        m.verify(RUN)
        folder = m.catalog_path.parent
    names = {s["name"] for s in read_spans(folder)}
    assert {"storage move hot->warm", "storage move hot->cold", "storage verify"} <= names
    with manager(hot, policy, tracing=TracingSection(enabled=False)) as m:  # off: no tracer, no files
        m.verify(RUN)
        assert m._tracer is None
