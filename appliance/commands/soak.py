"""``appliance soak``: run the pipeline for hours and fail on growth or a lost frame."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "soak test: run the pipeline for hours, sample every process, fail on growth or lost frames"
DESCRIPTION = """\
Run the real pipeline continuously and measure what grows. Every --interval seconds the soak
samples each process of the run (by role: supervisor, source-0, kernel-0, ...; RSS, open fds,
threads), the appliance's /dev/shm segments, the checkpoints' size and the data root's disk use,
and reads the run's end-to-end latency p50/p99. At the end it fits a slope per hour to every
series (after a warm-up of --warmup of the samples) and FAILS (exit 1) when any slope passes its
threshold or any frame was lost. It writes DIR/soak.html (a plot per quantity, the slopes, the
verdict) and DIR/soak.json (every sample, each run's summary, the checkpoint bytes written per
frame).

profiles:
  chain   the full chain at 512 px, 20 frames/s (every stage computes)
  gen1    the generation-1 data path: 2048 px at 100 frames/s, frames passed through
modes:
  long    one run of enough cycles to outlast the soak, drained at the end (default)
  runs    back-to-back runs of the default length under one data root

examples:
  appliance soak --hours 1 --report out/soak-chain
  appliance soak --hours 1 --profile gen1 --report out/soak-gen1
  appliance soak --hours 0.05 --interval 2 --set run.tiles=[1101]   # a two-minute check
Exit status: 0 pass, 1 fail (the reasons are printed and in the report), 2 bad arguments.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hours", type=float, required=True, help="how long to soak (e.g. 1, or 0.05 for 3 minutes)")
    parser.add_argument("--report", type=Path, default=Path("out/soak"), metavar="DIR", help="where soak.html and soak.json go (default out/soak)")
    parser.add_argument("--root", type=Path, default=None, metavar="DIR", help="data root for the runs (default: DIR/data, removed first)")
    parser.add_argument("--profile", choices=("chain", "gen1"), default="chain", help="what runs (default chain)")
    parser.add_argument("--mode", choices=("long", "runs"), default="long", help="one long run, or back-to-back runs")
    parser.add_argument("--interval", type=float, default=10.0, metavar="S", help="seconds between samples (default 10)")
    parser.add_argument("--warmup", type=float, default=0.2, metavar="F", help="share of the samples left out of the slopes (default 0.2)")
    parser.add_argument("--rss-mb-per-h", type=float, default=5.0, help="largest RSS growth per process that passes (default 5 MB/h)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="a run config override (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON (without the samples)")


def run(args: argparse.Namespace) -> int:
    import shutil

    from appliance.soak import SoakThresholds, run_soak, write_report

    if args.hours <= 0 or args.interval <= 0 or not 0 <= args.warmup < 1:
        print("error: --hours and --interval must be > 0 and --warmup in [0, 1)", file=sys.stderr)
        return 2
    root = args.root or (args.report / "data")
    if args.root is None and root.exists():
        shutil.rmtree(root)
    thresholds = SoakThresholds(rss_mb_per_h=args.rss_mb_per_h, warmup_fraction=args.warmup)
    progress = (lambda msg: None) if args.json else (lambda msg: print(f"soak: {msg}", file=sys.stderr, flush=True))
    try:
        result = run_soak(args.hours, root, profile=args.profile, mode=args.mode, interval_s=args.interval,
                          overrides=args.overrides, thresholds=thresholds, progress=progress)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = write_report(result, args.report)
    if args.json:
        doc = result.to_dict()
        doc.pop("samples")
        doc.pop("summaries")
        doc["report"] = str(report)
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(f"soak {'PASS' if result.ok else 'FAIL'}: {result.mode}, {result.hours:.2f} h, {result.runs} run(s), "
              f"{result.frames_acquired} frames, {result.frames_lost} lost")
        for reason in result.reasons:
            print(f"  - {reason}")
        worst = sorted(((v, k) for k, v in result.slopes.items() if k.endswith(".rss_mb")), reverse=True)[:3]
        for v, k in worst:
            print(f"  {k}: {v:+.2f} MB/h")
        print(f"report: {report}")
    return 0 if result.ok else 1
