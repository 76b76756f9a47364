"""The ``jobs.*`` control-plane commands, over an :class:`Orchestrator` or a bare :class:`Ledger`.

``appliance jobs`` (the CLI) calls the same handlers on the ledger file, so both give the same
replies (documented in docs/offload.md).
"""

from __future__ import annotations

import time
from pathlib import Path

from appliance.offload.config import CLASSES
from appliance.offload.errors import AdmissionRefused, LedgerError, OffloadError
from appliance.offload.ledger import STATES, Job, Ledger, run_inputs

__all__ = ["control_commands", "job_summary"]


def job_summary(job: Job, now: float | None = None) -> dict:
    """The one-line view of a job (``jobs.ls`` rows)."""
    now = time.time() if now is None else now
    return {
        "id": job.id, "kind": job.kind, "class": job.priority, "state": job.state,
        "attempts": job.attempts, "max_attempts": job.max_attempts,
        "age_s": round(now - job.created_at, 3), "error": job.error, "depends_on": job.depends_on,
        "algorithm": f"{job.algorithm}@{job.algorithm_version}" if job.algorithm else None,
        "run": job.params.get("run"), "output_dir": job.output_dir, "instrument": job.instrument_id,
    }


def control_commands(target, data_root=None) -> dict:
    """name -> Command for ``jobs.ls|show|submit|retry|requeue|cancel|stats`` on ``target``
    (an Orchestrator or a Ledger). With a data root (the orchestrator's, or ``data_root``) a
    submitted job of a run gets the run's manifest checksums in its idempotency key, the same
    key the orchestrator's own trigger gives it, so an operator's submission of a job the
    orchestrator already ran returns that job."""
    from appliance.control import Arg, Command, CommandError

    ledger: Ledger = getattr(target, "ledger", target)
    orch = target if hasattr(target, "ledger") else None
    root = Path(data_root) if data_root is not None else (orch.data_root if orch is not None else None)

    def _inputs(params: dict) -> dict[str, str] | None:
        run, cycle = params.get("run"), params.get("cycle")
        if root is None or not isinstance(run, str) or not (root / run / "RunInfo.xml").is_file():
            return None
        try:
            return run_inputs(root / run, int(cycle) if isinstance(cycle, int) else None)
        except OffloadError as exc:
            raise CommandError("not_complete", str(exc)) from None

    def _job(args) -> Job:
        job = ledger.get(int(args["id"]))
        if job is None:
            raise CommandError("no_such_job", f"no job {args['id']} in {ledger.path} (jobs.ls lists them)")
        return job

    def _act(fn):
        def handler(args):
            _job(args)
            try:
                return {"job": job_summary(fn(args))}
            except LedgerError as exc:
                raise CommandError("bad_state", str(exc)) from None
        return handler

    def ls(args):
        jobs = ledger.jobs(state=args.get("state"), kind=args.get("kind"), priority=args.get("class"), run=args.get("run"),
                           limit=args.get("limit", 50))
        now = time.time()
        return {"jobs": [job_summary(j, now) for j in jobs]}

    def show(args):
        job = _job(args)
        d = job.to_dict()
        run = (job.params or {}).get("run")
        if run:  # the job is a span of its run's trace (appliance.tracing)
            from appliance.tracing import trace_hex

            d["trace_id"] = trace_hex(str(run))
        return {"job": d, "events": ledger.events(job.id)}

    def submit(args):
        from appliance.offload.kinds import default_registry

        kind = args["kind"]
        registry = orch.registry if orch is not None else default_registry()
        try:
            k = registry.get(kind, ledger.config)
        except KeyError as exc:
            raise CommandError("unknown_kind", exc.args[0]) from None
        params = args.get("params") or {}
        try:
            sub = ledger.submit(kind, params, priority=args.get("class", k.priority), inputs=_inputs(params),
                                max_attempts=k.max_attempts, depends_on=args.get("depends_on"),
                                algorithm=args.get("algorithm"), algorithm_version=args.get("version"),
                                wait_s=args.get("wait_s"), reason="submitted by an operator")
        except AdmissionRefused as exc:
            raise CommandError("admission_refused", str(exc)) from None
        except (LedgerError, ValueError) as exc:
            raise CommandError("bad_args", str(exc)) from None
        return {"job": job_summary(sub.job), "created": sub.created}

    def stats(args):
        return orch.stats() if orch is not None else ledger.stats()

    id_arg = Arg("id", "int", required=True, help="job id (jobs.ls)")
    return {
        "jobs.ls": Command(ls, "offload jobs, newest first", (
            Arg("state", "str", choices=STATES), Arg("kind", "str"), Arg("class", "str", choices=CLASSES),
            Arg("run", "str", help="only the jobs of this run"), Arg("limit", "int", help="at most this many (default 50)"))),
        "jobs.show": Command(show, "one job with its history", (id_arg,)),
        "jobs.submit": Command(submit, "submit a job (idempotent: the same job twice returns the first)", (
            Arg("kind", "str", required=True), Arg("params", "map"), Arg("class", "str", choices=CLASSES),
            Arg("depends_on", "int"), Arg("algorithm", "str"), Arg("version", "str"),
            Arg("wait_s", "float", help="past a watermark, wait this long before refusing"))),
        "jobs.retry": Command(_act(lambda a: ledger.retry(int(a["id"]), "retry requested by an operator")),
                              "run a retrying job now, or give a held job one more attempt", (id_arg,)),
        "jobs.requeue": Command(_act(lambda a: ledger.requeue(int(a["id"]), "requeued by an operator")),
                                "held or cancelled -> queued, attempts reset", (id_arg,)),
        "jobs.cancel": Command(_act(lambda a: ledger.cancel(int(a["id"]), a.get("reason") or "cancelled by an operator")),
                               "cancel a job that has not succeeded", (id_arg, Arg("reason", "str"))),
        "jobs.stats": Command(stats, "queue depth per class, running, held, recent failures, backpressure"),
    }
