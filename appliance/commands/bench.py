"""``appliance bench SUITE``: side-by-side benchmarks that print a table and write JSON."""

from __future__ import annotations

import argparse
import importlib

HELP = "run a benchmark suite (ring, kernels, ...) and print ratios to reference implementations"
DESCRIPTION = """\
Run one benchmark suite. Every suite measures our implementation and its reference
(multiprocessing.Queue, ZeroMQ, memcpy, SciPy/scikit-image, ...) in the same run and reports
ratios, because absolute figures on a shared machine are noisy. Results are printed as a
table and written as JSON (--json PATH). docs/benchmarks.md records the current figures.

examples:
  appliance bench ring                 # or: scripts/bench ring
  appliance bench ring --quick
  appliance bench kernels --help
"""

#: suite -> module under ``appliance.benchmarks``
SUITES: dict[str, str] = {
    "ring": "ring",
    "e2e": "e2e",
    "kernels": "kernels",
    "gpu": "gpu",
    "storage": "storage",
    "ledger": "ledger",
    "transfer": "transfer",
}


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="suite", metavar="SUITE", required=True)
    for name, module_name in SUITES.items():
        module = importlib.import_module(f"appliance.benchmarks.{module_name}")
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.configure(p)
        p.set_defaults(_suite_run=module.run)


def run(args: argparse.Namespace) -> int:
    return int(args._suite_run(args) or 0)
