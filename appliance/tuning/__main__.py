"""``python -m appliance.tuning ACTION ...``: the sysconfig verb without the rest of the CLI.

The provisioning scripts in ``sysconfig/`` run this, so a fresh host needs only Python 3.11+
and this checkout (no other verb, and no third-party package, is imported).
"""

import argparse
import logging
import sys

from appliance.commands import sysconfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sysconfig",
        description=sysconfig.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sysconfig.configure(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    return sysconfig.run(args)


if __name__ == "__main__":
    sys.exit(main())
