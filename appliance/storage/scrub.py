"""Scrubbing: re-read a sample of warm and cold copies, least recently verified first.

A copy whose bytes no longer match the catalog's CRC32C (or that is gone) is marked
``corrupt``, raises ``storage_verify_failed`` and is recopied from a good copy on another
tier (inside its BagIt package for cold, which is validated again afterwards).

Each verification (``verify_run``, and a scrub's re-reads of one run) and each repair (a
move) is a span of the run's trace when tracing is on (``manager.span``, appliance.tracing).
"""

from __future__ import annotations

import logging

from appliance.storage.catalog import CopyRow, FileRow
from appliance.storage.mover import MoveError, _checksum, move_outcome

__all__ = ["scrub", "repair", "repair_all", "verify_run", "check_copy"]

log = logging.getLogger("appliance.storage")


def check_copy(manager, f: FileRow, c: CopyRow) -> str | None:
    """Re-read one copy from its storage; None when it matches, else what is wrong (the copy
    is then marked corrupt and the failure reported)."""
    store = manager.stores[c.tier]
    store.drop_cache(c.url)
    try:
        size, crc = _checksum(store, c.url)
    except (FileNotFoundError, OSError) as exc:
        problem = f"unreadable ({exc.__class__.__name__}: {exc})" if not isinstance(exc, FileNotFoundError) else "missing"
    else:
        if (size, crc) == (f.size, f.crc32c):
            manager.catalog.set_copy(f.id, c.tier, "verified", verified=True, error=None)
            return None
        problem = f"{size} bytes CRC32C {crc}, the catalog says {f.size} bytes {f.crc32c}"
    manager.catalog.set_copy(f.id, c.tier, "corrupt", error=problem)
    manager.mover.report("verify_failed", f"{store.display(c.url)}: the {c.tier} copy of {f.rel} is {problem}; marked corrupt", run=f.run, rel=f.rel, tier=c.tier)
    return problem


def repair(manager, f: FileRow, tier: str) -> bool:
    """Recopy the corrupt ``tier`` copy of ``f`` from a good copy; True when repaired."""
    copies = manager.catalog.copies(f.id)
    c = copies[tier]
    tried = []
    while True:
        src = manager.mover.best_source(f, copies, exclude=(tier, *tried))
        if src is None:
            log.error("%s: no good copy left to repair the %s copy from (tried %s)", f.rel, tier, tried or "none")
            return False
        with manager.move_span(f.run, src, tier, **{"storage.reason": "repair", "storage.rel": f.rel}) as span:
            outcome = _repair_from(manager, f, src, tier, c.url)
            ok = outcome is None
            span.set_attributes(move_outcome(f.size if ok else 0, int(ok), int(not ok), outcome or ""))
        if outcome is None:
            return True
        if outcome.startswith("bag:"):
            return False
        tried.append(src)
        copies = manager.catalog.copies(f.id)


def _repair_from(manager, f: FileRow, src: str, tier: str, url: str) -> str | None:
    """One repair of ``tier``'s copy of ``f`` from ``src``: None when done and verified, else
    what failed (``bag: ...`` when the recopied file's BagIt package still fails)."""
    try:
        manager.mover.copy(f, src, tier, dst_rel=url)
    except MoveError as exc:
        log.warning("repair of %s on %s from %s failed: %s", f.rel, tier, src, exc)
        return f"failed: {exc}"
    if tier == "cold":
        problems = manager.mover.validate_bag(f.run, f.data_class)
        if problems:
            manager.mover.report("verify_failed", f"cold archive {f.run}/{f.data_class} still fails BagIt validation after repairing {f.rel}: {problems[0]}", run=f.run, rel=f.rel, tier="cold")
            return f"bag: {problems[0]}"
    manager.mover.report("repaired", f"{f.rel}: the {tier} copy was recopied from {src} and verified", run=f.run, rel=f.rel, tier=tier)
    return None


def repair_all(manager) -> dict[str, int]:
    """Repair every copy marked corrupt that has a good copy elsewhere.

    A copy that has failed ``mover.max_attempts`` copies since it was last verified is
    *held*: it is not tried again on every pass (a failing disk would be rewritten and
    alerted on forever). Reaching the limit raises ``storage_copy_held`` once; an operator's
    ``appliance storage verify RUN`` retries the run's held copies.
    """
    limit = manager.policy.max_attempts
    out = {"repaired": 0, "unrepairable": 0, "held": 0}
    for f, c in manager.catalog.in_state("corrupt"):
        if manager.stop_event.is_set():
            break
        if c.tier not in manager.stores:
            continue
        if c.attempts >= limit:
            out["held"] += 1
            continue
        if repair(manager, f, c.tier):
            out["repaired"] += 1
            continue
        out["unrepairable"] += 1
        now = manager.catalog.copies(f.id).get(c.tier)
        if now is not None and now.state == "corrupt" and now.attempts >= limit:
            out["held"] += 1
            manager.mover.report(
                "copy_held",
                f"{f.rel}: the {c.tier} copy failed verification {now.attempts} times (mover.max_attempts = {limit}); "
                f"no more automatic retries. Check the {c.tier} storage, then `appliance storage verify {f.run}` retries it",
                run=f.run, rel=f.rel, tier=c.tier,
            )
    return out


