"""Traces with OpenTelemetry: a run is a trace, from photon to analysis job.

Every process of a run computes the same ids from the run id alone, so nothing has to be
passed between them and a resumed run goes on in the same trace:

- the **trace id** is ``trace_id_for(run_id)``;
- the **run span** (the supervisor's, from start to end) has ``span_id_for(run_id, "run")``;
- each **cycle span** (the writer's: from the cycle's first acquired frame to its last
  written one) has ``span_id_for(run_id, "cycle", N)``, a child of the run span;
- a sampled **frame span** (tile, cycle, at the writer) is a child of its cycle's span, with
  one child per stage built from the trace stamps the frame header already carries
  (``trace_ns``: when it left each stage), so tracing adds nothing to the stages' hot loop
  but the last stage's bookkeeping. ``tracing.frame_sample`` of the frames are kept, and
  every frame with a checksum failure, an incomplete cycle or an over-budget stage;
- an **offload job** (the orchestrator's, when its outcome is collected) is a child of the
  run span of the run it reads (``params["run"]``), with its queue wait and one span per
  attempt. An attempt's span id is ``attempt_span_id(run_id, job_id, attempt)``, so the
  ledger writes it, with the trace id, on the attempt's history entries (lease, start, end)
  before the span exists: ``appliance jobs show`` leads from a history line to its span;
- a **storage move** (a run's files copied to a tier, or a class bagged to cold) and a
  **storage verification** (``appliance storage verify``, a scrub's re-reads of a run) are
  children of the run span too (:meth:`RunTracer.storage`), current while they work, so the
  log lines they write carry their span id.

A log record written inside an active span carries that span's ``trace_id`` and ``span_id``
(:func:`current_span_ids`, read by appliance.logjson); outside one, the run's ``trace_id``.

Spans go through the SDK's ``BatchSpanProcessor`` (a background thread, off the hot path) to
OTLP/HTTP when ``tracing.otlp_endpoint`` is set, or else to JSON lines, one file per process,
in ``<state dir>/traces/`` (the SDK's ``ConsoleSpanExporter`` with a one-line formatter).
:func:`read_spans` reads them back, and the incident bundle takes the folder.
"""

from __future__ import annotations

import functools
import hashlib
import json
import contextlib
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from rt import FrameFlags

__all__ = ["RunTracer", "attempt_ids", "attempt_span_id", "current_span_ids", "make_tracer", "read_spans", "span_id_for",
           "storage_span", "trace_hex", "trace_id_for"]

TRACES_DIR = "traces"  #: in a run's state folder: one JSON-lines file per process
_INCOMPLETE = int(FrameFlags.INCOMPLETE)


def trace_id_for(run_id: str) -> int:
    """The run's 128-bit trace id (never 0), the same in every process."""
    return int.from_bytes(hashlib.sha256(f"trace:{run_id}".encode()).digest()[:16], "big") or 1


@functools.lru_cache(maxsize=64)
def trace_hex(run_id: str) -> str:
    """The run's trace id as 32 hex digits (W3C traceparent form, what Jaeger and Tempo
    search by): the ``trace_id`` of the JSON logs, ``TRACE_ID=`` in the journal, and the
    ``trace_id`` of ``appliance jobs show`` for a job of the run."""
    return f"{trace_id_for(run_id):032x}"


def span_id_for(run_id: str, *parts: object) -> int:
    """A deterministic 64-bit span id (never 0) for the run's span named by ``parts``."""
    key = ":".join(str(p) for p in (run_id, *parts))
    return int.from_bytes(hashlib.sha256(f"span:{key}".encode()).digest()[:8], "big") or 1


def attempt_span_id(run_id: str, job_id: int, attempt: int) -> int:
    """The span id of attempt ``attempt`` of offload job ``job_id`` of run ``run_id``."""
    return span_id_for(run_id, "job", int(job_id), "attempt", int(attempt))


def attempt_ids(run_id: str | None, job_id: int, attempt: int) -> tuple[str | None, str | None]:
    """(trace id, span id) in hex of a job's attempt, as the ledger's history records them;
    (None, None) for a job that reads no run (it has no trace) or before its first attempt."""
    if not run_id or attempt < 1:
        return None, None
    return trace_hex(str(run_id)), f"{attempt_span_id(str(run_id), job_id, attempt):016x}"


