"""``appliance incident``: the incident bundle of a run (``-o FILE.tar.zst``), or one replayed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "an incident bundle of a run for a post-mortem (config, stats, alerts, logs, jobs, host), secrets redacted; --replay one"
DESCRIPTION = """\
`appliance incident [RUN] -o FILE.tar.zst` collects what a post-mortem of one run needs into
one zstd-compressed tar, written atomically: the run's config and pinned algorithm, its
summaries, stats.jsonl and RunCompletionStatus.xml, the flight recorder's stats and events of
the run's time span, the alerts and the JSON log lines around them (and the journal's entries
with the run's RUN_ID), the ledger's history of the run's jobs, `appliance topology` and
`sysconfig verify` of this host, ring statistics, the traces and any profiles taken
(STATE/RUN/profiles/). MANIFEST.json lists every member with its size and sha256, and what was
not available and why; a part that fails is recorded there and does not fail the bundle.

Secrets never go in: CURVE key files are left out, and every JSON and text member is redacted
before it is written (passwords in DSNs and URLs, values of password/secret/token/aws_* keys,
AWS access key ids, PEM blocks, 40-character Z85 CURVE keys).

RUN is a run id under output.root, a run folder (ROOT/RUN_ID) or a state folder
(ROOT/.state/RUN_ID); the default is the latest run under output.root. --config/--set are the
appliance's config (output.root, output.state_root, offload.ledger).

`appliance incident --replay FILE` extracts a bundle (into a new temporary folder, or --into
DIR), checks every member against the manifest, writes the run's HTML report from it, and
opens the run in the TUI's replay mode (--no-tui: only the report, for scripts and
headless hosts; --open: the report in a web browser). The extracted folder is left in place.

examples:
  appliance incident -o /tmp/incident.tar.zst                  the latest run under output.root
  appliance incident 251125_SIM01_0001_FC0001 -o inc.tar.zst --config /etc/appliance/appliance.toml
  appliance incident /data/runs/R1 -o inc.tar.zst --logs /var/log/appliance --json
  appliance incident --replay inc.tar.zst                      TUI replay (space holds, ] next event)
  appliance incident --replay inc.tar.zst --no-tui --json      extract, check, write the report
  tar --zstd -xOf inc.tar.zst incident-R1/MANIFEST.json | jq .missing
Exit status: 0 bundle written (or replayed), 1 it could not be written or a replayed member
differs from its manifest, 2 bad arguments or configuration, no such run, or not a bundle.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="?", metavar="RUN", help="run id, run folder or state folder (default: the latest run under output.root)")
    parser.add_argument("-o", "--output", type=Path, metavar="FILE", help="the bundle to write (FILE.tar.zst); default ./incident-RUN_ID.tar.zst")
    parser.add_argument("--config", type=Path, help="the appliance config (TOML): output.root, output.state_root, offload.ledger")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the manifest summary as JSON")
    parser.add_argument("--logs", type=Path, action="append", metavar="PATH",
                        help="JSON log file or folder of them (repeatable; default $LOGS_DIRECTORY and /var/log/appliance)")
    parser.add_argument("--no-journal", action="store_true", help="do not ask journalctl for the run's entries")
    parser.add_argument("--no-host", action="store_true", help="leave out this host's topology and sysconfig verify")
    parser.add_argument("--profile", metavar="NAME", help="sysconfig profile to verify the host against (default supervisor.sysconfig_profile, else instrument)")
    rep = parser.add_argument_group("replay")
    rep.add_argument("--replay", type=Path, metavar="FILE", help="extract bundle FILE and open it: the report, then the TUI's replay")
    rep.add_argument("--into", type=Path, metavar="DIR", help="extract into DIR (default a new temporary folder)")
    rep.add_argument("--no-tui", "--report-only", dest="no_tui", action="store_true", help="only extract, check and write the report (headless)")
    rep.add_argument("--open", action="store_true", help="open the report in the default web browser")
    rep.add_argument("--speed", type=float, default=1.0, metavar="X", help="TUI replay speed, times real time (default 1; 0 = as fast as possible)")


def _summary(bundle) -> dict:
    m = bundle.manifest
    return {
        "bundle": str(bundle.path),
        "run_id": m["run_id"],
        "members": len(m["members"]),
        "bytes": bundle.path.stat().st_size if bundle.path else None,
        "redactions": m["redactions"],
        "parts": m["parts"],
        "missing": m["missing"],
    }


def _replay(args: argparse.Namespace) -> int:
    from appliance.incident import IncidentError, open_bundle
    from appliance.report import ReportError, write_report

    try:
        bundle = open_bundle(args.replay, args.into)
    except IncidentError as exc:
        print(f"appliance incident: {exc}", file=sys.stderr)
        return 2
    report = None
    try:
        report = write_report(bundle.run_dir, state_dir=bundle.state_dir)
    except (ReportError, OSError) as exc:
        print(f"appliance incident: no report: {exc}", file=sys.stderr)
    doc = {"folder": str(bundle.top), "run_id": bundle.manifest.get("run_id"), "run_dir": str(bundle.run_dir),
           "state_dir": str(bundle.state_dir), "report": str(report) if report else None, "problems": bundle.problems,
           "missing": bundle.missing}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"extracted {bundle.manifest.get('run_id')} into {bundle.top}")
        for p in bundle.problems:
            print(f"  problem: {p}")
        if report:
            print(f"report {report}")
    if report and args.open:
        import webbrowser

        if not webbrowser.open(report.resolve().as_uri()):
            print(f"note: no web browser found; open {report} by hand", file=sys.stderr)
    if not args.no_tui:
        from tui import ApplianceApp, ReplaySource, SourceError

        try:
            source = ReplaySource(bundle.state_dir, speed=args.speed)
        except (SourceError, ValueError) as exc:
            print(f"appliance incident: cannot replay: {exc}", file=sys.stderr)
            return 1
        ApplianceApp(source).run()
    return 1 if bundle.problems else 0


def run(args: argparse.Namespace) -> int:
    if args.replay is not None:
        if args.run or args.output:
            print("appliance incident: --replay FILE opens a bundle; RUN and -o make one: give one or the other", file=sys.stderr)
            return 2
        return _replay(args)

    from appliance.config import ConfigError, load_config
    from appliance.incident import IncidentError, collect, find_run

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"appliance incident: {exc}", file=sys.stderr)
        return 2
    try:
        ref = find_run(args.run, cfg)
    except IncidentError as exc:
        print(f"appliance incident: {exc}", file=sys.stderr)
        return 2
    out = args.output or Path(f"incident-{ref.run_id}.tar.zst")
    try:
        bundle = collect(ref, cfg, out, log_paths=args.logs, journal=not args.no_journal, host=not args.no_host,
                         sysconfig_profile=args.profile)
    except IncidentError as exc:
        print(f"appliance incident: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"appliance incident: cannot write {out}: {exc}", file=sys.stderr)
        return 1
    summary = _summary(bundle)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    print(f"{out}: run {ref.run_id}, {summary['members']} members, {summary['bytes']} bytes, {summary['redactions']} secrets redacted")
    for row in summary["missing"]:
        print(f"  missing {row['what']}: {row['why']}")
    return 0
