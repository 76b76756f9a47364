"""``appliance run``: one instrument run through the real-time pipeline."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

HELP = "run the instrument: synthetic camera -> preprocess -> kernel -> basecall -> run folder"
DESCRIPTION = """\
Run one instrument run through the real-time pipeline and print its summary.

The embedded defaults (appliance/defaults.toml) describe a synthetic run: 2 tiles x 4
channels x 26 cycles of 512 x 512 px from the synthetic flow-cell camera at 20 frames/s
(source.rate_hz), every frame rendered before acquisition starts (source.prerender).
Stages run as separate processes wired by shared-memory rings: preprocess (checksums, raw
audit copies), kernel (registration, cluster detection, intensity extraction; CuPy when
present), basecall (crosstalk and phasing correction, quality scores, pass filter) and the
writer (an Illumina-style run folder under output.root, readable by picard and bcl2fastq-style
tools). A crashed stage is restarted from its checkpoint without losing a frame; Ctrl-C or
SIGTERM drains: acquisition stops and every frame that entered is written.

The summary gives frames, drops, throughput, latency p50/p99, restarts, checksum failures,
the data reduction, the base-call error against the synthetic ground truth, and where the
output is. Then the run is offloaded through the job ledger (<output.root>/.offload/): a
cycle-qc job per cycle, fastq and align-qc (minimap2: % aligned, error rate), and a shadow
reprocess + compare when the algorithm registry has a candidate; their figures are printed
and added to the summary (offload.run_wait_s bounds the wait; --no-offload, a stopped run and
--headless leave the jobs to appliance serve or appliance jobs work; docs/offload.md).
On a terminal, a status line at the bottom shows the phase (pre-render, acquiring, draining,
offload), the cycle, frames, frames/s, drops and the ETA while log lines scroll above it;
warnings and errors are coloured (not with NO_COLOR set). Without a terminal, or with
--headless, nothing but the log and the summary is printed.
Exit status: 0 done, 1 the run could not keep its promise, 2 bad configuration.

Resume: a run whose supervisor died with every stage (power cut, OOM kill of the cgroup,
systemctl kill) is marked interrupted (INTERRUPTED.json in its state folder) by the next
appliance run, which names it. `appliance run --resume RUN_DIR` restores every stage to the
last cycle the writer committed and acquires again from the cycle after it, with the run's
own config (the --config and --set it was started with): the synthetic camera and replays
give the same bytes as an undisturbed run. A live camera cannot give its frames again:
those lost in the crash are counted in the summary, their tile-cycles are written as
no-calls, and the exit status is 1 (docs/architecture.md, docs/pipeline.md).

examples:
  appliance run
  appliance run --set run.cycles=50 --set source.synthetic.tile_size=256
  appliance run --config myrun.toml --json summary.json
  appliance run --output /data/runs       # same as --set output.root=/data/runs
  appliance run --headless                # under systemd: notify protocol, STATUS=, journal fields
  appliance run --profile instrument --strict
  appliance run --fault writer-0:slow_ms=200   # drill: a throttled writer raises alerts
  appliance run --no-offload              # only the run; appliance jobs work offloads it later
  appliance run --resume /data/runs/261202_SIM001_0007_FC0001   # go on with an interrupted run
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="run config (TOML); keys override the embedded defaults")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override one key, e.g. run.cycles=50 (repeatable)")
    add_output_option(parser)
    parser.add_argument("--run-id", help="run folder name (default: YYMMDD_INSTRUMENT_NNNN_FLOWCELL)")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR",
                        help="go on with the interrupted run in RUN_DIR (its folder under output.root), with the config it was started with")
    parser.add_argument("--json", type=Path, help="also write the summary as JSON to this path")
    parser.add_argument("--headless", action="store_true", help="run under systemd: sd_notify READY/WATCHDOG/STOPPING, STATUS= every 5 s, records to the journal with RUN_ID=/STAGE=/ALERT= (JSON lines where there is no journal); no status line")
    parser.add_argument("--profile", metavar="NAME", help="verify the host against this sysconfig profile first (overrides supervisor.sysconfig_profile)")
    parser.add_argument("--strict", action="store_true", help="refuse to start when the host differs from the profile")
    parser.add_argument("--no-offload", action="store_true", help="do not run the offload jobs (fastq, align-qc, ...) of this run here; appliance serve or appliance jobs work picks them up")
    parser.add_argument(
        "--fault", action="append", default=[], metavar="STAGE:KEY=VALUE",
        help="fault drill: writer-0:slow_ms=50 throttles the writer (backpressure, alerts), "
        "kernel-0:kill_after=100 SIGKILLs it after 100 frames (restart from checkpoint), "
        "preprocess-0:corrupt_frame=50 flips a bit (quarantine; its tile-cycle becomes no-calls), "
        "kernel-0:hang_after=30 hangs it (restarted after the hang timeout). Repeatable; for operator training and tests",
    )


