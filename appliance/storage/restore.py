"""Restore: bring a run back to a tier (normally hot) from its best verified copies.

Each missing file is copied with the mover's verified-copy protocol from the best verified
copy (warm before cold; a cold copy is read out of its BagIt package, which is validated
first), then every file of the run on the target tier is re-read and checked against the
catalog (the CRC32C the run's manifest gave), and a restored complete run folder is checked
against its own manifests (``RunFolder.verify``). A restored run is pinned on hot for
``mover.restore_pin`` so the policy does not evict it straight away.
"""

from __future__ import annotations

import logging
import time

from appliance.storage.mover import TIER_PREFERENCE, MoveError, _checksum

__all__ = ["restore"]

log = logging.getLogger("appliance.storage")


def restore(manager, run: str, to: str = "hot") -> dict:
    from appliance.storage.errors import StorageError

    if to not in ("hot", "warm") or to not in manager.stores:
        raise StorageError(f"cannot restore to {to!r}: restore brings a run back to hot (or warm, if configured: {', '.join(manager.stores)}); cold archives are written by the policy")
    files = manager.catalog.files(run)
    if not files:
        raise StorageError(f"run {run!r} is not in the catalog {manager.catalog_path}; `appliance storage ls` lists the runs")
    copies = manager.catalog.all_copies(run)
    bag_problems = []
    if "cold" in manager.stores and to != "cold":
        needs_cold = {f.data_class for f in files
                      if copies.get(f.id, {}).get(to, None) is None or copies[f.id][to].state != "verified"}
        for cls in sorted(needs_cold):
            if any(copies.get(f.id, {}).get("cold") is not None for f in files if f.data_class == cls):
                bag_problems += manager.mover.validate_bag(run, cls)
    if to == "hot":  # pin first, so a tierer pass meanwhile does not evict what comes back
        manager.catalog.pin(run, time.time() + manager.policy.restore_pin_s)
    restored = already = 0
    moved_bytes = 0
    failed = []
    store = manager.stores[to]
    for f in files:
        cs = manager.catalog.copies(f.id)
        c = cs.get(to)
        if c is not None and c.state == "verified" and store.size(c.url) == f.size:
            already += 1
            continue
        tried: list[str] = []
        ok = False
        for src in TIER_PREFERENCE:
            if src == to or src not in manager.stores or cs.get(src) is None or cs[src].state != "verified":
                continue
            try:
                manager.mover.copy(f, src, to, dst_rel=f.rel)
                ok = True
                break
            except MoveError as exc:
                tried.append(f"{src}: {exc}")
                cs = manager.catalog.copies(f.id)
        if ok:
            restored += 1
            moved_bytes += f.size
        else:
            failed.append({"rel": f.rel, "why": "; ".join(tried) or "no verified copy on any tier"})
    mismatched = []
    for f in files:
        c = manager.catalog.copies(f.id).get(to)
        if c is None or c.state != "verified":
            continue
        store.drop_cache(c.url)
        try:
            got = _checksum(store, c.url)
        except FileNotFoundError:
            got = (-1, "missing")
        if got != (f.size, f.crc32c):
            manager.catalog.set_copy(f.id, to, "corrupt", error=f"after restore: {got}")
            mismatched.append({"rel": f.rel, "got": list(got), "expected": [f.size, f.crc32c]})
        else:
            manager.catalog.set_copy(f.id, to, "verified", verified=True)
    folder_problems: list[str] = []
    run_info = manager.catalog.run(run)
    if to == "hot" and not failed and run_info and run_info["complete"]:
        # the restored run folder against its own manifests (RunFolder.verify), as a reader sees it
        from appliance.runfolder import RunFolder

        folder_problems = RunFolder(manager.root / run).verify()
    result = {"run": run, "to": to, "files": len(files), "restored": restored, "already": already, "bytes": moved_bytes,
              "failed": failed, "mismatched": mismatched, "bag_problems": bag_problems, "folder_problems": folder_problems,
              "ok": not failed and not mismatched and not folder_problems}
    if result["ok"]:
        manager.catalog.event("restored", f"run {run} restored to {to}: {restored} files copied, {already} already there, all verified", run=run, tier=to)
    return result
