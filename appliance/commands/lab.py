"""``appliance lab``: the lab's instruments in one view."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "the lab: every instrument's state, run, frames/s, drops, alerts and job backlog in one table"
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


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="config (TOML) with [lab.instruments.NAME] tables and offload.ledger")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--timeout", type=float, default=2.0, metavar="S", help="seconds to wait for each instrument (default 2)")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("status", help="one row per instrument", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")


def run(args: argparse.Namespace) -> int:
    from appliance.config import ConfigError, load_config
    from appliance.lab import collect, format_fleet

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"appliance lab: {exc}", file=sys.stderr)
        return 2
    if not cfg.lab.instruments:
        print("appliance lab: no instruments: name them in [lab.instruments.NAME] tables with connect = ... (appliance lab status --help)",
              file=sys.stderr)
        return 2
    target = cfg.offload.ledger_target(Path(cfg.output.root))
    is_pg = str(target).startswith(("postgresql://", "postgres://"))

    def backlog():
        from appliance.offload import Ledger

        if not is_pg and not Path(target).exists():
            return {}
        with Ledger(target, config=cfg.offload) as led:
            return led.backlog_by_instrument()

    rows = collect(cfg.lab, backlog, timeout_s=args.timeout)
    if args.json:
        print(json.dumps({"ledger": str(target), "instruments": rows}, indent=2, default=str))
    else:
        print(format_fleet(rows))
    return 1 if any(r["error"] for r in rows) else 0
