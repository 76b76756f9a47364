"""``appliance run``: one instrument run through the real-time pipeline."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

HELP = "run the instrument: synthetic camera -> preprocess -> kernel -> basecall -> run folder"
DESCRIPTION = """\
Run one instrument run through the real-time pipeline and print its summary.

The embedded defaults (appliance/defaults.toml) describe a synthetic run: 2 tiles x 4
channels x 26 cycles of 512 x 512 px from the synthetic flow-cell camera at 100 frames/s.
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
Exit status: 0 done, 1 the run could not keep its promise, 2 bad configuration.

examples:
  appliance run
  appliance run --set run.cycles=50 --set source.synthetic.tile_size=256
  appliance run --config myrun.toml --json summary.json
  appliance run --headless                # under systemd: notify protocol, JSON log lines
  appliance run --profile instrument --strict
  appliance run --fault writer-0:slow_ms=200   # drill: a throttled writer raises alerts
  appliance run --no-offload              # only the run; appliance jobs work offloads it later
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="run config (TOML); keys override the embedded defaults")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override one key, e.g. run.cycles=50 (repeatable)")
    parser.add_argument("--run-id", help="run folder name (default: YYMMDD_INSTRUMENT_NNNN_FLOWCELL)")
    parser.add_argument("--json", type=Path, help="also write the summary as JSON to this path")
    parser.add_argument("--headless", action="store_true", help="run under systemd: sd_notify READY/WATCHDOG/STATUS/STOPPING, JSON log lines")
    parser.add_argument("--profile", metavar="NAME", help="verify the host against this sysconfig profile first (overrides supervisor.sysconfig_profile)")
    parser.add_argument("--strict", action="store_true", help="refuse to start when the host differs from the profile")
    parser.add_argument("--no-offload", action="store_true", help="do not run the offload jobs (fastq, align-qc, ...) of this run here; appliance serve or appliance jobs work picks them up")
    parser.add_argument(
        "--fault", action="append", default=[], metavar="STAGE:KEY=VALUE",
        help="fault drill: writer-0:slow_ms=50 throttles the writer (backpressure, alerts), "
        "kernel-0:kill_after=100 SIGKILLs it after 100 frames (restart from checkpoint), "
        "preprocess-0:corrupt_frame=50 flips a bit (quarantine). Repeatable; for operator training and tests",
    )


def run(args: argparse.Namespace) -> int:
    from appliance.config import ConfigError, load_config

    try:
        config = load_config(args.config, args.overrides)
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


def parse_faults(items: list[str]) -> dict[str, dict]:
    """``["writer-0:slow_ms=50", ...]`` -> ``{"writer-0": {"slow_ms": 50}}``; ValueError names the bad item."""
    faults: dict[str, dict] = {}
    for item in items:
        stage, sep, kv = item.partition(":")
        key, eq, value = kv.partition("=")
        if not sep or not eq or key not in ("slow_ms", "kill_after", "corrupt_frame"):
            raise ValueError(f"--fault {item!r}: write STAGE:KEY=VALUE with KEY one of slow_ms, kill_after, corrupt_frame (e.g. writer-0:slow_ms=50)")
        try:
            faults.setdefault(stage, {})[key] = float(value) if key == "slow_ms" else int(value)
        except ValueError:
            raise ValueError(f"--fault {item!r}: {key} needs a number") from None
    return faults


def _run_pipeline(config, args) -> int:
    from appliance.pipeline import Supervisor, SupervisorError, format_summary

    try:
        faults = parse_faults(args.fault)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    notifier = None
    if args.headless:
        import faulthandler

        from appliance.logjson import configure_logging
        from appliance.systemd import NotifyConfigError, Notifier

        configure_logging(json=True)
        faulthandler.enable()  # a watchdog SIGABRT leaves every thread's traceback in the journal
        try:
            # unset: the stage processes must not inherit NOTIFY_SOCKET (only we speak to systemd)
            notifier = Notifier.from_environment(unset=True)
        except NotifyConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    sup = Supervisor(config, run_id=args.run_id, notifier=notifier, log_json=args.headless, faults=faults)

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
    text = json.dumps(summary, indent=2, default=str)
    (sup.state_dir / "summary.json").write_text(text)
    if args.json:
        args.json.write_text(text)
    print(format_summary(summary))
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
            return 0
        summary["offload"] = _offload(config, sup)
        text = json.dumps(summary, indent=2, default=str)
        (sup.state_dir / "summary.json").write_text(text)
        if args.json:
            args.json.write_text(text)
    return 0


def _offload(config, sup) -> dict:
    """Run this run's offload jobs (cycle-qc, fastq, align-qc, and a candidate's shadow
    reprocess + compare) through the ledger, wait for them, print their headline figures."""
    from appliance.offload import OffloadError, Orchestrator
    from appliance.offload.orchestrator import run_jobs_summary

    wait = config.offload.run_wait_s
    print(f"offload: running the jobs of {sup.run_id} (up to {wait:g} s; --no-offload skips this) ...", flush=True)
    try:
        orch = Orchestrator(config.offload, sup.run_dir.parent, runs=[sup.run_id])
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
