"""The ``appliance`` command line: one entry point, one subcommand per verb.

Each verb lives in ``appliance/commands/<verb>.py`` and exposes ``HELP`` (one line),
``DESCRIPTION`` (the ``--help`` text), ``configure(parser)`` and ``run(args) -> int``.
Verb modules are imported only when the verb runs, so ``appliance --help`` stays fast
and importing the CLI has no side effects.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from appliance._version import __version__

__all__ = ["main", "COMMANDS"]

#: verb -> module under ``appliance.commands``. Order is the order shown in ``--help``.
COMMANDS: dict[str, str] = {
    "run": "run",
    "serve": "serve",
    "report": "report",
    "bench": "bench",
    "rings": "rings",
    "clean": "clean",
    "topology": "topology",
    "sysconfig": "sysconfig",
    "simulate": "simulate",
    "ctl": "ctl",
    "tui": "tui",
    "storage": "storage",
    "jobs": "jobs",
    "algo": "algo",
    "soak": "soak",
}

_EPILOG = """\
examples:
  appliance run                 run the main job with the embedded defaults
  appliance bench ring          ring vs multiprocessing.Queue vs ZeroMQ vs memcpy
  appliance rings               list the rings in /dev/shm with their owners and statistics
  appliance clean               remove rings whose owning processes are dead
  appliance topology            NUMA nodes, CPUs, isolated CPUs as this host reports them
  appliance tui                 the operator console for a running appliance (second terminal)
  appliance ctl status --json   the same figures for scripts; ctl stop drains the run
  appliance serve               stay up and start runs on command (appliance ctl start)

`appliance VERB --help` explains each verb.
"""


def _short_help(module_name: str) -> str:
    # Importing a verb module only for its one-line help is cheap: verb modules
    # keep their heavy imports inside run().
    module = importlib.import_module(f"appliance.commands.{module_name}")
    return module.HELP


def build_parser() -> argparse.ArgumentParser:
    """Build the full argument parser (all verbs)."""
    parser = argparse.ArgumentParser(
        prog="appliance",
        description="Data-pipeline appliance for a flow-cell imaging instrument.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, module_name in COMMANDS.items():
        module = importlib.import_module(f"appliance.commands.{module_name}")
        p = sub.add_parser(
            verb,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.configure(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the verb, return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "verb", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
