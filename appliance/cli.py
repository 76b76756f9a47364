"""The ``appliance`` command line: one entry point, one subcommand per verb.

Each verb lives in ``appliance/commands/<verb>.py`` and exposes ``HELP`` (one line),
``DESCRIPTION`` (the ``--help`` text), ``configure(parser)`` and ``run(args) -> int``.
Verb modules are imported only when the verb runs, so ``appliance --help`` stays fast
and importing the CLI has no side effects. A verb with actions (``storage ls``) defines its
common options once on the verb; :func:`share_options` makes them valid after the action too,
so ``--json`` sits in the same place in every verb.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import logging
import sys

from appliance._version import __version__

__all__ = ["main", "COMMANDS", "build_parser", "share_options"]

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
    "incident": "incident",
    "lab": "lab",
    "profile": "profile",
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
  appliance lab status          every instrument of the lab in one table ([lab.instruments.NAME])

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
        share_options(p)
        p.set_defaults(_run=module.run)
    return parser


def share_options(parser: argparse.ArgumentParser) -> None:
    """Make a verb's options valid after its action too: ``appliance storage ls --json`` as
    well as ``appliance storage --json ls``.

    A verb with actions (``storage ls``, ``algo ls``, ``bench ring``) defines its common
    options (``--json``, ``--config``, ``--set``, ...) on the verb's parser; argparse then
    accepts them only before the action. This copies each of them onto every action's parser
    (recursively) with ``default=SUPPRESS``, so an option given after the action sets the
    value and one not given there leaves the verb-level value alone. An action that defines
    the same option string itself keeps its own.
    """
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        shared = [a for a in parser._actions if a.option_strings and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]
        for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
            for opt in shared:
                if any(s in child._option_string_actions for s in opt.option_strings):
                    continue
                twin = copy.copy(opt)
                twin.default = argparse.SUPPRESS
                twin.required = False
                child._optionals._add_action(twin)
            share_options(child)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the verb, return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    from appliance.logjson import configure_logging

    # plain lines on stderr, warnings and errors in colour on a TTY (not with NO_COLOR);
    # --headless verbs switch to JSON / the journal themselves. Like basicConfig, this leaves
    # a root logger that already has handlers (an embedding program, pytest) alone.
    if not logging.getLogger().handlers:
        configure_logging(json=False, level=level)
    if not getattr(args, "verb", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