def scrub(manager, sample: int) -> dict:
    """Re-read ``sample`` warm and cold copies (least recently verified first), repair the bad."""
    tiers = tuple(t for t in ("warm", "cold") if t in manager.stores)
    checked, bad = 0, []
    per_run: dict[str, list] = {}  # one verification span per run of the sample
    for f, c in manager.catalog.oldest_verified(tiers, sample) if tiers else []:
        per_run.setdefault(f.run, []).append((f, c))
    for run, sampled in per_run.items():
        if manager.stop_event.is_set():
            break
        with manager.span("storage scrub", run, **{"storage.tiers": ",".join(sorted({c.tier for _, c in sampled}))}) as span:
            n = nbytes = corrupt = 0
            for f, c in sampled:
                if manager.stop_event.is_set():
                    break
                n += 1
                nbytes += f.size
                problem = check_copy(manager, f, c)
                if problem is not None:
                    corrupt += 1
                    bad.append({"rel": f.rel, "tier": c.tier, "problem": problem})
            checked += n
            span.set_attributes(_verify_outcome(nbytes, n, corrupt, len(sampled) - n))
    repaired = repair_all(manager) if bad else {"repaired": 0, "unrepairable": 0, "held": 0}
    return {"checked": checked, "corrupt": bad, **repaired}


def verify_run(manager, run: str) -> dict:
    """Re-read every copy of ``run`` (all tiers); mark, report and repair mismatches."""
    from appliance.storage.errors import StorageError

    files = manager.catalog.files(run)
    if not files:
        raise StorageError(f"run {run!r} is not in the catalog; `appliance storage ls` lists the runs")
    retried = manager.catalog.reset_attempts(run)  # an operator's verify retries held copies
    if retried:
        log.info("%s: %d held copies are tried again", run, retried)
    copies = manager.catalog.all_copies(run)
    per_tier: dict[str, dict[str, int]] = {}
    bad = []
    with manager.span("storage verify", run, **{"storage.tiers": ",".join(t for t in ("hot", "warm", "cold") if t in manager.stores)}) as span:
        nbytes = 0
        for f in files:
            for tier, c in sorted(copies.get(f.id, {}).items()):
                if c.state not in ("verified", "corrupt", "stale") or tier not in manager.stores:
                    continue
                t = per_tier.setdefault(tier, {"checked": 0, "ok": 0, "corrupt": 0})
                t["checked"] += 1
                nbytes += f.size
                problem = check_copy(manager, f, c)
                if problem is None:
                    t["ok"] += 1
                else:
                    t["corrupt"] += 1
                    bad.append({"rel": f.rel, "tier": tier, "problem": problem})
        bags = []
        if "cold" in manager.stores:
            for cls in sorted({f.data_class for f in files if copies.get(f.id, {}).get("cold") is not None}):
                bags += manager.mover.validate_bag(run, cls)
        span.set_attributes({**_verify_outcome(nbytes, sum(t["checked"] for t in per_tier.values()), len(bad), 0),
                             "storage.bag_problems": len(bags)})
        if bags and not bad:
            span.set_attributes({"storage.verified": False, "storage.outcome": f"failed: {len(bags)} BagIt problems"})
    repaired = repair_all(manager) if bad or retried else {"repaired": 0, "unrepairable": 0, "held": 0}
    return {"run": run, "tiers": per_tier, "corrupt": bad, "bag_problems": bags, **repaired, "ok": not bad and not bags}


def _verify_outcome(nbytes: int, checked: int, corrupt: int, skipped: int) -> dict:
    """A verification span's figures: bytes and copies re-read, how many did not match."""
    outcome = "ok" if not corrupt else f"failed: {corrupt} of {checked} copies corrupt"
    if skipped:
        outcome += f" (stopped, {skipped} not checked)"
    return {"storage.bytes": nbytes, "storage.files": checked, "storage.corrupt": corrupt,
            "storage.verified": checked > 0 and not corrupt and not skipped, "storage.outcome": outcome}