def current_span_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the OpenTelemetry span active in this thread, or None.
    Cheap when nothing traces: without ``opentelemetry.trace`` imported no span can be active."""
    otel = sys.modules.get("opentelemetry.trace")
    if otel is None:
        return None
    ctx = otel.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


class _Ids:
    """An SDK ``IdGenerator``: random ids, except where a span must have its deterministic one
    (:meth:`fixed`, per thread)."""

    def __init__(self) -> None:
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

        self._random = RandomIdGenerator()
        self._local = threading.local()

    def fixed(self, trace_id: int | None, span_id: int):
        ids = self

        class _Fixed:
            def __enter__(self):
                ids._local.ids = (trace_id, span_id)

            def __exit__(self, *exc):
                ids._local.ids = None

        return _Fixed()

    def generate_span_id(self) -> int:
        ids = getattr(self._local, "ids", None)
        return ids[1] if ids else self._random.generate_span_id()

    def is_trace_id_random(self) -> bool:
        return False  # a run's trace id is derived from its id (W3C "random" flag off)

    def generate_trace_id(self) -> int:
        ids = getattr(self._local, "ids", None)
        return ids[0] if ids and ids[0] else self._random.generate_trace_id()


def _ns_wall(mono_ns: int, offset_ns: int) -> int:
    return int(mono_ns) + offset_ns


class RunTracer:
    """One process's tracer for one run (or the orchestrator's, ``run_id=None``). Build it with
    :func:`make_tracer`; ``close()`` flushes and shuts the exporter down."""

    def __init__(self, provider, ids: _Ids, run_id: str | None, *, frame_sample: float, tiles: int = 1,
                 out_file=None, seed: int | None = None) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("appliance")
        self.ids = ids
        self.run_id = run_id
        self.frame_sample = float(frame_sample)
        self.tiles = max(1, int(tiles))
        self._out = out_file
        self._rng = random.Random(seed)
        self._offset = time.time_ns() - time.monotonic_ns()  # CLOCK_MONOTONIC is system-wide
        #: cycle -> [first acquisition (wall ns), calls frames seen]: only cycles in flight
        self._cycles: dict[int, list[int]] = {}
        self._run_span = None

    # -- contexts ---------------------------------------------------------------------------
    def _parent(self, run_id: str, span_id: int):
        from opentelemetry import trace
        from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

        ctx = SpanContext(trace_id_for(run_id), span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
        return trace.set_span_in_context(NonRecordingSpan(ctx))

    # -- the run (supervisor) ---------------------------------------------------------------
    def start_run(self, attributes: dict | None = None) -> None:
        """The run span, with its deterministic ids (ended by :meth:`end_run`)."""
        with self.ids.fixed(trace_id_for(self.run_id), span_id_for(self.run_id, "run")):
            self._run_span = self.tracer.start_span(f"run {self.run_id}", attributes={"run.id": self.run_id, **(attributes or {})})

    def end_run(self, attributes: dict | None = None) -> None:
        if self._run_span is not None:
            for k, v in (attributes or {}).items():
                if v is not None:
                    self._run_span.set_attribute(k, v)
            self._run_span.end()
            self._run_span = None

    # -- frames and cycles (the last stage) ---------------------------------------------------
    def frame(self, header, now_ns: int, *, kind_calls: bool, stage_names: tuple[str, ...], over_budget: bool = False,
              failed: bool = False) -> None:
        """Account one frame at the last stage: a sampled (or notable) frame becomes a span with
        one child per stage; the last calls frame of a cycle ends the cycle's span."""
        t_acq = int(header["t_mono_ns"])
        tile, cycle = int(header["tile"]), int(header["cycle"])
        incomplete = bool(int(header["flags"]) & _INCOMPLETE)
        if t_acq and kind_calls and cycle > 0:
            c = self._cycles.setdefault(cycle, [t_acq, 0])
            c[0] = min(c[0], t_acq)
            c[1] += 1
        if t_acq and (failed or incomplete or over_budget or self._rng.random() < self.frame_sample):
            self._frame_span(header, t_acq, now_ns, tile, cycle, stage_names, failed=failed, incomplete=incomplete,
                             over_budget=over_budget)
        if kind_calls and cycle in self._cycles and self._cycles[cycle][1] >= self.tiles:
            self.end_cycle(cycle, now_ns)

    def _frame_span(self, header, t_acq, now_ns, tile, cycle, stage_names, **flags) -> None:
        # positions and filters (cycle 0) belong to the run, the rest to their cycle
        parent = self._parent(self.run_id, span_id_for(self.run_id, "cycle", cycle) if cycle > 0 else span_id_for(self.run_id, "run"))
        attrs = {"tile": tile, "cycle": cycle, "channel": int(header["channel"]), "frame.kind": int(header["kind"]),
                 **{f"frame.{k}": v for k, v in flags.items() if v}}
        span = self.tracer.start_span(f"frame {tile} c{cycle}", context=parent, start_time=_ns_wall(t_acq, self._offset), attributes=attrs)
        from opentelemetry import trace

        ctx = trace.set_span_in_context(span)
        stamps = [int(x) for x in header["trace_ns"]]
        prev = t_acq
        last = len(stage_names) - 1
        for i, name in enumerate(stage_names):
            # stamps[i]: when the frame left stage i; the last stage is this one (now)
            end = now_ns if i == last else (stamps[i] if i < len(stamps) else 0)
            if not end:
                continue  # the frame did not pass this stage (it began after it)
            s = self.tracer.start_span(name, context=ctx, start_time=_ns_wall(prev, self._offset), attributes={"stage": name})
            s.end(end_time=_ns_wall(max(end, prev), self._offset))
            prev = max(end, prev)
        span.end(end_time=_ns_wall(now_ns, self._offset))

    def end_cycle(self, cycle: int, now_ns: int) -> None:
        """The cycle's span (deterministic id), from its first acquired frame to now."""
        first, n = self._cycles.pop(cycle)
        parent = self._parent(self.run_id, span_id_for(self.run_id, "run"))
        with self.ids.fixed(None, span_id_for(self.run_id, "cycle", cycle)):
            span = self.tracer.start_span(f"cycle {cycle}", context=parent, start_time=_ns_wall(first, self._offset),
                                          attributes={"cycle": cycle, "tiles": n})
        span.end(end_time=_ns_wall(now_ns, self._offset))

    # -- offload jobs (the orchestrator) -------------------------------------------------------
    def job(self, job, events: list[dict] | None = None) -> None:
        """An ended offload job (a ledger ``Job``): a span under its run's span, with its queue
        wait and one span per attempt as children. ``events`` (the job's ledger history) give
        each attempt its times (from its history entries, which carry the attempt's span id);
        without them, only the last attempt, from ``started_at`` to ``finished_at``."""
        run = (job.params or {}).get("run")
        if not run or not job.finished_at:
            return
        run = str(run)
        ns = lambda t: int(float(t) * 1e9)  # noqa: E731 - ledger times are wall-clock seconds
        parent = self._parent(run, span_id_for(run, "run"))
        attrs = {"job.id": job.id, "job.kind": job.kind, "job.class": job.priority, "job.state": job.state,
                 "job.attempts": job.attempts, "run.id": run, "instrument": job.instrument_id or ""}
        if "cycle" in job.params:
            attrs["cycle"] = int(job.params["cycle"])
        with self.ids.fixed(None, span_id_for(run, "job", job.id)):
            span = self.tracer.start_span(f"job {job.kind}", context=parent, start_time=ns(job.created_at), attributes=attrs)
        from opentelemetry import trace

        ctx = trace.set_span_in_context(span)
        attempts = []  # (attempt, start, end, error)
        for n in range(1, job.attempts + 1):
            sid = f"{attempt_span_id(run, job.id, n):016x}"
            mine = [e for e in events or () if e.get("span_id") == sid]
            if mine:
                began = next((e["at"] for e in mine if e["to_state"] == "running"), mine[0]["at"])
                last = mine[-1]
                attempts.append((n, began, last["at"], last["reason"] if last["to_state"] in ("retrying", "held") else ""))
            elif n == job.attempts:  # a history from before schema 4, or none given
                attempts.append((n, job.started_at or job.finished_at, job.finished_at, job.error or ""))
        started = attempts[0][1] if attempts else (job.started_at or job.finished_at)
        self.tracer.start_span("queue wait", context=ctx, start_time=ns(job.created_at)).end(end_time=ns(started))
        for n, began, ended, error in attempts:
            with self.ids.fixed(None, attempt_span_id(run, job.id, n)):
                a = self.tracer.start_span(f"attempt {n}", context=ctx, start_time=ns(began),
                                           attributes={"attempt": n, "error": error})
            a.end(end_time=ns(max(ended, began)))
        span.end(end_time=ns(job.finished_at))

    # -- storage moves and verifications (the storage manager) ---------------------------------
    @contextlib.contextmanager
    def storage(self, name: str, run: str, attributes: dict):
        """A storage move or verification of ``run``: a span under the run's span, current while
        the body runs (its log lines carry its ids). The body sets ``storage.outcome`` and the
        figures on the span it is given; an exception ends it as ``error: ...``."""
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode

        span = self.tracer.start_span(name, context=self._parent(run, span_id_for(run, "run")),
                                      attributes={"run.id": run, **attributes})
        try:
            with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                yield span
        except BaseException as exc:
            span.set_attribute("storage.outcome", f"error: {type(exc).__name__}: {exc}")
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            raise
        finally:
            span.end()

    def close(self) -> None:
        self.end_run()
        try:
            self.provider.shutdown()  # flushes the batch processor
        finally:
            if self._out is not None:
                self._out.close()
                self._out = None


