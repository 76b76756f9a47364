"""``appliance tui``: the operator console, live over the control plane or replaying a run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "the operator console: watch and control a running appliance, or replay a run's stats"
DESCRIPTION = """\
A terminal console (Textual) showing the pipeline stage by stage: rates, ring occupancy
with sparklines, drops and restarts, run progress (frames, cycle, tile, ETA), alerts and a
log tail. It talks to the appliance only over its control plane, so start it from a second
terminal while `appliance run` runs; it reconnects by itself when the appliance restarts.
Keys: ? help, g start (under appliance serve), s stop (drain), p pause, r resume (each asks
first, and is refused while the console is disconnected), c clear alerts, q quit; the
alerts and the log are lists: up/down select, Tab switches, Enter opens a row whole with its
fields and its runbook entry; b shows an earlier run's alerts and log; e / j / t switch the
bottom area between alerts & log, the offload jobs and the storage tiers (published by
appliance serve). A lost connection dims the screen and marks it with its age.

By default the local sockets in $XDG_RUNTIME_DIR/appliance (/run/appliance as root,
/tmp/appliance-UID otherwise) are used, as by `appliance run`; --socket-dir picks another
directory and --connect tcp://HOST:PORT a remote appliance (CURVE keys: --client-key,
--server-key). --replay plays back a past run's stats.jsonl instead (space holds it,
+/- change the speed, [ and ] jump to the previous/next event, : to a time such as +1:30
or 18:05:00, home starts over). See docs/tui.md.

--lab shows the lab's fleet instead: one row per instrument named in the config's
[lab.instruments.NAME] tables (--config, --set; as `appliance lab status` prints them: state,
run, cycle, frames, frames/s, drops, alerts, jobs waiting per class, running, oldest wait),
refreshed every --refresh seconds, an instrument that does not answer marked `unreachable`
with its error. up/down select, Enter opens that instrument's own live console (over its
connect target, with its CURVE keys), Esc there comes back to the fleet. See docs/lab.md.

examples:
  appliance tui                                   the appliance on this machine
  appliance tui --socket-dir /tmp/appliance-test  one started with that --socket-dir
  appliance tui --connect tcp://imager1:5560 --client-key me.key_secret --server-key server.key
  appliance tui --replay /data/runs/251125_SIM01_0001_FC0001 --speed 4
  appliance tui --replay /data/runs/.state/T1/stats.jsonl --speed 0   as fast as it draws
  appliance tui --replay /data/runs/.state/recorder                 every run the flight recorder holds
  appliance tui --lab --config lab.toml             the lab's fleet; Enter opens an instrument
"""


def configure(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--connect", metavar="ENDPOINT", help="tcp://HOST:PORT or ipc://PATH of the appliance's command socket")
    where.add_argument("--socket-dir", metavar="DIR", help="directory of the local control sockets")
    where.add_argument("--replay", metavar="PATH", help="replay a run: its run folder, its state folder, a stats.jsonl file, or the flight recorder folder (ROOT/.state/recorder)")
    where.add_argument("--lab", action="store_true", help="the lab's fleet: every instrument of [lab.instruments] (--config), Enter opens one")
    parser.add_argument("--config", type=Path, help="with --lab: the config (TOML) with [lab.instruments.NAME] tables and offload.ledger")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="with --lab: config override (repeatable)")
    parser.add_argument("--refresh", type=float, default=2.0, metavar="S", help="with --lab: seconds between two refreshes of the fleet (default 2)")
    parser.add_argument("--timeout", type=float, default=2.0, metavar="S", help="with --lab: seconds to wait for each instrument (default 2)")
    parser.add_argument("--speed", type=float, default=1.0, metavar="X", help="replay speed, times real time (default 1; 0 = as fast as possible)")
    parser.add_argument("--client-key", metavar="FILE", help="this client's CURVE secret key file (NAME.key_secret), for tcp://")
    parser.add_argument("--server-key", metavar="FILE", help="the server's CURVE public key file (server.key), for tcp://")


def make_source(args: argparse.Namespace):
    """The data source the arguments ask for (raises ValueError / SourceError on bad input)."""
    from tui import LiveSource, ReplaySource

    if args.replay:
        return ReplaySource(args.replay, speed=args.speed)
    keys = None
    if args.client_key or args.server_key:
        from appliance.control import CurveKeys

        if not (args.client_key and args.server_key):
            raise ValueError("--client-key and --server-key go together (both are needed for tcp://)")
        keys = CurveKeys.from_files(args.client_key, args.server_key)
    return LiveSource(args.connect or args.socket_dir, curve_keys=keys)


def make_fleet(args: argparse.Namespace):
    """``(rows, instruments)`` for ``FleetApp`` from the config: ``rows()`` asks every instrument
    and the lab ledger (``appliance.lab.collect``, as ``appliance lab status``). Raises
    ConfigError on a bad config, ValueError when it names no instrument."""
    from appliance.config import load_config
    from appliance.lab import collect, ledger_backlog
    from tui import Instrument

    cfg = load_config(args.config, args.overrides)
    if not cfg.lab.instruments:
        raise ValueError("--lab: no instruments: name them in [lab.instruments.NAME] tables with connect = ... "
                         "(appliance lab status --help)")
    backlog = ledger_backlog(cfg)

    def rows():
        return collect(cfg.lab, backlog, timeout_s=args.timeout)

    instruments = {name: Instrument(i.connect, i.client_key, i.server_key) for name, i in cfg.lab.instruments.items()}
    return rows, instruments


def run(args: argparse.Namespace) -> int:
    from appliance.control import CurveKeyError, SocketDirError
    from tui import ApplianceApp, SourceError

    if not args.lab and (args.config or args.overrides):
        print("appliance tui: --config and --set go with --lab", file=sys.stderr)
        return 2
    if args.lab:
        from appliance.config import ConfigError
        from tui import FleetApp

        try:
            rows, instruments = make_fleet(args)
        except (ConfigError, ValueError) as exc:
            print(f"appliance tui: {exc}", file=sys.stderr)
            return 2
        FleetApp(rows, instruments, refresh_s=max(0.1, args.refresh)).run()
        return 0
    try:
        source = make_source(args)
    except (ValueError, SourceError, CurveKeyError, SocketDirError, OSError) as exc:
        print(f"appliance tui: {exc}", file=sys.stderr)
        return 2
    ApplianceApp(source).run()
    return 0
