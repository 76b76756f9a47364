"""``appliance run``: the main job.

The real-time pipeline (source -> preprocess -> kernel -> basecall -> writer) is not built
yet (issue "appliance: the real-time pipeline runtime"); until it lands, the main job is the
ring benchmark, which exercises the data path the pipeline will run on.
"""

from __future__ import annotations

import argparse
import sys

HELP = "run the main job (for now: the ring data-path benchmark; the pipeline is not built yet)"
DESCRIPTION = """\
Run the appliance's main job with the embedded defaults.

The real-time pipeline (synthetic camera -> preprocess -> kernel -> basecall -> writer) is
not built yet. Until it is, `appliance run`:

  1. checks the host against a sysconfig tuning profile when --profile is given (warns on
     drift; --strict refuses to start, exit 1),
  2. removes rings left behind by dead processes (`appliance clean`),
  3. runs the ring data-path benchmark (`appliance bench ring`): real processes moving
     frames through the shared-memory rings, side by side with multiprocessing.Queue,
     ZeroMQ and memcpy, printing a table and writing JSON.

examples:
  appliance run
  appliance run --quick
  appliance run --profile instrument --strict
"""


def configure(parser: argparse.ArgumentParser) -> None:
    from appliance.benchmarks import ring

    parser.add_argument("--profile", metavar="NAME", help="sysconfig profile to verify the host against at start-up (see `appliance sysconfig --help`)")
    parser.add_argument("--strict", action="store_true", help="refuse to start when the host differs from --profile")
    ring.configure(parser)


def run(args: argparse.Namespace) -> int:
    import rt
    from appliance.benchmarks import ring

    if args.strict and not args.profile:
        print("error: --strict needs --profile NAME (the tuning profile to enforce)", file=sys.stderr)
        return 2
    if args.profile:
        from appliance.tuning import ProfileError, startup_check
        from appliance.tuning.startup import TuningDriftError

        try:
            problems = startup_check(args.profile, strict=args.strict)
        except (TuningDriftError, ProfileError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        for problem in problems:
            print(f"warning: host differs from sysconfig profile {args.profile!r}: {problem}", file=sys.stderr)
    for name in rt.clean_dead_rings():
        print(f"removed stale ring {name}")
    return ring.run(args)
