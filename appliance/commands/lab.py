"""``appliance lab``: the lab's instruments in one view."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "the lab: every instrument in one table (status), or a simulated lab of N instruments on this machine (simulate)"
DESCRIPTION = """\
`appliance lab status` asks every instrument named in the config's [lab.instruments.NAME]
tables for its status (twice, a second apart, for frames/s) over its control plane, and the
lab ledger (offload.ledger, PostgreSQL for a lab; docs/lab.md) for the jobs each instrument
has waiting per class (RT, BATCH, REPROC), running, and the age of its oldest waiting job.
An instrument that does not answer is shown `unreachable` with the reason; the others are
shown all the same. Instruments the ledger has jobs of but the config does not name are listed
too.

config:
  [offload]
  ledger = "postgresql:///lab?host=/run/postgresql"
  [lab.instruments.SIM01]
  connect = "/run/appliance"                         # this host's socket directory
  [lab.instruments.SIM02]
  connect = "tcp://sim02.lab:5555"                    # another host: CURVE keys
  client_key = "/etc/appliance/keys/lab.key_secret"
  server_key = "/etc/appliance/keys/sim02-server.key"

examples:
  appliance lab status --config lab.toml
  appliance lab status --config lab.toml --json      # the same rows for scripts
Exit status: 0 every instrument answered, 1 some did not (or the ledger), 2 bad configuration.
"""

SIMULATE = """\
`appliance lab simulate` answers "what happens when we add instruments": it starts N
instruments on this machine (each a real `appliance serve`, SIM01..SIMnn, with small
synthetic runs: 128 px tiles at a low frame rate, back to back for --minutes), one PostgreSQL
job ledger (a private server it starts and removes, unless --ledger names one) and one
executor pool (`appliance jobs work --no-scan` with --workers slots) that runs every
instrument's jobs. The instruments only submit (offload.dispatch = false). Then it waits for
the jobs (--drain-s) and reports, from the ledger and the runs' summaries:

  jobs/s per instrument and in total, queue wait p50/p99 per class (realtime, batch,
  reprocess), fairness (max / min of the instruments' jobs/s: 1.0 is fair), frames acquired
  and dropped, and whether every job the runs call for was submitted exactly once.

--weight SIM01=2 gives an instrument twice the pool's fair share (offload.instrument_weights;
default 1 each); the table shows each instrument's weight and share of the jobs done, and
fairness is then per unit of weight. Weights show only when the pool is the bottleneck
(few --workers for the instruments' work).
--restart-ledger-at S restarts the private PostgreSQL server S seconds in (--ledger-down D:
it stays down D seconds first): the instruments go on acquiring, their submissions wait in
their outboxes and arrive once it is back.
--report DIR writes an HTML report (index.html: the table, jobs done over time per
instrument, waits per class) and result.json. Four instruments fit on 2 cores at the defaults.

examples:
  appliance lab simulate --instruments 4
  appliance lab simulate --instruments 2 --minutes 1 --report /tmp/lab-report
  appliance lab simulate --instruments 4 --workers 4 --json result.json
  appliance lab simulate --instruments 2 --restart-ledger-at 30 --ledger-down 10
  appliance lab simulate --instruments 2 --workers 1 --weight SIM01=2
Exit status: 0 done, every job submitted exactly once and no frame dropped; 1 the simulation
ran but a job was missing or duplicated, or a frame was dropped, or jobs were left undone;
2 bad options; 3 it could not run (no PostgreSQL, an instrument that would not start).
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="config (TOML) with [lab.instruments.NAME] tables and offload.ledger")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--timeout", type=float, default=2.0, metavar="S", help="seconds to wait for each instrument (default 2)")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("status", help="one row per instrument", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    p = sub.add_parser("simulate", help="N instruments on this machine against one ledger and one pool",
                       description=SIMULATE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--instruments", type=int, default=4, metavar="N", help="instruments to start (default 4)")
    p.add_argument("--minutes", type=float, default=2.0, metavar="M", help="how long they start runs (default 2)")
    p.add_argument("--workers", type=int, default=2, metavar="W", help="slots of the one executor pool (default 2)")
    p.add_argument("--tile-size", type=int, default=128, help="synthetic tile size in pixels (default 128)")
    p.add_argument("--rate", type=float, default=4.0, metavar="HZ", help="each camera's frame rate (default 4)")
    p.add_argument("--cycles", type=int, default=8, help="cycles per run (default 8)")
    p.add_argument("--drain-s", type=float, default=180.0, help="how long to wait for the jobs after the last run (default 180)")
    p.add_argument("--restart-ledger-at", type=float, metavar="S", help="restart the private PostgreSQL server S seconds in")
    p.add_argument("--ledger-down", type=float, default=0.0, metavar="D",
                   help="with --restart-ledger-at: keep the server down D seconds (default 0: a plain restart)")
    p.add_argument("--weight", action="append", default=[], metavar="INSTRUMENT=W",
                   help="the pool's fair-share weight of an instrument (offload.instrument_weights; repeatable; default 1)")
    p.add_argument("--ledger", help="a PostgreSQL URL to use instead of a private server (its tables are used as they are)")
    p.add_argument("--report", type=Path, metavar="DIR", help="write index.html (with plots) and result.json here")
    p.add_argument("--workdir", type=Path, help="where the lab's data root and logs go (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs, run folders) afterwards")
    p.add_argument("--json", nargs="?", const="-", default=argparse.SUPPRESS, metavar="FILE",
                   help="print the result as JSON (or write it to FILE)")


