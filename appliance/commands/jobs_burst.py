"""``appliance jobs burst``: the burst policy's decision log, and its simulation over a load trace.

Registered by ``appliance/commands/jobs.py`` (the ``burst`` verb); see docs/burst.md.

  appliance jobs burst --explain [--decision-log FILE] [--limit N]
      the last decisions, each with its inputs (waiting work per class, local cores, spend)
      and its reason
  appliance jobs burst trace [--instruments N] [--hours H] [--seed S] > day.json
      a synthetic load trace: N instruments running back to back over H hours
  appliance jobs burst simulate TRACE [--policy FILE] [--decision-log FILE] [--plot FILE.png]
      replay TRACE (JSON, as `trace` writes it) through the policy, and through the two
      baselines (never burst, burst at once); print SLO misses, cloud core-hours, egress and
      cost of each. The simulated decisions go to <root>/.offload/burst-simulation.jsonl (or
      --decision-log), never into the live decision log; --plot draws the waiting jobs, the
      cloud slots held and the spend over the trace for the three.

--policy FILE is a TOML file with a [burst] table (slo_s, daily_budget, core_hour_price,
egress_per_gb, slot_cores, max_slots, enter_ratio, exit_ratio, min_dwell_s, allow_reprocess,
startup_s); without it the built-in defaults apply.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

EXIT_OK, EXIT_USAGE = 0, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``burst`` verb's options (added to ``appliance jobs``)."""
    g = parser.add_argument_group("burst (appliance jobs burst --explain | trace | simulate TRACE; docs/burst.md)")
    g.add_argument("--explain", action="store_true", help="burst: print the decision log, each decision with its inputs and reason")
    g.add_argument("--policy", type=Path, help="burst: a TOML file with a [burst] table (default: the built-in policy)")
    g.add_argument("--decision-log", type=Path, help="burst: the decision log (default: the live one, <root>/.offload/"
                   "burst-decisions.jsonl; for simulate, <root>/.offload/burst-simulation.jsonl)")
    g.add_argument("--plot", type=Path, help="burst simulate: also draw the simulation into this PNG")
    g.add_argument("--instruments", type=int, default=4, help="burst trace: instruments (default 4)")
    g.add_argument("--hours", type=float, default=24.0, help="burst trace: hours (default 24)")
    g.add_argument("--seed", type=int, default=0, help="burst trace: random seed (default 0)")


def _policy(path: Path | None):
    from appliance.offload.burst import load_burst

    if path is None:
        return load_burst(None)
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"--policy {path}: {exc}") from None
    return load_burst(doc.get("burst", {}))


def _log_path(args, name: str = "burst-decisions.jsonl") -> Path:
    if args.decision_log:
        return args.decision_log
    root = args.root
    if root is None:
        from appliance.config import load_config

        root = Path(load_config(args.config, args.overrides).output.root)
    return Path(root) / ".offload" / name


