"""Log records carry the ids of the OpenTelemetry span they were written in (JSON lines and
journal fields), and the run's trace id outside a span."""

from __future__ import annotations

import io
import json
import logging

import pytest

from appliance.logjson import JournalHandler, JsonFormatter
from appliance.tracing import attempt_ids, current_span_ids, make_tracer, span_id_for, trace_hex, trace_id_for

RUN = "261203_SIM01_0007_FC0007"


@pytest.fixture
def tracer(tmp_path):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from appliance.config import TracingSection

    exporter = InMemorySpanExporter()
    t = make_tracer(TracingSection(), tmp_path, "test", None, exporter=exporter)
    yield t, exporter
    t.close()


def _record(msg: str, **extra) -> logging.LogRecord:
    rec = logging.LogRecord("appliance.test", logging.WARNING, __file__, 1, msg, None, None)
    rec.__dict__.update(extra)
    return rec


def test_inside_a_span_the_line_and_the_journal_carry_its_trace_and_span(tracer):
    t, exporter = tracer
    fmt, journal = JsonFormatter(), JournalHandler("/nonexistent/socket", use_module=False)
    with t.storage("storage verify", RUN, {}) as span:
        line = json.loads(fmt.format(_record("inside", run_id=RUN)))
        fields = dict(journal.fields(_record("inside", run_id=RUN)))
        ctx = span.get_span_context()
    assert line["trace_id"] == f"{trace_id_for(RUN):032x}" == f"{ctx.trace_id:032x}"  # the run's trace
    assert line["span_id"] == f"{ctx.span_id:016x}" != f"{span_id_for(RUN, 'run'):016x}"
    assert fields["TRACE_ID"] == line["trace_id"] and fields["SPAN_ID"] == line["span_id"]
    (finished,) = exporter.get_finished_spans()
    assert finished.context.span_id == ctx.span_id and finished.parent.span_id == span_id_for(RUN, "run")
    # outside the span: the run's trace id alone, as before
    line = json.loads(fmt.format(_record("outside", run_id=RUN)))
    fields = dict(journal.fields(_record("outside", run_id=RUN)))
    assert line["trace_id"] == trace_hex(RUN) and "span_id" not in line
    assert fields["TRACE_ID"] == trace_hex(RUN) and "SPAN_ID" not in fields
    assert current_span_ids() is None
    # neither a run nor a span: no ids; a record's own trace_id is kept
    assert "trace_id" not in json.loads(fmt.format(_record("plain")))
    assert json.loads(fmt.format(_record("own", trace_id="abc")))["trace_id"] == "abc"


def test_a_span_of_another_thread_does_not_leak_into_this_ones_lines(tracer):
    import threading

    t, _ = tracer
    fmt = JsonFormatter()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(fmt)
    log = logging.getLogger("appliance.test.threads")
    log.addHandler(handler)
    log.propagate = False
    try:
        entered, done = threading.Event(), threading.Event()

        def other():
            with t.storage("storage scrub", RUN, {}):
                entered.set()
                done.wait(10)

        th = threading.Thread(target=other)
        th.start()
        entered.wait(10)
        log.warning("main thread")
        done.set()
        th.join(10)
    finally:
        log.removeHandler(handler)
        log.propagate = True
    assert "span_id" not in json.loads(stream.getvalue())


def test_attempt_ids_need_a_run_and_an_attempt():
    assert attempt_ids(None, 1, 1) == (None, None) and attempt_ids(RUN, 1, 0) == (None, None)
    tid, sid = attempt_ids(RUN, 7, 2)
    assert tid == trace_hex(RUN) and len(sid) == 16 and sid != attempt_ids(RUN, 7, 1)[1]
