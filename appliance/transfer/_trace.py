"""One OpenTelemetry span per transfer (push, publish, pull), through ``appliance.tracing``.

A transfer's span carries what the journal records of it (bytes sent and re-read, egress bytes,
files, destination, verification method, end state, error), so a slow or refused handoff is
seen in the same trace viewer as the job it feeds. With ``run_id`` the span is a child of that
run's span (the ids every process computes from the run id, :mod:`appliance.tracing`), as the
orchestrator's job spans are; otherwise it starts its own trace. Tracing never fails a transfer.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("appliance.transfer")


def transfer_span(tracer, direction: str, start_ns: int, *, destination: str, files: int, bytes_sent: int,
                  bytes_reread: int, egress_bytes: int, verification: str, state: str, error: str | None = None,
                  job_id: int | None = None, run_id: str | None = None) -> None:
    """Record the span ``transfer DIRECTION`` from ``start_ns`` (wall-clock ns) to now on
    ``tracer``: an :class:`appliance.tracing.RunTracer` or an OpenTelemetry tracer; None: nothing."""
    if tracer is None:
        return
    try:
        from opentelemetry import trace
        from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

        from appliance.tracing import span_id_for, trace_id_for

        otel = getattr(tracer, "tracer", tracer)
        context = None
        if run_id:
            parent = SpanContext(trace_id_for(run_id), span_id_for(run_id, "run"), is_remote=True,
                                 trace_flags=TraceFlags(TraceFlags.SAMPLED))
            context = trace.set_span_in_context(NonRecordingSpan(parent))
        attrs = {"transfer.direction": direction, "transfer.destination": destination, "transfer.files": files,
                 "transfer.bytes": bytes_sent, "transfer.bytes_reread": bytes_reread,
                 "transfer.egress_bytes": egress_bytes, "transfer.verification": verification,
                 "transfer.state": state}
        if error:
            attrs["transfer.error"] = error
        if job_id is not None:
            attrs["job.id"] = job_id
        if run_id:
            attrs["run.id"] = run_id
        span = otel.start_span(f"transfer {direction}", context=context, start_time=start_ns, attributes=attrs)
        if state not in ("verified", "reused"):
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, error or state))
        span.end(end_time=time.time_ns())
    except Exception as exc:  # diagnostics never stop a transfer
        log.debug("no span for the %s to %s: %s", direction, destination, exc)
