"""``appliance algo``: the registry of named, versioned algorithms (production and candidate)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "list, register, shadow, promote or roll back versions of the kernel chain"
DESCRIPTION = """\
The algorithm registry (<data root>/.offload/algorithms.json): named, versioned parameter sets
of the real-time kernel chain and base caller. The production algorithm is what the next run
uses; a candidate is reprocessed in shadow (job kind reprocess, then compare) and promoted
or rolled back on the comparison's verdict. See docs/analysis.md.

  ls                       every algorithm, marking production (*) and candidate (c)
  show NAME VERSION        one algorithm's parameters and entry point, as JSON
  register NAME VERSION --params FILE.toml [--entry module:function]
                           add a version ([chain] and [basecall] tables of overrides)
  candidate NAME VERSION   make it the candidate (production is unchanged)
  promote                  the candidate becomes production (the old one is remembered)
  rollback                 drop the candidate; with none, restore the previous production
  compare RUN              print the latest comparison report of RUN
                           (<data root>/Analysis/RUN/compare/.../compare.md)

examples:
  appliance algo ls --root /data/runs
  appliance algo register chain 2 --params chain2.toml
  appliance algo candidate chain 2
  appliance jobs submit reprocess run=RUN --algorithm chain --version 2
  appliance algo compare RUN
  appliance algo promote

exit status: 0 done; 1 the registry refused (unknown algorithm, invalid parameter, nothing to
promote or roll back, no comparison report); 2 usage or configuration error.
"""

EXIT_REFUSED = 1
EXIT_USAGE = 2


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, help="data root (default: output.root of the config)")
    parser.add_argument("--config", type=Path, help="run config (TOML) naming output.root")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("ls", help="list algorithms")
    for name in ("show", "candidate"):
        p = sub.add_parser(name, help=f"{name} an algorithm")
        p.add_argument("name")
        p.add_argument("version")
    p = sub.add_parser("register", help="register a version from a TOML file of parameters")
    p.add_argument("name")
    p.add_argument("version")
    p.add_argument("--params", type=Path, help="TOML: [chain] and [basecall] tables of overrides (none: the defaults)")
    p.add_argument("--entry", help="module:function building the chain (default kernels.chain:TileChain)")
    sub.add_parser("promote", help="the candidate becomes production")
    sub.add_parser("rollback", help="drop the candidate, or restore the previous production")
    p = sub.add_parser("compare", help="print the latest comparison report of a run")
    p.add_argument("run")


def latest_report(data_root: Path, run: str) -> Path | None:
    """The newest ``compare.json`` under ``data_root/Analysis/<run>/compare``."""
    base = Path(data_root) / "Analysis" / run / "compare"
    found = [p for p in base.rglob("compare.json") if ".staging" not in str(p.relative_to(base))] if base.is_dir() else []
    return max(found, key=lambda p: (p.stat().st_mtime_ns, str(p))) if found else None


def _fmt(alg, status: dict) -> str:
    mark = "*" if alg.key == status["production"] else ("c" if alg.key == status["candidate"] else " ")
    params = json.dumps(alg.params, sort_keys=True) if alg.params else "(defaults)"
    return f"{mark} {alg.key:<20} {params}"


def run(args: argparse.Namespace) -> int:
    import tomllib

    from appliance.analysis.algorithms import AlgorithmError, AlgorithmRegistry
    from appliance.config import ConfigError, load_config

    root = args.root
    if root is None:
        try:
            root = Path(load_config(args.config, args.overrides).output.root)
        except ConfigError as exc:
            print(f"appliance algo: {exc}", file=sys.stderr)
            return EXIT_USAGE
    reg = AlgorithmRegistry(root)
    out = (lambda doc: print(json.dumps(doc, indent=1, sort_keys=True))) if args.json else None
    try:
        if args.action == "ls":
            status = reg.status()
            algos = reg.ls()
            if out:
                out({"algorithms": [a.to_dict() for a in algos], **status})
            else:
                for a in algos:
                    print(_fmt(a, status))
        elif args.action == "show":
            print(json.dumps(reg.get(args.name, args.version).to_dict(), indent=1, sort_keys=True))
        elif args.action == "register":
            params = {}
            if args.params:
                try:
                    params = tomllib.loads(args.params.read_text())
                except (OSError, tomllib.TOMLDecodeError) as exc:
                    print(f"appliance algo: {args.params}: cannot read the parameters ({exc}); give a TOML file with [chain] and [basecall] tables", file=sys.stderr)
                    return EXIT_USAGE
            alg = reg.register(args.name, args.version, params, args.entry)
            out({"registered": alg.to_dict()}) if out else print(f"registered {alg.key}")
        elif args.action == "candidate":
            alg = reg.set_candidate(args.name, args.version)
            out({"candidate": alg.key}) if out else print(f"candidate: {alg.key} (production {reg.production().key} unchanged)")
        elif args.action == "promote":
            alg = reg.promote()
            out({"production": alg.key}) if out else print(f"production: {alg.key}")
        elif args.action == "rollback":
            res = reg.rollback()
            if out:
                out(res)
            elif res["dropped_candidate"]:
                print(f"dropped candidate {res['dropped_candidate']}; production: {res['production']}")
            else:
                print(f"production rolled back to {res['production']}")
        elif args.action == "compare":
            path = latest_report(root, args.run)
            if path is None:
                print(f"appliance algo: no comparison report for run {args.run} under {Path(root) / 'Analysis' / args.run / 'compare'}; submit a compare job first", file=sys.stderr)
                return EXIT_REFUSED
            if out:
                print(path.read_text(), end="")
            else:
                md = path.with_name("compare.md")
                print(md.read_text() if md.is_file() else path.read_text(), end="")
                print(f"\n(report: {path.parent})")
    except AlgorithmError as exc:
        print(f"appliance algo: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    return 0
