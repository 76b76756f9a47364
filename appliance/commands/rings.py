"""``appliance rings``: the rings on this host, their owners and statistics."""

from __future__ import annotations

import argparse
import dataclasses
import json

HELP = "list the shared-memory rings (and runs' status blocks) on this host with their owners and statistics"
DESCRIPTION = """\
List every appliance ring in /dev/shm and on hugetlbfs mounts, read from each ring's control
block without touching its data path: geometry, policy and wait strategy, frames written and
read, occupancy and peak, drops, full/empty waits, producer and consumer pids (and whether
they are alive) and heartbeat ages. A ring whose owner and peers are all dead is stale:
`appliance clean` removes it.

Below the rings, each run's status block (one per running supervisor): per stage process its
pid, state (starting, prerendering, running, disk_full, finished, stopped), incarnation (1 +
its restarts), frames in and out, as the stage published them on its last frame. With
--json a status block is an object with "kind": "status_block" and its "records".

examples:
  appliance rings
  appliance rings --json | jq '.[] | select(.drops > 0)'
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON (one object per ring)")


def run(args: argparse.Namespace) -> int:
    import rt

    rows = []
    for name, path in rt.list_rings():
        try:
            stats = rt.inspect(name)
        except rt.RingError as exc:
            rows.append({"name": name, "path": str(path), "error": str(exc)})
            continue
        st = dataclasses.asdict(stats)
        st["path"] = str(path)
        st["stale"] = rt.is_stale(stats)
        rows.append(st)
    blocks = []
    for name in rt.list_status_blocks():
        try:
            with rt.StatusBlock.attach(name) as block:
                st = block.statistics()
                records = [{"index": r.index, "pid": r.pid, "state": r.state.name.lower(), "incarnation": r.incarnation,
                            "frames_in": r.frames_in, "frames_out": r.frames_out, "checkpoints": r.checkpoints,
                            "events": r.events_written} for r in block.read_all()]
        except (rt.RingError, OSError) as exc:
            blocks.append({"kind": "status_block", "name": name, "error": str(exc)})
            continue
        blocks.append({"kind": "status_block", "name": name, "owner_pid": st.owner_pid, "stale": not st.owner_alive,
                       "records": records})
    if args.json:
        print(json.dumps(rows + blocks, indent=2))
        return 0
    if not rows and not blocks:
        print("no rings")
        return 0
    print(f"{'name':<40} {'slots':>6} {'occ':>5} {'peak':>5} {'written':>10} {'drops':>7} {'producer':>10} {'consumer':>10}  state")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<40} error: {r['error']}")
            continue
        prod = f"{r['producer_pid']}{'' if r['producer_alive'] else '†'}" if r["producer_pid"] else "-"
        cons = f"{r['consumer_pid']}{'' if r['consumer_alive'] else '†'}" if r["consumer_pid"] else "-"
        state = "stale" if r["stale"] else ("eos" if r["end_of_stream"] else "live")
        print(f"{r['name']:<40} {r['n_slots']:>6} {r['occupancy']:>5} {r['peak_occupancy']:>5} {r['written']:>10} {r['drops']:>7} {prod:>10} {cons:>10}  {state}")
    for b in blocks:
        if "error" in b:
            print(f"\nstatus block {b['name']}: error: {b['error']}")
            continue
        print(f"\nstatus block {b['name']} (owner {b['owner_pid']}{'†, stale' if b['stale'] else ''})")
        print(f"  {'record':>6} {'pid':>8} {'state':<13} {'incarnation':>11} {'frames in':>10} {'frames out':>10}")
        for r in b["records"]:
            print(f"  {r['index']:>6} {r['pid'] or '-':>8} {r['state']:<13} {r['incarnation']:>11} {r['frames_in']:>10} {r['frames_out']:>10}")
    print("\n† = process dead")
    return 0
