"""``appliance clean``: remove rings left behind by dead processes."""

from __future__ import annotations

import argparse

HELP = "remove rings (and their semaphores) whose owner and both ends are dead"
DESCRIPTION = """\
Remove the shared-memory rings of dead owners: a ring is removed only when the process that
created it and its producer and consumer (when attached) are all dead, checked by pid and
process start time so a reused pid is not mistaken for the owner. The supervisor runs this
at start-up; run it by hand after a crash or a SIGKILL.

--force NAME removes the named ring whatever its state (for a segment whose creator died
half-way, which has no valid control block). Users still attached keep their mapping.

examples:
  appliance clean
  appliance clean --dry-run
  appliance clean --force appliance.run42.kernel-basecall
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="append", default=[], metavar="NAME", help="remove this ring even if its owner lives (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="only list what would be removed")


def run(args: argparse.Namespace) -> int:
    import rt

    names = rt.clean_dead_rings(tuple(args.force), dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for name in names:
        print(f"{verb} {name}")
    print(f"{len(names)} ring(s) {'would be removed' if args.dry_run else 'removed'}")
    return 0