def add_output_option(parser: argparse.ArgumentParser) -> None:
    """``--output DIR``: shorthand for ``--set output.root=DIR`` (run and serve)."""
    parser.add_argument("--output", type=Path, metavar="DIR", help="the data root the run folders go to: shorthand for --set output.root=DIR (after every --set)")


def headless_log_file() -> Path | None:
    """``$LOGS_DIRECTORY/appliance.jsonl`` under a unit with ``LogsDirectory=`` (the
    supervisor's JSON-lines log for support bundles), else None."""
    from appliance.systemd import NotifyConfigError, SystemdEnvironment

    try:
        logs = SystemdEnvironment.from_environ().logs_directory
    except NotifyConfigError:
        return None  # the notifier names the bad variable
    return logs / "appliance.jsonl" if logs is not None and logs.is_dir() else None


def overrides_of(args: argparse.Namespace) -> list[str]:
    """``--set`` items, then ``--output`` as ``output.root`` (quoted: any path is a string)."""
    items = list(args.overrides)
    if getattr(args, "output", None) is not None:
        items.append(f"output.root={json.dumps(str(args.output.absolute()))}")
    return items


def run(args: argparse.Namespace) -> int:
    from appliance.config import ConfigError, load_config

    args.overrides = overrides_of(args)  # --output is one more --set from here on
    try:
        config = load_config(args.config, args.overrides)
        if getattr(args, "resume", None) is not None:
            config = _resume_config(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    profile = args.profile or config.supervisor.sysconfig_profile
    strict = args.strict or config.supervisor.strict
    if strict and not profile:
        print("error: --strict needs --profile NAME (the tuning profile to enforce)", file=sys.stderr)
        return 2
    if profile:
        from appliance.tuning import ProfileError, startup_check
        from appliance.tuning.startup import TuningDriftError

        try:
            problems = startup_check(profile, strict=strict)
        except (TuningDriftError, ProfileError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        for problem in problems:
            print(f"warning: host differs from sysconfig profile {profile!r}: {problem}", file=sys.stderr)
    return _run_pipeline(config, args)


def _resume_config(args):
    """The config of the interrupted run in ``args.resume``: the --config and --set it was
    started with (recorded in its state folder), under the folder's parent as output.root.
    --config or --set given with --resume replace the recorded ones."""
    from appliance.config import ConfigError, load_config

    run_dir = args.resume.resolve()
    if not run_dir.is_dir():
        raise ConfigError(f"--resume {args.resume}: no such run folder")
    root = [f'output.root="{run_dir.parent}"']
    config = load_config(args.config, [*args.overrides, *root])
    from appliance.pipeline import read_invocation

    state_root = Path(config.output.state_root) if config.output.state_root else run_dir.parent / ".state"
    record = read_invocation(state_root / run_dir.name)
    if not (args.config or args.overrides) and record is not None:
        config = load_config(record.config, [*record.overrides, *root])
    if args.run_id and args.run_id != run_dir.name:
        raise ConfigError(f"--resume {run_dir} resumes run {run_dir.name}; leave out --run-id {args.run_id}")
    args.run_id = run_dir.name
    return config


def parse_faults(items: list[str]) -> dict[str, dict]:
    """``["writer-0:slow_ms=50", ...]`` -> ``{"writer-0": {"slow_ms": 50}}``; ValueError names the bad item."""
    from appliance.pipeline.faults import FAULTS

    faults: dict[str, dict] = {}
    for item in items:
        stage, sep, kv = item.partition(":")
        key, eq, value = kv.partition("=")
        if not sep or not eq or key not in FAULTS:
            raise ValueError(f"--fault {item!r}: write STAGE:KEY=VALUE with KEY one of {', '.join(FAULTS)} (e.g. writer-0:slow_ms=50)")
        try:
            faults.setdefault(stage, {})[key] = float(value) if key == "slow_ms" else int(value)
        except ValueError:
            raise ValueError(f"--fault {item!r}: {key} needs a number") from None
    return faults


def _run_pipeline(config, args) -> int:
    from appliance.pipeline import Supervisor

    try:
        faults = parse_faults(args.fault)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from appliance.config import STAGES
    from appliance.pipeline.handlers import stage_class
    from appliance.pipeline.stage import StageClassError

    try:  # a stage class named in the config (stages.<stage>.handler) is a config error: exit 2
        for stage in STAGES:
            stage_class(config, stage)
    except StageClassError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    notifier = None
    if args.headless:
        import faulthandler

        from appliance.logjson import configure_logging
        from appliance.systemd import NotifyConfigError, Notifier

        configure_logging(json=True, log_file=headless_log_file())
        faulthandler.enable()  # a watchdog SIGABRT leaves every thread's traceback in the journal
        try:
            # unset: the stage processes must not inherit NOTIFY_SOCKET (only we speak to systemd)
            notifier = Notifier.from_environment(unset=True)
        except NotifyConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    resume = getattr(args, "resume", None) is not None
    sup = Supervisor(config, run_id=args.run_id, notifier=notifier, log_json=args.headless, faults=faults, resume=resume)
    if not resume and not any((sup.state_dir / m).exists() for m in ("RUNNING.json", "INTERRUPTED.json")):
        from appliance.pipeline import record_invocation

        record_invocation(sup.state_dir, args.config, args.overrides)  # what a resume needs to run this config again
    from appliance.logjson import set_log_fields

    set_log_fields(run_id=sup.run_id)  # RUN_ID= on every record, the stages' too (they inherit it)
    reporter = _status_reporter(args, config, sup, notifier)
    try:
        return _run_and_report(config, args, sup, notifier, reporter)
    finally:
        set_log_fields(run_id=None)
        if reporter is not None:
            reporter.close()


class _Reporter:
    """The run's status line: STATUS= every 5 s under systemd, or a live line on a terminal
    (appliance.progress); ``phase`` switches it to the offload."""

    def __init__(self, reporter, live=None) -> None:
        self.reporter, self.live = reporter, live

    def set_phase(self, phase: str) -> None:
        self.reporter.phase = phase
        self.reporter.tick()

    def finish_run(self) -> None:
        self.reporter.tick()  # the final figures
        if self.live is None:
            self.reporter.stop()  # systemd: the run is over; the service's own status follows

    def close(self) -> None:
        self.reporter.stop()
        if self.live is not None:
            from appliance.progress import status_text

            view = self.reporter.view
            self.live.close(final=status_text(view) if view is not None else None)


def _status_reporter(args, config, sup, notifier) -> _Reporter | None:
    from appliance.progress import LiveLine, StatusReporter

    prerender = bool(config.source.prerender) and config.source.kind != "genicam"
    if args.headless:
        if notifier is None or not notifier.enabled:
            return None
        return _Reporter(StatusReporter(lambda: sup.latest_stats, notifier.status, period=5.0, prerender=prerender).start())
    if not os.isatty(2):
        return None  # no terminal: nothing but the log and the summary
    import logging

    from appliance.logjson import configure_logging, use_colour

    live = LiveLine(2, colour=use_colour(sys.stderr))
    for fd in (1, 2):  # prints, this process's log and the stage processes' log pass above the line
        if os.isatty(fd):
            live.capture_fd(fd)
    configure_logging(json=False, level=logging.getLogger().level, colour=False)  # the line colours them
    return _Reporter(StatusReporter(lambda: sup.latest_stats, live.show, period=0.5, prerender=prerender).start(), live)


def _run_and_report(config, args, sup, notifier, reporter) -> int:
    from appliance.pipeline import SupervisorError, format_summary

    def on_signal(signum, frame):  # only sets an event: the supervisor's loop drains
        sup.request_stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = sup.run()
    except SupervisorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if notifier is not None:
            notifier.stopping()
    if reporter is not None:
        reporter.finish_run()
    text = json.dumps(summary, indent=2, default=str)
    (sup.state_dir / "summary.json").write_text(text)
    if args.json:
        args.json.write_text(text)
    print(format_summary(summary))
    status = 0
    if summary.get("resume"):
        r = summary["resume"]
        print(f"resumed: every stage restored cycle {r['epoch']}; acquisition went on from frame {r['source_index']}")
        if r["lost_frames"]:
            print(f"error: {r['lost_frames']} frames acquired before the crash were lost (a live camera cannot give them again); "
                  "their tile-cycles are no-calls", file=sys.stderr)
            status = 1
    from appliance.report import ReportError, write_report

    try:
        report = write_report(sup.run_dir, sup.state_dir, summary=summary, config=config)
        print(f"report: {report}")
    except ReportError as exc:  # the run itself succeeded; say why there is no report
        print(f"warning: no run report: {exc}", file=sys.stderr)
    if config.offload.enabled and config.offload.run_wait_s > 0 and not args.no_offload and summary.get("run_complete"):
        if args.headless or sup.stop_requested.is_set():
            # asked to stop (or run by systemd): exit now; the ledger picks the run up later
            print("offload: not run here (the run was stopped, or --headless); appliance serve or appliance jobs work runs its jobs")
            return status
        if reporter is not None:
            reporter.set_phase("offload")
        summary["offload"] = _offload(config, sup)
        text = json.dumps(summary, indent=2, default=str)
        (sup.state_dir / "summary.json").write_text(text)
        if args.json:
            args.json.write_text(text)
    return status


def _offload(config, sup) -> dict:
    """Run this run's offload jobs (cycle-qc, fastq, align-qc, and a candidate's shadow
    reprocess + compare) through the ledger, wait for them, print their headline figures."""
    from appliance.offload import OffloadError, Orchestrator
    from appliance.offload.orchestrator import run_jobs_summary

    wait = config.offload.run_wait_s
    print(f"offload: running the jobs of {sup.run_id} (up to {wait:g} s; --no-offload skips this) ...", flush=True)
    try:
        orch = Orchestrator(config.offload, sup.run_dir.parent, runs=[sup.run_id], instrument_id=config.run.instrument_id,
                            tracing=config.tracing)
        orch.start()
    except (OffloadError, OSError) as exc:
        print(f"warning: offload not run: {exc}; `appliance jobs work` runs the jobs later", file=sys.stderr)
        return {"error": str(exc)}
    try:
        jobs, ended = orch.wait_for_run(sup.run_id, wait)
    finally:
        # jobs still running after the wait go back to the queue for appliance serve / jobs work
        orch.stop(timeout=10.0, drain=False)
    result = run_jobs_summary(jobs, ended)
    states = ", ".join(f"{k} {'/'.join(f'{n} {s}' for s, n in v.items())}" for k, v in result["jobs"].items())
    print(f"offload jobs: {states}")
    fq, aq, cmp_ = result.get("fastq"), result.get("align-qc"), result.get("compare")
    if fq and fq["state"] == "succeeded":
        print(f"  fastq     {fq.get('reads')} reads ({fq.get('pf_reads')} PF) -> {fq['output']}")
    if aq and aq["state"] == "succeeded":
        print(f"  align-qc  {aq['pct_aligned']:.2f}% aligned, error rate {100 * aq['error_rate']:.3f}% (minimap2 against the run's reference)")
    if cmp_ and cmp_["state"] == "succeeded":
        print(f"  compare   candidate verdict: {cmp_.get('verdict')} -> {cmp_['output']}")
    for name, fig in (("fastq", fq), ("align-qc", aq), ("compare", cmp_)):
        if fig and fig["state"] != "succeeded":
            print(f"  {name:<9} {fig['state']}: {fig.get('error') or 'not finished'} (appliance jobs ls --run {sup.run_id})")
    if not ended:
        print(f"  not all jobs ended within offload.run_wait_s = {wait:g} s; they stay queued in the ledger", file=sys.stderr)
    return result
