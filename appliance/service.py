"""``appliance serve``: a long-running appliance that starts runs on command.

One control server lives as long as the service; each ``start`` runs a
:class:`~appliance.pipeline.Supervisor` in a thread with the service's configuration plus the
command's overrides, and the run's commands (status, stop, pause, resume, events, set) are
forwarded to it. One run at a time: the instrument has one camera.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path

from typing import TYPE_CHECKING

from appliance.config import ConfigError, RunConfig, load_config

if TYPE_CHECKING:
    from appliance.pipeline import Invocation

__all__ = ["Service"]

log = logging.getLogger("appliance.service")


class Service:
    """Holds the control server; ``start_run`` / ``wait`` / ``shutdown``. A context manager."""

    def __init__(self, config_path: Path | None = None, overrides: tuple[str, ...] = (), *, auto_resume: bool = True) -> None:
        self.config_path = config_path
        self.overrides = tuple(overrides)
        #: on start, resume the run that a total loss (power cut, OOM kill) interrupted
        self.auto_resume = auto_resume
        self.resumed: str | None = None  #: the run id resumed on start, if any
        self.base: RunConfig = load_config(config_path, overrides)
        self.supervisor = None
        self.thread: threading.Thread | None = None
        self.last_summary: dict | None = None
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._server = None
        self._log_handler = None
        self.orchestrator = None  #: the offload orchestrator ([offload] enabled)
        self.storage = None  #: the storage manager and its tierer ([storage] enabled)
        self._publisher: threading.Thread | None = None
        self._exporter = None
        self._stopping = threading.Event()

    # -- commands --------------------------------------------------------------------------
    def _commands(self) -> dict:
        from appliance.control import Arg, Command, CommandError

        forwarded = {}
        for name in ("status", "stop", "pause", "resume", "events", "set"):
            forwarded[name] = Command(self._forward(name), *_help_and_args(name))

        def start(args):
            overrides = args.get("set", [])
            for i, item in enumerate(overrides):
                key, eq, _ = item.partition("=") if isinstance(item, str) else ("", "", "")
                if not (eq and key.strip()):
                    raise CommandError("bad_args", f"argument 'set' item {i} is {item!r:.60}, not a 'section.key=value' string: e.g. set=[\"run.cycles=30\"]")
            return self.start_run(list(overrides), args.get("run_id"))

        forwarded["start"] = Command(start, "start a run: set = ['section.key=value', ...] overrides, run_id (optional)",
                                     (Arg("set", "list", help="'section.key=value' overrides of this run"), Arg("run_id", "str", help="the run folder's name")),
                                     {"busy": "a run is going: stop it first (one camera, one run)",
                                      "bad_config": "the overrides make an invalid config (the message names the key)",
                                      "tuning_drift": "supervisor.strict and the host's tuning drifted from the sysconfig profile"})
        from appliance.analysis.control import control_commands as algo_commands

        forwarded.update(algo_commands(Path(self.base.output.root), self.base.offload.ledger or None))
        if self.orchestrator is not None:
            from appliance.offload import control_commands as jobs_commands

            forwarded.update(jobs_commands(self.orchestrator))
        if self.storage is not None:
            from appliance.storage import control_commands as storage_commands

            forwarded.update(storage_commands(self.storage))
        return forwarded

    def _forward(self, name: str):
        from appliance.control import CommandError

        def handler(args):
            sup = self.supervisor
            running = sup is not None and self.thread is not None and self.thread.is_alive()
            if not running:
                if name == "status":
                    return {"state": "idle", "run_id": sup.run_id if sup else None, "last_summary": _brief(self.last_summary), "last_error": self.last_error}
                if name == "events" and sup is not None:
                    return sup.control_commands()["events"].handler(args)  # the last run's
                raise CommandError("not_running", "no run is going: start one with `appliance ctl start`")
            return sup.control_commands()[name].handler(args)

        return handler

    def start_run(self, overrides: list[str], run_id: str | None = None, *, resume: Invocation | None = None) -> dict:
        """Start a run with the service's config plus ``overrides``; with ``resume`` (the
        interrupted run ``run_id``'s recorded invocation), go on with that run instead."""
        from appliance.control import CommandError
        from appliance.pipeline import Supervisor, record_invocation

        with self._lock:
            if self.thread is not None and self.thread.is_alive():
                raise CommandError("busy", f"run {self.supervisor.run_id} is going: stop it first (one camera, one run)")
            config_path, every = (resume.config, list(resume.overrides)) if resume else (self.config_path, [*self.overrides, *overrides])
            try:
                cfg = load_config(config_path, every)
            except ConfigError as exc:
                raise CommandError("bad_config", str(exc)) from None
            warnings = self._check_tuning(cfg)
            # the service owns the control sockets; the run publishes through them
            # (and its metrics exporter, when one is configured)
            cfg = dataclasses.replace(cfg, control=dataclasses.replace(cfg.control, enabled=False),
                                      metrics=dataclasses.replace(cfg.metrics, port=0))
            sup = Supervisor(cfg, run_id=run_id, resume=resume is not None)
            if resume is None:
                record_invocation(sup.state_dir, config_path, every)  # what a resume after a crash runs again
            sup.publish = self._server.publish if self._server is not None else None
            self.supervisor = sup
            self.last_error = None
            from appliance.logjson import set_log_fields

            set_log_fields(run_id=sup.run_id)  # RUN_ID= in the journal; its stages inherit it
            self.thread = threading.Thread(target=self._run, args=(sup,), name=f"run-{sup.run_id}", daemon=True)
            self.thread.start()
            started = {"started": True, "run_id": sup.run_id, "output": str(sup.run_dir)}
            return {**started, "tuning_warnings": warnings} if warnings else started

    @staticmethod
    def _check_tuning(cfg) -> list[str]:
        """``supervisor.sysconfig_profile``: check the host before each run, as ``appliance
        run`` does; with ``supervisor.strict`` a drifted host refuses the run (``tuning_drift``)."""
        from appliance.control import CommandError

        profile = cfg.supervisor.sysconfig_profile
        if not profile:
            return []
        from appliance.tuning import ProfileError, startup_check
        from appliance.tuning.startup import TuningDriftError

        try:
            problems = startup_check(profile, strict=cfg.supervisor.strict)
        except (TuningDriftError, ProfileError) as exc:
            raise CommandError("tuning_drift" if isinstance(exc, TuningDriftError) else "bad_config", str(exc)) from None
        return [str(p) for p in problems]  # startup_check logged each

    def _run(self, sup) -> None:
        from appliance.pipeline import SupervisorError

        try:
            self.last_summary = sup.run()
        except SupervisorError as exc:
            self.last_error = str(exc)
            log.error("run %s failed: %s", sup.run_id, exc)
        except Exception as exc:  # a bug: keep serving, report it
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("run %s crashed", sup.run_id)
        finally:
            from appliance.logjson import set_log_fields

            set_log_fields(run_id=None)
            if self.storage is not None:
                self.storage.wake()  # catalogue the run now, not at the next interval

    def status_sample(self) -> dict:
        """The current run's latest stats sample (appliance.progress reads it for the status
        line), or ``{"state": "idle", "run_id": <the last run>}`` between runs."""
        sup, thread = self.supervisor, self.thread
        if sup is not None and thread is not None and thread.is_alive():
            return sup.latest_stats or {"state": "starting", "run_id": sup.run_id}
        return {"state": "idle", "run_id": sup.run_id if sup is not None else None}

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> "Service":
        """Open the offload ledger and the storage catalog (when enabled), serve the control
        plane, then start the orchestrator, the tierer and the 1 Hz ``jobs``/``storage``
        publisher. On failure, whatever was started is stopped again."""
        from appliance.pipeline.supervisor import attach_log_publisher, start_control_server

        root = Path(self.base.output.root)
        try:
            if self.base.offload.enabled:
                from appliance.offload import Orchestrator

                # jobs submitted here without a run (an operator's jobs.submit) carry this instrument too
                self.orchestrator = Orchestrator(self.base.offload, root, on_event=self._offload_event, tracing=self.base.tracing,
                                                 instrument_id=self.base.run.instrument_id)
            if self.base.storage.enabled:
                from appliance.storage import StorageManager

                self.storage = StorageManager.from_config(self.base, on_alert=self._storage_alert)
            self._server = start_control_server(self.base.control, self._commands())
            self._log_handler = attach_log_publisher(self._server)
            if self.base.metrics.port:
                self._start_metrics()
            if self.orchestrator is not None:
                self.orchestrator.start()
            if self.storage is not None:
                self.storage.start()
            self._stopping.clear()
            self._publisher = threading.Thread(target=self._publish_loop, name="service-publisher", daemon=True)
            self._publisher.start()
        except BaseException:
            self._close_parts()
            raise
        if self.auto_resume:
            self._resume_interrupted()
        return self

    def _resume_interrupted(self) -> None:
        """A run interrupted by a total loss (its supervisor died with it) goes on as soon as
        the service is back, with its own recorded config: the most recent one (one camera);
        any others are named with the command that resumes them. A resume that cannot start
        (no record, another config) is logged and leaves the service idle, never down."""
        from appliance.control import CommandError
        from appliance.pipeline import mark_interrupted_runs, read_invocation

        cfg = self.base
        root = Path(cfg.output.root).resolve()
        state_root = Path(cfg.output.state_root).resolve() if cfg.output.state_root else root / ".state"
        runs = mark_interrupted_runs(state_root)
        if not runs:
            return
        run_id, others = runs[0], runs[1:]
        for other in others:
            log.warning("run %s was interrupted too: resume it with `appliance run --resume %s` once this one is done", other, root / other)
        record = read_invocation(state_root / run_id)
        if record is None:
            self.last_error = (f"run {run_id} was interrupted but has no {state_root / run_id / 'invocation.json'}: "
                               f"resume it with `appliance run --resume {root / run_id} --config ... --set ...` as it was started")
            log.error("%s", self.last_error)
            return
        log.warning("run %s was interrupted (its supervisor died with it): resuming it", run_id)
        try:
            self.start_run([], run_id, resume=record)
        except CommandError as exc:
            self.last_error = f"run {run_id} was interrupted and cannot be resumed here: {exc}"
            log.error("%s", self.last_error)
            return
        self.resumed = run_id

    def _start_metrics(self) -> None:
        """One Prometheus exporter for the service's life: the current run's stats (none while
        idle), the offload jobs and the storage tiers. Runs started here export through it."""
        from appliance.metrics import JobsCollector, MetricsExporter, StorageCollector

        def snapshot():
            sup = self.supervisor
            running = sup is not None and self.thread is not None and self.thread.is_alive()
            return (sup.latest_stats, list(sup.events)) if running else ({}, [])

        m = self.base.metrics
        self._exporter = MetricsExporter(snapshot, m.port, m.address, instrument=self.base.run.instrument_id)
        if self.orchestrator is not None:
            self._exporter.registry.register(JobsCollector(self.orchestrator.stats))
        if self.storage is not None:
            self._exporter.registry.register(StorageCollector(self.storage.stats))
        self._exporter.start()
        log.info("metrics on http://%s:%d/metrics", m.address, self._exporter.port)

    # -- offload and storage on the control plane -------------------------------------------
    def _publish(self, topic: str, body: dict) -> None:
        server = self._server
        if server is not None:
            server.publish(topic, body)

    def _offload_event(self, event: dict) -> None:
        event = dict(event)
        topic = event.pop("topic", "event")
        self._publish("alert" if topic == "alert" else "event", {"t": time.time(), "kind": "alert" if topic == "alert" else "event",
                                                                 "message": event.get("message", ""), **event})

    def _storage_alert(self, kind: str, message: str, **fields) -> None:
        self._publish("alert", {"t": time.time(), "kind": "alert", "rule": kind, "message": message, **fields})

    def _publish_loop(self, period_s: float = 1.0) -> None:
        """Publish the orchestrator's and the storage manager's stats once a second (the TUI's
        jobs and storage panes, and any other subscriber)."""
        while not self._stopping.wait(period_s):
            for topic, part in (("jobs", self.orchestrator), ("storage", self.storage)):
                if part is None:
                    continue
                try:
                    self._publish(topic, part.stats())
                except Exception:  # a busy ledger or catalog: try again next second
                    log.debug("%s stats unavailable", topic, exc_info=True)

    def _close_parts(self) -> None:
        self._stopping.set()
        if self._exporter is not None:
            self._exporter.stop()
            self._exporter = None
        if self._publisher is not None:
            self._publisher.join(5.0)
            self._publisher = None
        if self.orchestrator is not None:
            self.orchestrator.stop(timeout=30.0)
            self.orchestrator = None
        if self.storage is not None:
            self.storage.close()
            self.storage = None
        if self._server is not None:
            logging.getLogger("appliance").removeHandler(self._log_handler)
            self._server.stop()
            self._server = None

    def wait(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def shutdown(self, timeout: float = 300.0) -> None:
        """Drain the current run (if any) and wait for it; stop the orchestrator (running jobs
        get 30 s to finish, the rest go back to the queue) and the tierer; close the sockets."""
        if self.supervisor is not None and self.thread is not None and self.thread.is_alive():
            self.supervisor.request_stop()
            self.thread.join(timeout)
        self._close_parts()

    def __enter__(self) -> "Service":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()


def _help_and_args(name: str):
    from appliance.control import Arg

    idle = {"not_running": "no run is going (start one with `appliance ctl start`)"}
    return {
        "status": ("the current run's stats and state, or idle and the last run's summary",),
        "stop": ("drain the current run", (), idle),
        "pause": ("pause acquisition of the current run", (), {**idle, "not_running": "no run is going, or it is not acquiring"}),
        "resume": ("resume acquisition of the current run", (), {**idle, "not_running": "no run is going, or it is not paused"}),
        # the same arguments and error codes as the Supervisor's commands (they are forwarded to it)
        "events": ("the current (or last) run's recent events and alerts", (Arg("last", "int", help="how many (default 50; 0: none)", min=0),)),
        "set": ("change a live parameter of the current run",
                (Arg("key", "str", True, "the live parameter"), Arg("value", "float", True, "its new value, a number")),
                {**idle, "not_live": "the key cannot change during a run", "bad_value": "the value is outside the key's range"}),
    }[name]


def _brief(summary: dict | None) -> dict | None:
    if not summary:
        return None
    keep = ("run_id", "output", "frames_acquired", "frames_dropped", "run_complete", "checksum_failures")
    brief = {k: summary.get(k) for k in keep}
    acc = summary.get("accuracy")
    if acc:
        brief["error_rate"] = acc.get("error_rate")
    return brief
