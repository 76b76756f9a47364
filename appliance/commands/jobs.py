"""``appliance jobs``: inspect and steer the offload job ledger, or run the orchestrator."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

HELP = "offload jobs: list, show, submit, retry, requeue, cancel, stats; `work` runs the orchestrator"
DESCRIPTION = """\
Work on the offload job ledger (safe while the appliance runs) or run the orchestrator.
The ledger is <output.root>/.offload/ledger.sqlite unless offload.ledger says otherwise: another
file, or the lab's PostgreSQL database (postgresql://USER@HOST/DB, docs/lab.md); --root names the
data root, --ledger the file or URL, --config/--set the run config that names either.
See docs/offload.md.

verbs:
  ls       jobs, newest first (--state, --kind, --class, --run, --limit)
  show     one job with its history (every state change, when and why) and its transfers (from
           <root>/.offload/transfers.sqlite: direction, destination, state, bytes, verification)
  submit   submit a job: KIND [key=value ...] (idempotent: the same job twice returns the first)
  retry    run a retrying job now, or give a held job one more attempt
  requeue  held or cancelled -> queued, attempts reset
  cancel   cancel a job that has not succeeded
  stats    queue depth per class, running, held, recent failures, backpressure
  pools    each compute pool ([offload.pools], docs/offload.md): kind, slots used/free, pending
           Slurm jobs, the backlog it serves (live figures from the running orchestrator's
           <root>/.offload/pools.json, at most 30 s old; "-" when none is running)
  work     run the orchestrator in the foreground until SIGINT/SIGTERM (drains: running jobs
           finish, or are released back to the queue after --drain-s); --no-scan: only run the
           ledger's jobs (a lab's pool, the instruments submitting with offload.dispatch = false)
  burst    the cloud burst policy: --explain (its decision log), trace (a synthetic day of
           load), simulate TRACE (the policy vs never / at-once bursting; docs/burst.md)

Exit status: 0 ok, 1 the ledger refused (no such job, wrong state, admission refused),
2 bad usage or config, 3 the ledger cannot be opened.

examples:
  appliance jobs ls --state held
  appliance jobs show 42
  appliance jobs requeue 42
  appliance jobs submit fastq run=260101_SIM01_0001_FC0001
  appliance jobs submit reprocess run=260101_SIM01_0001_FC0001 --algorithm chain --version 2
  appliance jobs stats --json
  appliance jobs pools --json
  appliance jobs work --root /data/runs
  appliance jobs work --root /lab/runs --ledger 'postgresql:///lab?host=/run/postgresql' --no-scan
  appliance jobs ls --ledger 'postgresql:///lab?host=/run/postgresql'
