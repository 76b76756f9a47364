"""``appliance report``: write a run's HTML report (plots and tables) after the fact."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "write a run's HTML report: throughput, rings, latency, intensities, error rate, pass filter, alerts"
DESCRIPTION = """\
Write one self-contained HTML page about a run (plots embedded, no other files needed) and
print its path. It shows throughput and ring occupancy over time (from the stats the
supervisor sampled), the end-to-end latency percentiles and per-stage busy time, the mean
intensity per channel cycle by cycle, the base-call error rate per cycle against the ground
truth for synthetic runs, %PF per tile, drops, restarts, and every event and alert.

RUN_DIR is the run folder, ROOT/RUN_ID. The report is written next to the run's state, as
ROOT/.state/RUN_ID/report.html, never inside the run folder (its manifest is final). A run
records what the report needs in ROOT/.state/RUN_ID (summary.json, stats.jsonl); what is
missing is said in the report instead of failing it.

--config/--set take the run configuration as given to `appliance run`; they are needed
only for per-stage budgets and to score an older run cycle by cycle.

examples:
  appliance report runs/251125_SIM01_0001_FC0001
  appliance report runs/R1 --out /tmp/R1.html --open
  appliance report /data/runs/R1 --state-dir /var/lib/appliance/state/R1
  appliance report runs/R1 --set source.synthetic.tile_size=256
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run folder, ROOT/RUN_ID")
    parser.add_argument("--out", type=Path, help="where to write the HTML (default ROOT/.state/RUN_ID/report.html)")
    parser.add_argument("--state-dir", type=Path, help="the run's state folder (default ROOT/.state/RUN_ID; set it where output.state_root was set)")
    parser.add_argument("--config", type=Path, help="the run config (TOML) the run was started with")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="a config override the run was started with (repeatable)")
    parser.add_argument("--open", action="store_true", help="open the report in the default web browser")


def run(args: argparse.Namespace) -> int:
    from appliance.report import ReportError, write_report

    config = None
    if args.config is not None or args.overrides:
        from appliance.config import ConfigError, load_config

        try:
            config = load_config(args.config, args.overrides)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        path = write_report(args.run_dir, state_dir=args.state_dir, out=args.out, config=config)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write the report: {exc}", file=sys.stderr)
        return 1
    print(path)
    if args.open:
        import webbrowser

        if not webbrowser.open(path.resolve().as_uri()):
            print(f"note: no web browser found; open {path} by hand", file=sys.stderr)
    return 0
