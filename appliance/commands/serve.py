"""``appliance serve``: stay up and start runs on command over the control plane."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

HELP = "run as a service: the control plane stays up and starts runs on command (ctl start)"
DESCRIPTION = """\
Start the control plane and wait for commands instead of running once: `appliance ctl start`
starts a run (with the service's configuration plus the command's overrides), and status,
stop, pause, resume, events and set act on the current run. One run at a time. SIGTERM or
Ctrl-C drains the current run, then exits 0.

The service also runs the offload orchestrator ([offload] enabled, the default: cycle-qc as
cycles complete, fastq and align-qc when a run completes, shadow runs of a candidate algorithm)
and, with [storage] enabled, the storage tierer. Their commands are served too (jobs.ls,
jobs.show, jobs.submit, jobs.retry, jobs.requeue, jobs.cancel, jobs.stats; algo.ls,
algo.candidate, algo.promote, algo.rollback; storage.ls, storage.status, storage.verify,
storage.restore, storage.gc, storage.scrub), their stats are published once a second on the
`jobs` and `storage` topics (the TUI's j and t panes), and with metrics.port one Prometheus
exporter serves the run's, the jobs' and the storage's metrics for the service's life.

examples:
  appliance serve
  appliance ctl start 'set=["run.cycles=30"]' run_id=TEST1     # from a second terminal
  appliance ctl status
  appliance ctl jobs.ls run=TEST1                             # the run's offload jobs
  appliance serve --set storage.enabled=true --set storage.warm=/mnt/warm
  appliance serve --config site.toml --headless               # under systemd
  appliance serve --output /data/runs                         # same as --set output.root=/data/runs

After a total loss (a power cut, an OOM kill of the service with its stages) the service
resumes the interrupted run when it starts again, with that run's own config: every stage
restores the last cycle the writer committed and acquisition goes on after it, as
`appliance run --resume` does (docs/architecture.md). --no-resume leaves it for an operator.

With --headless under systemd, STATUS= says what the service does every 5 s (idle, or the
run's phase, run id, cycle, frames/s, drops and ETA) and log records reach the journal with
their fields (journalctl RUN_ID=...); docs/headless.md.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="run config (TOML) for every run; ctl start adds overrides")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override one key for every run (repeatable)")
    from appliance.commands.run import add_output_option

    add_output_option(parser)
    parser.add_argument("--no-resume", dest="auto_resume", action="store_false",
                        help="do not resume a run interrupted by a total loss when the service starts (resume it with appliance run --resume)")
    parser.add_argument("--headless", action="store_true", help="under systemd: READY/WATCHDOG/STOPPING, STATUS= every 5 s, records to the journal with RUN_ID=/STAGE=/ALERT= (JSON lines where there is no journal)")


def run(args: argparse.Namespace) -> int:
    from appliance.config import ConfigError
    from appliance.pipeline import SupervisorError
    from appliance.service import Service

    notifier = None
    if args.headless:
        from appliance.logjson import configure_logging
        from appliance.systemd import Notifier, NotifyConfigError

        from appliance.commands.run import headless_log_file

        configure_logging(json=True, log_file=headless_log_file())
        try:
            notifier = Notifier.from_environment(unset=True)
        except NotifyConfigError as exc:  # a malformed NOTIFY_SOCKET / WATCHDOG_USEC: as `run --headless`
            print(f"error: {exc}", file=sys.stderr)
            return 2
    from appliance.commands.run import overrides_of

    args.overrides = overrides_of(args)
    stop = threading.Event()
    old = {s: signal.signal(s, lambda signum, frame: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            service = Service(args.config, args.overrides, auto_resume=args.auto_resume).start()
        except (ConfigError, SupervisorError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2 if isinstance(exc, ConfigError) else 1
        print("appliance serving; start a run with `appliance ctl start`", flush=True)
        reporter = None
        if notifier is not None:
            notifier.ready(status="idle: waiting for `ctl start`")
            if notifier.enabled:
                from appliance.progress import StatusReporter

                reporter = StatusReporter(service.status_sample, notifier.status, period=5.0).start()
        try:
            while not stop.wait(0.5):
                if notifier is not None:
                    notifier.watchdog_if_due()
        finally:
            if reporter is not None:
                reporter.stop()
        if notifier is not None:
            notifier.stopping(status="draining" if service.status_sample().get("state") != "idle" else "stopping")
        service.shutdown()
        if service.last_summary:
            from appliance.pipeline import format_summary

            print(format_summary(service.last_summary))
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)
