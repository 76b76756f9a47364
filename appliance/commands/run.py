"""``appliance run``: the main job.

The real-time pipeline (source -> preprocess -> kernel -> basecall -> writer) is not built
yet (issue "appliance: the real-time pipeline runtime"); until it lands, the main job is the
ring benchmark, which exercises the data path the pipeline will run on.
"""

from __future__ import annotations

import argparse

HELP = "run the main job (for now: the ring data-path benchmark; the pipeline is not built yet)"
DESCRIPTION = """\
Run the appliance's main job with the embedded defaults.

The real-time pipeline (synthetic camera -> preprocess -> kernel -> basecall -> writer) is
not built yet. Until it is, `appliance run` cleans up rings of dead processes and then runs
the ring data-path benchmark (`appliance bench ring`): real processes moving frames through
the shared-memory rings, side by side with multiprocessing.Queue, ZeroMQ and memcpy.

examples:
  appliance run
  appliance run --quick
"""


def configure(parser: argparse.ArgumentParser) -> None:
    from appliance.benchmarks import ring

    ring.configure(parser)


def run(args: argparse.Namespace) -> int:
    import rt
    from appliance.benchmarks import ring

    for name in rt.clean_dead_rings():
        print(f"removed stale ring {name}")
    return ring.run(args)