def _simulate(args: argparse.Namespace) -> int:
    from appliance.labsim import LabSimulation, SimSettings, SimulationError, format_result, parse_weight, write_report

    if args.ledger and not args.ledger.startswith(("postgresql://", "postgres://")):
        print(f"appliance lab simulate: --ledger {args.ledger!r}: give a PostgreSQL URL (postgresql://USER@HOST/DB)", file=sys.stderr)
        return 2
    try:
        settings = SimSettings(instruments=args.instruments, minutes=args.minutes, workers=args.workers,
                               tile_size=args.tile_size, rate_hz=args.rate, cycles=args.cycles, drain_s=args.drain_s,
                               restart_ledger_at_s=args.restart_ledger_at, ledger_down_s=args.ledger_down,
                               weights=tuple(parse_weight(w) for w in args.weight))
        sim = LabSimulation(settings, ledger=args.ledger, workdir=args.workdir, keep=args.keep, config=args.config,
                            overrides=args.overrides)
    except ValueError as exc:
        print(f"appliance lab simulate: {exc}", file=sys.stderr)
        return 2
    json_to = "-" if args.json is True else args.json if isinstance(args.json, str) else None
    say = (lambda m: print(f"lab simulate: {m}", file=sys.stderr, flush=True))
    try:
        result = sim.run(progress=say)
    except SimulationError as exc:
        print(f"appliance lab simulate: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("appliance lab simulate: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    if args.report:
        say(f"report: {write_report(result, args.report)}")
    if json_to == "-":
        print(json.dumps(result, indent=1, default=str))
    else:
        if json_to:
            Path(json_to).write_text(json.dumps(result, indent=1, default=str))
        print(format_result(result))
    ok = result["exactly_once"]["ok"] and result["total"]["frames_dropped"] == 0 and result["drained"]
    return 0 if ok else 1


def run(args: argparse.Namespace) -> int:
    from appliance.config import ConfigError, load_config
    from appliance.lab import collect, format_fleet, ledger_backlog

    if args.action == "simulate":
        return _simulate(args)

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"appliance lab: {exc}", file=sys.stderr)
        return 2
    if not cfg.lab.instruments:
        print("appliance lab: no instruments: name them in [lab.instruments.NAME] tables with connect = ... (appliance lab status --help)",
              file=sys.stderr)
        return 2
    backlog = ledger_backlog(cfg)

    rows = collect(cfg.lab, backlog, timeout_s=args.timeout)
    if args.json:
        print(json.dumps({"ledger": str(cfg.offload.ledger_target(Path(cfg.output.root))), "instruments": rows}, indent=2, default=str))
    else:
        print(format_fleet(rows))
    return 1 if any(r["error"] for r in rows) else 0