"""

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_LEDGER = 0, 1, 2, 3
VERBS = ("ls", "show", "submit", "retry", "requeue", "cancel", "stats", "work", "burst", "pools")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("verb", choices=VERBS, metavar="VERB", help=" | ".join(VERBS))
    parser.add_argument("args", nargs="*", metavar="ARG", help="job id (show, retry, requeue, cancel); KIND key=value ... (submit)")
    parser.add_argument("--root", type=Path, help="data root (default: output.root of the config)")
    parser.add_argument("--ledger", help="the ledger file or PostgreSQL URL (default: offload.ledger or <root>/.offload/ledger.sqlite)")
    parser.add_argument("--config", type=Path, help="run config (TOML)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--state", help="ls: only jobs in this state")
    parser.add_argument("--kind", help="ls: only jobs of this kind")
    parser.add_argument("--run", help="ls: only the jobs of this run")
    parser.add_argument("--class", dest="cls", help="ls: only this priority class; submit: the class (default: the kind's)")
    parser.add_argument("--limit", type=int, default=50, help="ls: at most this many (default 50)")
    parser.add_argument("--depends-on", type=int, help="submit: a job that must succeed first")
    parser.add_argument("--algorithm", help="submit: the algorithm a reprocess job runs (appliance algo ls)")
    parser.add_argument("--version", help="submit: the algorithm's version")
    parser.add_argument("--reason", help="cancel: why (recorded in the history)")
    parser.add_argument("--drain-s", type=float, default=30.0, help="work: seconds running jobs get to finish at stop (default 30)")
    parser.add_argument("--no-scan", dest="scan", action="store_false",
                        help="work: only run the ledger's jobs, submit none (the instruments submit theirs: a lab's pool)")
    from appliance.commands.jobs_burst import add_arguments as _burst_arguments

    _burst_arguments(parser)


def _print(args, result) -> None:
    if args.json:
        print(json.dumps(result, default=str))
        return
    if args.verb == "ls":
        print(f"{'ID':>6} {'KIND':<12} {'CLASS':<9} {'STATE':<9} {'TRIES':>5} {'AGE':>8}  {'INSTRUMENT':<10} RUN / ERROR")
        for j in result["jobs"]:
            tail = j["run"] or ""
            if j["error"]:
                tail = f"{tail} {j['error']}".strip()
            print(f"{j['id']:>6} {j['kind']:<12} {j['class']:<9} {j['state']:<9} {j['attempts']:>2}/{j['max_attempts']:<2} "
                  f"{j['age_s']:>7.0f}s  {(j.get('instrument') or '-'):<10} {tail[:80]}")
    elif args.verb == "show":
        for k, v in result["job"].items():
            print(f"{k:<16} {v}")
        print("history:")
        for e in result["events"]:
            span = f"  trace {e['trace_id']} span {e['span_id']}" if e.get("span_id") else ""
            print(f"  {e['at']:.3f} {e['from_state'] or '-':>9} -> {e['to_state']:<9} {e['owner'] or '':<20} {e['reason']}{span}")
        if result.get("transfers"):
            print("transfers:")
            for t in result["transfers"]:
                print(_transfer_line(t))
    else:
        print(json.dumps(result, indent=2, default=str))


def _mb(n) -> str:
    return f"{(n or 0) / 1e6:.1f} MB"


def _transfer_line(t: dict) -> str:
    """One transfer of ``jobs show``: direction, destination, state, bytes, time, verification."""
    line = (f"  {t['direction']:<7} {t['destination']}/{t['subject']}  {t['state']:<8} sent {_mb(t['bytes_sent'])}"
            f"  re-read {_mb(t['bytes_reread'])}  egress {_mb(t['egress_bytes'])}  {t['duration_s']:.1f} s"
            f"  {t['verification'] or '-'}  attempts {t['attempts']}")
    return line + (f"\n          error: {t['error']}" if t.get("error") else "")


def _job_transfers(root: Path, job_id: int) -> list[dict]:
    """The job's transfers from the data root's transfer journal (appliance.transfer), read-only;
    none when nothing was ever transferred (no journal file)."""
    from appliance.transfer import TransferError, default_journal_path, read_transfers

    try:
        return read_transfers(default_journal_path(root), job_id=job_id)
    except TransferError as exc:  # the job is still shown; the journal's problem is said
        print(f"appliance jobs: {exc}", file=sys.stderr)
        return []


def _pools(args, off, root: Path, ledger) -> int:
    import time

    from appliance.offload.config import CLASSES
    from appliance.offload.pools import default_pool, pools_view, read_status, status_path

    pools = off.pools or {"default": default_pool(off.executor, off.workers, off.dask_address)}
    stats = ledger.stats()
    backlog = {c: int(stats["classes"][c].get("queued", 0)) + int(stats["classes"][c].get("retrying", 0)) for c in CLASSES}
    view = pools_view(pools, backlog, read_status(status_path(root)), time.time())
    if args.json:
        print(json.dumps(view))
        return EXIT_OK
    print(f"{'POOL':<12} {'KIND':<6} {'USED':>4} {'FREE':>4} {'SLOTS':>5} {'MAX':>4} {'PENDING':>7} {'BACKLOG':>7}  CLASSES / READS")
    dash = lambda v: "-" if v is None else str(v)  # noqa: E731
    for r in view["pools"]:
        print(f"{r['pool']:<12} {r['kind']:<6} {dash(r['used']):>4} {dash(r['free']):>4} {dash(r['slots']):>5} {r['max_slots']:>4} "
              f"{dash(r['pending_jobs']):>7} {r['backlog']:>7}  {','.join(r['classes'])} / {','.join(r['reads'])}"
              + (f"  STARVED {r['starved_s']:.0f} s" if r.get("starved_s") else ""))
    if not view["live"]:
        age = view["status_age_s"]
        print("(no live figures: no orchestrator has written " + str(status_path(root))
              + (f" for {age:.0f} s" if age is not None else "") + "; start one with `appliance jobs work`)")
    return EXIT_OK


def _submit_args(items: list[str]) -> tuple[str, dict]:
    if not items:
        raise ValueError("submit needs a KIND, e.g. appliance jobs submit fastq run=RUN_ID")
    params = {}
    for item in items[1:]:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise ValueError(f"argument {item!r} is not key=value")
        try:
            params[k] = json.loads(v)
        except json.JSONDecodeError:
            params[k] = v
    return items[0], params


def run(args: argparse.Namespace) -> int:
    if args.verb == "burst":
        from appliance.commands.jobs_burst import run_burst

        return run_burst(args)
    from appliance.config import ConfigError, load_config
    from appliance.control import CommandError
    from appliance.offload import LedgerError, Orchestrator
    from appliance.offload.control import control_commands
    from appliance.offload.kinds import load_plugins
    from appliance.offload.ledger import Ledger

    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"appliance jobs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    off = config.offload
    root = args.root or Path(config.output.root)
    ledger_path = args.ledger or off.ledger_target(root)
    is_pg = str(ledger_path).startswith(("postgresql://", "postgres://"))
    try:
        load_plugins(off.plugins)
    except ImportError as exc:
        print(f"appliance jobs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.verb == "work":
        import dataclasses

        if args.ledger:
            off = dataclasses.replace(off, ledger=str(args.ledger))
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        try:
            orch = Orchestrator(off, root, scan=args.scan, tracing=config.tracing)
        except LedgerError as exc:
            print(f"appliance jobs: {exc}", file=sys.stderr)
            return EXIT_LEDGER
        print(f"appliance jobs work: {root} ledger {orch.ledger.path} executor {orch.executor.name} "
              f"({orch.executor.capacity} slots); Ctrl-C drains and stops", file=sys.stderr, flush=True)
        orch.run_until(stop, timeout=args.drain_s)
        return EXIT_OK
    if args.verb != "stats" and not is_pg and not Path(ledger_path).exists():
        print(f"appliance jobs: no ledger at {ledger_path}: pass --root DATA_ROOT or --ledger FILE "
              "(the orchestrator creates it on first start)", file=sys.stderr)
        return EXIT_LEDGER
    try:
        ledger = Ledger(ledger_path, config=off)
    except LedgerError as exc:
        print(f"appliance jobs: {exc}", file=sys.stderr)
        return EXIT_LEDGER
    if args.verb == "pools":
        with ledger:
            return _pools(args, off, root, ledger)
    with ledger:
        commands = control_commands(ledger, root)
        try:
            if args.verb == "ls":
                a = {"state": args.state, "kind": args.kind, "class": args.cls, "run": args.run, "limit": args.limit}
                a = {k: v for k, v in a.items() if v is not None}
            elif args.verb == "submit":
                kind, params = _submit_args(args.args)
                a = {"kind": kind, "params": params}
                if args.cls:
                    a["class"] = args.cls
                if args.depends_on is not None:
                    a["depends_on"] = args.depends_on
                if args.algorithm or args.version:
                    a["algorithm"], a["version"] = args.algorithm, args.version
            elif args.verb == "stats":
                a = {}
            else:
                if len(args.args) != 1 or not args.args[0].isdigit():
                    raise ValueError(f"{args.verb} takes one job id, e.g. appliance jobs {args.verb} 42")
                a = {"id": int(args.args[0])}
                if args.verb == "cancel" and args.reason:
                    a["reason"] = args.reason
            cmd = commands[f"jobs.{args.verb}"]
            cmd.validate(a)
            result = cmd(a)
            if args.verb == "show":
                result["transfers"] = _job_transfers(root, a["id"])
        except ValueError as exc:
            print(f"appliance jobs: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except CommandError as exc:
            if args.json:
                print(json.dumps({"error": {"code": exc.code, "message": exc.message}}))
            else:
                print(f"appliance jobs: {exc.code}: {exc.message}", file=sys.stderr)
            return EXIT_USAGE if exc.code == "bad_args" else EXIT_REFUSED
        _print(args, result)
    return EXIT_OK
