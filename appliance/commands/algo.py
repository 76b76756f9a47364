"""``appliance algo``: the registry of named, versioned algorithms (production, candidate, pins),
in the data root or, with a PostgreSQL ``offload.ledger``, in the lab database."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HELP = "list, register, shadow, promote, roll back or pin versions of the kernel chain"
DESCRIPTION = """\
The algorithm registry: named, versioned parameter sets of the real-time kernel chain and base
caller. It lives in <data root>/.offload/algorithms.json, or, when offload.ledger is a
PostgreSQL URL, in the lab database, one registry for every instrument of the lab
(docs/lab.md). The production algorithm is what the next run uses; a candidate is reprocessed
in shadow (job kind reprocess, then compare) and promoted or rolled back on the comparison's
verdict. A pin makes one instrument's runs use a given version instead of production (each
run records in its algorithm.json which pin applied, or "production"). See docs/analysis.md.

  ls                       every algorithm, marking production (*) and candidate (c), then the pins
  show NAME VERSION        one algorithm's parameters and entry point, as JSON
  register NAME VERSION --params FILE.toml [--entry module:function]
                           add a version ([chain] and [basecall] tables of overrides)
  candidate NAME VERSION   make it the candidate (production is unchanged)
  promote                  the candidate becomes production (the old one is remembered)
  rollback                 drop the candidate; with none, restore the previous production
  pin INSTRUMENT NAME VERSION
                           runs of INSTRUMENT (run.instrument_id) use NAME@VERSION, not production;
                           the version must be registered; pinning again replaces the pin
  unpin INSTRUMENT [NAME]  runs of INSTRUMENT use production again (with NAME: only if it is
                           pinned to a version of NAME)
  history                  every change, oldest first (register, candidate, promote, pin, ...)
  compare RUN              print the latest comparison report of RUN
                           (<data root>/Analysis/RUN/compare/.../compare.md)

examples:
  appliance algo ls --root /data/runs
  appliance algo register chain 2 --params chain2.toml
  appliance algo candidate chain 2
  appliance jobs submit reprocess run=RUN --algorithm chain --version 2
  appliance algo compare RUN
  appliance algo promote
  appliance algo pin SIM02 chain 1          # SIM02 stays on chain@1 while the lab runs chain@2
  appliance algo ls --json                  # ... "pins": {"SIM02": "chain@1"}
  appliance algo unpin SIM02                # SIM02's next run uses production again
  appliance algo ls --ledger 'postgresql:///lab?host=/run/postgresql'   # the lab's registry

exit status: 0 done; 1 the registry refused (unknown algorithm, invalid parameter, nothing to
promote or roll back, pin to an unregistered version, no pin to drop, no comparison report);
2 usage or configuration error (a malformed instrument id, name or version); 3 the lab
database cannot be reached (the message names it and what to check).
"""

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, help="data root (default: output.root of the config)")
    parser.add_argument("--ledger", help="the lab database (postgresql://...) that holds the registry "
                        "(default: offload.ledger of the config; a file ledger keeps the registry in the data root)")
    parser.add_argument("--config", type=Path, help="run config (TOML) naming output.root and offload.ledger")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("ls", help="list algorithms and pins")
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
    p = sub.add_parser("pin", help="an instrument's runs use this version instead of production",
                       description="Runs of INSTRUMENT (run.instrument_id) use NAME@VERSION instead of production. "
                       "Example: appliance algo pin SIM02 chain 1")
    p.add_argument("instrument")
    p.add_argument("name")
    p.add_argument("version")
    p = sub.add_parser("unpin", help="an instrument's runs use production again",
                       description="Drop INSTRUMENT's pin (with NAME: only if pinned to a version of NAME). "
                       "Example: appliance algo unpin SIM02")
    p.add_argument("instrument")
    p.add_argument("name", nargs="?")
    sub.add_parser("history", help="every change of the registry, oldest first")
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
    pinned = sorted(i for i, k in status.get("pins", {}).items() if k == alg.key)
    return f"{mark} {alg.key:<20} {params}" + (f"  pinned: {', '.join(pinned)}" if pinned else "")


def _fmt_event(h: dict) -> str:
    t = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.get("t") or 0))
    what = f"{h.get('event', '?'):<14} {h.get('algorithm') or '-'}"
    if h.get("instrument"):
        what += f" (instrument {h['instrument']})"
    if h.get("previous"):
        what += f", was {h['previous']}"
    return f"{t}  {what}" + (f"  by {h['by']}" if h.get("by") else "")


def _usage_error(exc) -> bool:
    """A malformed argument (instrument id, name, version) rather than a refusal by the registry."""
    msg = str(exc)
    return "must be an instrument id" in msg or "must be a non-empty string without" in msg


def run(args: argparse.Namespace) -> int:
    import tomllib

    from appliance.analysis.algorithms import AlgorithmError, AlgorithmRegistry, RegistryUnavailable
    from appliance.config import ConfigError, load_config

    root, ledger = args.root, args.ledger
    if root is None or ledger is None:
        try:
            config = load_config(args.config, args.overrides)
        except ConfigError as exc:
            print(f"appliance algo: {exc}", file=sys.stderr)
            return EXIT_USAGE
        root = root if root is not None else Path(config.output.root)
        ledger = ledger if ledger is not None else (config.offload.ledger if config.offload is not None else "")
    try:
        reg = AlgorithmRegistry.open(root, ledger)
    except RegistryUnavailable as exc:
        print(f"appliance algo: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except AlgorithmError as exc:
        print(f"appliance algo: {exc}", file=sys.stderr)
        return EXIT_USAGE if "looks like a PostgreSQL URL" in str(exc) else EXIT_REFUSED
    with reg:
        return _act(args, reg, root, tomllib)


def _act(args: argparse.Namespace, reg, root: Path, tomllib) -> int:
    from appliance.analysis.algorithms import AlgorithmError, RegistryUnavailable

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
                if status["pins"]:
                    print("pins (these instruments' runs use the pinned version, not production):")
                    for inst, key in status["pins"].items():
                        print(f"  {inst:<16} -> {key}")
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
        elif args.action == "pin":
            alg = reg.pin(args.instrument, args.name, args.version)
            if out:
                out({"instrument": args.instrument, "pinned": alg.key})
            else:
                print(f"pinned {args.instrument} to {alg.key}: its next run uses it instead of production "
                      f"{reg.production().key} (appliance algo unpin {args.instrument} to undo)")
        elif args.action == "unpin":
            key = reg.unpin(args.instrument, args.name)
            if out:
                out({"instrument": args.instrument, "unpinned": key, "production": reg.production().key})
            else:
                print(f"unpinned {args.instrument} (was {key}): its next run uses production {reg.production().key}")
        elif args.action == "history":
            events = reg.history()
            if out:
                out({"history": events})
            else:
                for h in events:
                    print(_fmt_event(h))
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
    except RegistryUnavailable as exc:
        print(f"appliance algo: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except AlgorithmError as exc:
        print(f"appliance algo: {exc}", file=sys.stderr)
        return EXIT_USAGE if _usage_error(exc) else EXIT_REFUSED
    return 0
