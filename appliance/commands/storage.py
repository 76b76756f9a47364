"""``appliance storage``: the tiering catalog and mover from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "storage tiers: list runs and copies, apply the policy, verify, restore, scrub"
DESCRIPTION = """\
Storage tiering and data integrity (docs/storage.md). The data root (output.root) is the hot
tier; the policy (storage.policy, or the embedded default) names the warm and cold tiers
(storage.warm / storage.cold override them) and when each data class moves. Every copy is
re-read and verified before it counts; nothing is deleted without the policy's number of
verified copies elsewhere. The catalog is <output.root>/.storage/catalog.sqlite by default.

actions:
  ls [RUN]            runs with their state and verified copies per tier, or RUN's files
  status              bytes per tier, hot free space vs watermarks, pending moves, failures
  verify RUN          re-read every copy of RUN on every tier; mismatches are repaired
                      (and copies held after mover.max_attempts failures are tried again)
  restore RUN         bring RUN back to hot (--to) from its best verified copies
  gc [--dry-run]      apply the policy once: copies, cold archives, deletes, evictions
  scrub [--sample N]  one scrub pass: re-read warm and cold copies, repair mismatches
  work                the tierer in the foreground (gc every mover.interval_s, scrubs) until
                      SIGINT/SIGTERM

Exit status: 0 done (and everything verified), 1 problems found (corrupt copies, a restore
that could not verify every file, moves that failed), 2 bad usage or configuration,
3 the catalog is busy or unusable (another mover holds it).

examples:
  appliance storage --set storage.warm=/mnt/warm --set storage.cold=/mnt/archive gc --dry-run
  appliance storage --config run.toml status
  appliance storage --config run.toml --json ls | jq '.[] | select(.state=="offloaded")'
  appliance storage --config run.toml ls 20260101_SIM01_0001_FC0001
  appliance storage --config run.toml restore 20260101_SIM01_0001_FC0001 --to hot
  appliance storage --config run.toml verify 20260101_SIM01_0001_FC0001
"""

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_BUSY = 0, 1, 2, 3


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="the run config (TOML) with [output] root and [storage]")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="a config override, e.g. storage.warm=/mnt/warm (repeatable)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("ls", help="runs with their tiers and states, or one run's files")
    p.add_argument("run", nargs="?", metavar="RUN")
    sub.add_parser("status", help="bytes per tier, free space vs watermarks, pending moves, failures")
    p = sub.add_parser("verify", help="re-read every copy of a run; retry its held copies")
    p.add_argument("run", metavar="RUN")
    p = sub.add_parser("restore", help="bring a run back from its best verified copies")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--to", default="hot", choices=("hot", "warm"), help="target tier (default hot)")
    p = sub.add_parser("gc", help="apply the policy once")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p = sub.add_parser("scrub", help="one scrub pass now")
    p.add_argument("--sample", type=int, metavar="N", help="copies to re-read (default: the policy's scrub.sample)")
    sub.add_parser("work", help="run the tierer in the foreground until SIGINT/SIGTERM")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _print_human(action: str, result) -> None:
    if action == "ls" and isinstance(result, list) and (not result or "state" in result[0]):
        print(f"{'RUN':<36} {'STATE':<10} {'FILES':>6} {'SIZE':>10}  VERIFIED COPIES")
        for r in result:
            tiers = " ".join(f"{t}={n}" for t, n in r["verified"].items())
            bad = f"  CORRUPT={r['corrupt']}" if r["corrupt"] else ""
            print(f"{r['run']:<36} {r['state']:<10} {r['files']:>6} {_size(r['bytes']):>10}  {tiers}{bad}")
    elif action == "ls":
        for f in result:
            copies = " ".join(f"{t}:{c['state']}" for t, c in f["copies"].items())
            print(f"{f['rel']:<64} {f['class']:<12} {_size(f['size']):>10}  {copies}")
    elif action == "status":
        for tier, t in result["tiers"].items():
            free = f", fs free {_size(t['free_bytes'])} of {_size(t['total_bytes'])}" if t["free_bytes"] is not None else ""
            print(f"{tier:<5} {t['url']}: {t['files']} verified files, {_size(t['bytes'])}{free}" + (f", {t['corrupt_files']} corrupt" if t["corrupt_files"] else ""))
        wm = result["watermarks"]
        print(f"hot free {result['hot_free_fraction']:.1%} (high watermark {wm['high']:.0%}, critical {wm['critical']:.0%}): {result['level']}")
        print(f"pending moves {result['pending_moves']}, verification failures {result['verification_failures']}, corrupt copies {result['corrupt_copies']}"
              + (f" ({result['held_copies']} held: `appliance storage verify RUN` retries them)" if result.get("held_copies") else ""))
        for ev in result["recent_failures"]:
            print(f"  failure: {ev['message']}")
    else:
        print(json.dumps(result, indent=2, default=str))


def _problems(action: str, result) -> bool:
    if action in ("verify", "restore"):
        return not result["ok"]
    if action == "gc":
        return bool(result.get("errors")) or bool(result.get("repaired", {}).get("unrepairable"))
    if action == "scrub":
        return bool(result["unrepairable"])
    return False


def _work(manager) -> int:
    import signal
    import threading

    stop = threading.Event()

    def on_signal(signum, frame):  # only sets an event
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        manager.start()
        print(f"storage tierer running on {manager.root} (catalog {manager.catalog_path}); SIGINT/SIGTERM stops it", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        manager.stop()
        for s, h in old.items():
            signal.signal(s, h)
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    from appliance.config import ConfigError, load_config
    from appliance.storage import CatalogError, StorageError, StorageManager

    try:
        config = load_config(args.config, args.overrides)
        manager = StorageManager.from_config(config)
    except (ConfigError, ValueError) as exc:
        print(f"appliance storage: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CatalogError as exc:
        print(f"appliance storage: {exc}", file=sys.stderr)
        return EXIT_BUSY
    try:
        if args.action == "work":
            return _work(manager)
        if args.action == "ls":
            result = manager.ls(args.run)
        elif args.action == "status":
            result = manager.status()
        elif args.action == "verify":
            result = manager.verify(args.run)
        elif args.action == "restore":
            result = manager.restore(args.run, args.to)
        elif args.action == "gc":
            result = manager.gc(dry_run=args.dry_run)
        else:
            result = manager.scrub(args.sample)
    except StorageError as exc:
        msg = str(exc)
        if args.json:
            print(json.dumps({"error": msg}))
        else:
            print(f"appliance storage: {msg}", file=sys.stderr)
        return EXIT_BUSY if "another mover" in msg else EXIT_PROBLEMS
    finally:
        manager.close()
    if args.json:
        print(json.dumps(result, default=str))
    else:
        _print_human(args.action, result)
    return EXIT_PROBLEMS if _problems(args.action, result) else EXIT_OK
