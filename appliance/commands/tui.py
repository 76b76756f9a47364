"""``appliance tui``: the operator console, live over the control plane or replaying a run."""

from __future__ import annotations

import argparse
import sys

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

examples:
  appliance tui                                   the appliance on this machine
  appliance tui --socket-dir /tmp/appliance-test  one started with that --socket-dir
  appliance tui --connect tcp://imager1:5560 --client-key me.key_secret --server-key server.key
  appliance tui --replay /data/runs/251125_SIM01_0001_FC0001 --speed 4
  appliance tui --replay /data/runs/.state/T1/stats.jsonl --speed 0   as fast as it draws
  appliance tui --replay /data/runs/.state/recorder                 every run the flight recorder holds
"""


def configure(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--connect", metavar="ENDPOINT", help="tcp://HOST:PORT or ipc://PATH of the appliance's command socket")
    where.add_argument("--socket-dir", metavar="DIR", help="directory of the local control sockets")
    where.add_argument("--replay", metavar="PATH", help="replay a run: its run folder, its state folder, a stats.jsonl file, or the flight recorder folder (ROOT/.state/recorder)")
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


def run(args: argparse.Namespace) -> int:
    from appliance.control import CurveKeyError, SocketDirError
    from tui import ApplianceApp, SourceError

    try:
        source = make_source(args)
    except (ValueError, SourceError, CurveKeyError, SocketDirError, OSError) as exc:
        print(f"appliance tui: {exc}", file=sys.stderr)
        return 2
    ApplianceApp(source).run()
    return 0