def plot(timelines: dict, result: dict, path: Path, title: str) -> None:
    """Three panels over the trace's time: jobs waiting (realtime and batch) under the policy and
    never bursting; cloud slots held under the policy and bursting at once; money spent."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 7.5), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 1, sharex=True)
    style = {"policy": "-", "never": ":", "at_once": "--"}
    for mode in ("policy", "never"):
        tl = timelines[mode]
        h = [p["t"] / 3600 for p in tl]
        for cls, colour in (("realtime", "tab:red"), ("batch", "tab:blue")):
            axes[0].plot(h, [p["waiting"][cls] for p in tl], style[mode], color=colour,
                         label=f"{cls}, {mode} ({result[mode]['slo_misses'][cls]} SLO misses)")
    axes[0].set_ylabel("jobs waiting")
    axes[0].legend(fontsize=7, loc="upper left")
    for mode in ("policy", "at_once"):
        tl = timelines[mode]
        axes[1].step([p["t"] / 3600 for p in tl], [p["slots"] for p in tl], style[mode], where="post", label=mode)
        axes[2].plot([p["t"] / 3600 for p in tl], [p["spent"] for p in tl], style[mode], label=f"{mode} ({result[mode]['cost']:.2f})")
    axes[1].set_ylabel("cloud slots held")
    axes[1].legend(fontsize=7, loc="upper left")
    axes[2].set_ylabel("spent (cumulative)")
    axes[2].set_xlabel("hours into the trace")
    axes[2].legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")


def _table(name: str, r: dict) -> str:
    m = r["slo_misses"]
    return (f"{name:<9} {m['realtime']:>8} {m['batch']:>6} {m['reprocess']:>9} {r['cloud_jobs']:>7} "
            f"{r['cloud_core_hours']:>10.1f} {r['egress_gb']:>9.1f} {r['cost']:>9.2f}")


def run_burst(args: argparse.Namespace) -> int:
    from appliance.config import ConfigError
    from appliance.offload.burst import compare, read_log, synthetic_trace, write_log

    try:
        sub = args.args[0] if args.args else ""
        if args.explain:
            path = _log_path(args)
            records = read_log(path, args.limit)
            if args.json:
                print(json.dumps(records))
                return EXIT_OK
            if not records:
                print(f"no burst decisions in {path} yet (appliance jobs burst simulate TRACE writes some)")
                return EXIT_OK
            for r in records:
                w = r["inputs"]["waiting"]
                load = ", ".join(f"{c} {v['jobs']} jobs {v['cpu_hours']:.1f} CPU-h oldest {v['oldest_s'] / 60:.0f} min"
                                 for c, v in w.items()) or "nothing waiting"
                print(f"t={r['at']:>9.0f}s slots={r['slots']:<3} classes={','.join(r['classes']) or '-':<17} {r['reason']}")
                print(f"{'':>12} inputs: {load}; local cores {r['inputs']['local_cores']:g}, "
                      f"spent today {r['inputs']['spent_today']:.2f}")
                for a in r["alerts"]:
                    print(f"{'':>12} alert {a['action']}: {a['message']}")
            return EXIT_OK
        if sub == "trace":
            if args.instruments < 1 or args.hours <= 0:
                raise ValueError("--instruments must be >= 1 and --hours > 0")
            print(json.dumps(synthetic_trace(args.instruments, args.hours, args.seed), indent=1))
            return EXIT_OK
        if sub == "simulate":
            if len(args.args) != 2:
                raise ValueError("simulate takes one TRACE file: appliance jobs burst simulate day.json "
                                 "(make one with appliance jobs burst trace > day.json)")
            try:
                trace = json.loads(Path(args.args[1]).read_text())
            except (OSError, ValueError) as exc:
                raise ValueError(f"trace {args.args[1]}: {exc}") from None
            cfg = _policy(args.policy)
            log: list[dict] = []
            timelines: dict = {}
            result = compare(trace, cfg, log, timelines)
            if args.plot:
                plot(timelines, result, args.plot, f"{Path(args.args[1]).name}: {sum(result['never']['jobs'].values())} jobs, "
                     f"budget {cfg.daily_budget:g}/day")
                result["plot"] = str(args.plot)
            path = _log_path(args, "burst-simulation.jsonl")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")
            for rec in log:
                write_log(path, rec)
            result["decisions"] = len(log)
            result["decision_log"] = str(path)
            if args.json:
                print(json.dumps(result))
                return EXIT_OK
            print(f"trace {args.args[1]}: {sum(result['never']['jobs'].values())} jobs; budget {cfg.daily_budget:g}/day, "
                  f"SLO {', '.join(f'{c} {s / 60:g} min' for c, s in cfg.slo_s.items())}")
            print(f"{'':<9} {'SLO misses':^26} {'cloud':>7} {'core-h':>10} {'egress GB':>9} {'cost':>9}")
            print(f"{'':<9} {'realtime':>8} {'batch':>6} {'reprocess':>9} {'jobs':>7}")
            for name in ("policy", "never", "at_once"):
                print(_table(name, result[name]))
            print(f"{len(log)} decisions in {path} (appliance jobs burst --explain --decision-log {path})")
            if args.plot:
                print(f"plot: {args.plot}")
            return EXIT_OK
        raise ValueError("burst needs --explain, `trace` or `simulate TRACE` (appliance jobs --help)")
    except (ValueError, ConfigError) as exc:
        print(f"appliance jobs burst: {exc}", file=sys.stderr)
        return EXIT_USAGE