class _NoSpan:
    """What :func:`storage_span` gives when tracing is off: takes attributes, keeps nothing."""

    def set_attribute(self, key: str, value: object) -> None:
        pass

    def set_attributes(self, attributes: dict) -> None:
        pass


def storage_span(tracer: RunTracer | None, name: str, run: str, attributes: dict):
    """:meth:`RunTracer.storage`, or (no tracer: tracing off) a span that keeps nothing."""
    if tracer is None:
        return contextlib.nullcontext(_NoSpan())
    return tracer.storage(name, run, attributes)


def make_tracer(tracing, folder: Path | str, process: str, run_id: str | None, *, tiles: int = 1,
                exporter=None) -> RunTracer | None:
    """A tracer for ``process`` (``tracing`` is the config's ``[tracing]``; None when it is
    off): spans to ``tracing.otlp_endpoint``, or to ``folder/traces/<process>.jsonl``.
    ``exporter`` (an SDK ``SpanExporter``, such as the tests' ``InMemorySpanExporter``)
    replaces both and gets each span as it ends."""
    if tracing is None or not tracing.enabled:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    ids = _Ids()
    provider = TracerProvider(resource=Resource.create({"service.name": "appliance", "service.instance.id": process}),
                              id_generator=ids)
    out = None
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        return RunTracer(provider, ids, run_id, frame_sample=tracing.frame_sample, tiles=tiles,
                         seed=int.from_bytes(os.urandom(4), "big"))
    if tracing.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=tracing.otlp_endpoint)
    else:
        d = Path(folder) / TRACES_DIR
        d.mkdir(parents=True, exist_ok=True)
        out = open(d / f"{process}.jsonl", "a")  # noqa: SIM115 - closed by RunTracer.close
        exporter = ConsoleSpanExporter(out=out, formatter=lambda s: s.to_json(indent=None) + "\n")
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return RunTracer(provider, ids, run_id, frame_sample=tracing.frame_sample, tiles=tiles, out_file=out,
                     seed=int.from_bytes(os.urandom(4), "big"))


def read_spans(folder: Path | str) -> Iterator[dict[str, Any]]:
    """The spans written to ``folder/traces/*.jsonl`` (or ``folder`` itself), as the SDK's JSON."""
    d = Path(folder)
    d = d / TRACES_DIR if (d / TRACES_DIR).is_dir() else d
    for path in sorted(d.glob("*.jsonl")):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        yield json.loads(line)
                    except ValueError:
                        continue  # a line cut by a crash
