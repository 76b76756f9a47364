"""The storage manager: catalogues the hot tier, applies the policy, and runs the tierer.

:class:`StorageManager` ties the policy, the catalog and the mover together: ``scan()``
catalogues what the manifests list as complete, ``plan()`` says what the policy wants done,
``gc()`` does it (copies, cold archives, deletes, evictions under the high watermark, repairs),
``scrub()``/``verify()``/``restore()`` re-read and recover, ``stats()`` is the figure set for
the TUI pane and the metrics. ``start()``/``stop()`` run the tierer: a thread that calls
``gc()`` every ``mover.interval_s`` and ``scrub()`` every ``scrub.interval``.

With ``[tracing]`` on, each move (a run's files copied from one tier to another, a class
bagged to cold, a repair, a restore) and each verification (``verify()``, a scrub's re-reads
of one run) is a span of the run's trace (appliance.tracing), written to
``<catalog folder>/traces/`` or the OTLP endpoint.

A thread, not a process: the work is file I/O and CRC32C (both release the GIL), paced by the
bandwidth limit, in the service process whose data path lives in its own stage processes; a
thread shares the catalog connection and stops promptly between chunks. ``appliance storage
work`` runs the same loop in a foreground process for hosts that want it separate.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.runfolder import COMPLETION_STATUS, checksum_file, is_temp_name
from appliance.runfolder.errors import RunFolderError
from appliance.runfolder.layout import COPY_COMPLETE, RUN_MANIFEST, RUNINFO
from appliance.storage._fs import Store
from appliance.storage.errors import StorageError
from appliance.storage.catalog import Catalog, CopyRow, FileRow
from appliance.storage.mover import BANDWIDTH_FILE, MoveError, Mover, MoverLock, move_outcome, shared_bandwidth
from appliance.storage.policy import NEVER, TIERS, Policy, classify

__all__ = ["StorageManager", "StorageError", "Action", "ALERTS"]

log = logging.getLogger("appliance.storage")

#: alert kinds this package raises (runbook entries in docs/runbook.md)
ALERTS = ("storage_verify_failed", "storage_copy_held", "hot_tier_high", "hot_tier_critical")
ANALYSED_MARKER = "align-qc/_SUCCESS.json"


@dataclass(frozen=True)
class Action:
    """One step of a plan: copy (a file to warm), archive (a run's class to cold), delete."""

    op: str
    tier: str
    run: str
    data_class: str
    rels: tuple[str, ...]
    bytes: int
    reason: str

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["files"] = len(self.rels)
        if len(self.rels) > 3:
            d["rels"] = [*self.rels[:3], f"... {len(self.rels) - 3} more"]
        return d


class StorageManager:
    """Tiering over the data root ``root`` (the hot tier) with ``policy``.

    ``on_alert(kind, message, **fields)`` receives the :data:`ALERTS`: storage_verify_failed
    and storage_copy_held (per copy), hot_tier_high and hot_tier_critical (raised on entering
    the state; a ``cleared`` field marks the way out).
    """

    def __init__(self, root: str | Path, policy: Policy, catalog_path: str | Path | None = None, *,
                 on_alert: Callable[..., None] | None = None, after_copy=None, clock: Callable[[], float] = time.time,
                 tracing=None, tracer=None) -> None:
        if policy.tiers.get("hot") and "://" in policy.tiers["hot"] and not policy.tiers["hot"].startswith("file://"):
            raise StorageError(f"tiers.hot = {policy.tiers['hot']!r}: the hot tier is the instrument's local disk; give a path or \"\" (the data root)")
        hot = policy.tiers.get("hot", "").removeprefix("file://")
        self.root = Path(hot or root).resolve()
        self.policy = policy
        self.catalog_path = Path(catalog_path) if catalog_path else self.root / ".storage" / "catalog.sqlite"
        self.catalog = Catalog(self.catalog_path)
        self.stores: dict[str, Store] = {"hot": Store(str(self.root))}
        for tier in ("warm", "cold"):
            if policy.tiers.get(tier):
                self.stores[tier] = Store(policy.tiers[tier])
        self.on_alert = on_alert
        self.clock = clock
        self._stop = threading.Event()
        self._wake = threading.Event()  #: an early pass (a run just completed)
        try:  # one limit for the mover and the host's transfers (appliance.transfer, other processes)
            bucket = shared_bandwidth(self.root, policy.bandwidth_mb_s * 1e6)
        except OSError as exc:
            log.warning("storage: the bandwidth limit is this process's only (cannot open %s: %s)",
                        self.root / ".storage" / BANDWIDTH_FILE, exc)
            bucket = None
        self.mover = Mover(self.catalog, self.stores, verified_copies=policy.verified_copies,
                           bandwidth_mb_s=policy.bandwidth_mb_s, stop=self._stop, report=self._mover_report,
                           after_copy=after_copy, staging=self.catalog_path.parent / "staging", bucket=bucket)
        self.lock = MoverLock(self.catalog_path)
        self._thread: threading.Thread | None = None
        self._level = "ok"
        self._last: dict = {"gc": None, "scrub": None, "pending": 0, "errors": 0}
        self.alerts: list[dict] = []
        #: the config's [tracing] (a tracer is made at the first span), or a ready RunTracer
        #: (``tracer``, closed by its owner): moves and verifications become spans of their run
        self.tracing = tracing
        self._tracer = tracer
        self._own_tracer = False
        self._tracer_lock = threading.Lock()

    @classmethod
    def from_config(cls, config, **kw) -> "StorageManager":
        """The manager of a run config's ``output.root`` and ``[storage]`` section."""
        st = config.storage
        kw.setdefault("tracing", getattr(config, "tracing", None))
        return cls(config.output.root, st.policy, st.catalog or None, **kw)

    def close(self) -> None:
        self.stop()
        self.catalog.close()
        with self._tracer_lock:
            tracer, self._tracer = (self._tracer, None) if self._own_tracer else (None, self._tracer)
        if tracer is not None:
            tracer.close()

    # -- spans ------------------------------------------------------------------------------
    def span(self, name: str, run: str, **attributes):
        """A span of ``run``'s trace around a move or a verification (a no-op span when
        tracing is off): ``with manager.span("storage verify", run, ...) as s: s.set_attribute(...)``."""
        from appliance.tracing import storage_span

        tracer = self._tracer
        if tracer is None and self.tracing is not None:
            with self._tracer_lock:
                if self._tracer is None and self.tracing is not None:
                    from appliance.tracing import make_tracer

                    try:
                        self._tracer = make_tracer(self.tracing, self.catalog_path.parent, f"storage-{os.getpid()}", None)
                        self._own_tracer = True
                    except Exception as exc:  # diagnostics never stop the tierer
                        log.warning("storage: tracing off: %s", exc)
                    if self._tracer is None:
                        self.tracing = None
                tracer = self._tracer
        return storage_span(tracer, name, run, attributes)

    def move_span(self, run: str, src: str, dst: str, **attributes):
        """:meth:`span` of a move of ``run``'s files from tier ``src`` to ``dst``."""
        return self.span(f"storage move {src}->{dst}", run, **{"storage.from_tier": src, "storage.to_tier": dst, **attributes})
        close = getattr(self.mover.bucket, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "StorageManager":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- alerts ---------------------------------------------------------------------------
    def _alert(self, kind: str, message: str, **fields) -> None:
        ev = {"t": time.time(), "kind": kind, "message": message, **fields}
        self.alerts.append(ev)
        del self.alerts[:-200]
        log.warning("%s: %s", kind, message)
        if self.on_alert is not None:
            try:
                self.on_alert(kind, message, **fields)
            except Exception:  # an alert sink must not stop the tierer
                log.exception("storage alert callback failed")

    def _mover_report(self, kind: str, message: str, **where) -> None:
        if kind == "verify_failed":
            self._alert("storage_verify_failed", message, **where)
        elif kind == "copy_held":
            self._alert("storage_copy_held", message, **where)

    # -- the hot tier's fill level ---------------------------------------------------------
    def hot_usage(self) -> tuple[int, int, float]:
        """(free bytes, total bytes, free fraction) of the hot tier's file system."""
        free, total = self.stores["hot"].usage() or (0, 0)
        return free, total, (free / total if total else 1.0)

    def hot_level(self) -> str:
        """ok, high (below the high watermark) or critical; alerts on every change."""
        free, total, frac = self.hot_usage()
        level = "critical" if frac < self.policy.critical else "high" if frac < self.policy.high else "ok"
        if level != self._level:
            old, self._level = self._level, level
            where = f"hot tier {self.root}: {frac:.1%} free ({free / 2**30:.2f} GiB of {total / 2**30:.2f} GiB)"
            if level == "critical":
                self._alert("hot_tier_critical", f"{where}, below the critical watermark {self.policy.critical:.0%}: new runs are refused", free_fraction=frac)
            elif level == "high":
                self._alert("hot_tier_high", f"{where}, below the high watermark {self.policy.high:.0%}: evicting data with verified copies", free_fraction=frac)
            if old != "ok" and (level == "ok" or level == "high" and old == "critical"):
                self._alert(f"hot_tier_{old}", f"{where}: back above the {old} watermark", free_fraction=frac, cleared=True)
        return level

    # -- cataloguing ------------------------------------------------------------------------
    def scan(self) -> dict[str, int]:
        """Catalogue every run folder under the data root: files its manifests list as complete
        and, once the run is complete, Raw/, markers (RunCompletionStatus.xml too), run.json, .state/<run>/ and committed
        Analysis/<run>/<kind>/ outputs (checksummed here). Returns counts."""
        added = runs = 0
        if not self.root.is_dir():
            return {"runs": 0, "added": 0}
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith(".") or entry.name == "Analysis" or not (entry / RUNINFO).is_file():
                continue
            try:
                added += self._scan_run(entry.name)
                runs += 1
            except (RunFolderError, OSError) as exc:
                log.warning("%s: not catalogued (%s)", entry, exc)
        return {"runs": runs, "added": added}

    def _scan_run(self, run: str) -> int:
        from appliance.runfolder import RunFolder

        path = self.root / run
        folder = RunFolder(path)
        m = folder.manifest()
        complete = m.complete and (path / COPY_COMPLETE).is_file()
        analysed = (self.root / "Analysis" / run / ANALYSED_MARKER).is_file()
        completed_at = (path / RUN_MANIFEST).stat().st_mtime if complete else None
        self.catalog.upsert_run(run, complete=complete, analysed=analysed, completed_at=completed_at)
        known = {f.rel: f for f in self.catalog.files(run)}
        added = 0
        for e in m.files():
            rel = f"{run}/{e.path}"
            if rel in known:
                continue
            try:
                st = (path / e.path).stat()
            except FileNotFoundError:
                continue
            self.catalog.add_file(run, rel, classify(rel), e.size, e.crc32c, st.st_mtime, "manifest", rel)
            added += 1
        if not complete:
            return added
        extra: list[Path] = [path / RUN_MANIFEST]
        extra += [p for p in path.iterdir() if p.is_file() and (p.name.endswith("Complete.txt") or p.name == COMPLETION_STATUS)]
        for sub in (path / "Raw", self.root / ".state" / run):
            if sub.is_dir():
                extra += [p for p in sorted(sub.rglob("*")) if p.is_file() and not is_temp_name(p.name)]
        adir = self.root / "Analysis" / run
        if adir.is_dir():
            for kind in sorted(adir.iterdir()):
                if (kind / "_SUCCESS.json").is_file():
                    extra += [p for p in sorted(kind.rglob("*")) if p.is_file() and not is_temp_name(p.name)]
        for p in extra:
            rel = p.relative_to(self.root).as_posix()
            st = p.stat()
            f = known.get(rel)
            if f is None:
                size, crc = checksum_file(p)
                self.catalog.add_file(run, rel, classify(rel), size, crc, st.st_mtime, "scan", rel)
                added += 1
            elif f.origin == "scan" and (st.st_size != f.size or st.st_mtime != f.mtime):
                hot = self.catalog.copies(f.id).get("hot")
                if hot is not None and hot.state == "verified":
                    size, crc = checksum_file(p)
                    if crc != f.crc32c or size != f.size:
                        self.catalog.update_content(f.id, size, crc, st.st_mtime)
        return added

    # -- the plan ---------------------------------------------------------------------------
    def _state_ok(self, run: dict, when: str, run_files: list[FileRow], copies: dict[int, dict[str, CopyRow]]) -> bool:
        if when == "running":
            return True
        if not run["complete"]:
            return False
        if when == "analysed":
            return bool(run["analysed"])
        if when == "offloaded":
            return all(any(c.state == "verified" for t, c in copies.get(f.id, {}).items() if t != "hot") for f in run_files)
        return True

    def plan(self, now: float | None = None) -> list[Action]:
        """What the policy wants done now, in order: copies to warm, cold archives, deletes."""
        now = self.clock() if now is None else now
        runs = {r["run"]: r for r in self.catalog.runs()}
        copies = self.catalog.all_copies()
        groups: dict[tuple[str, str], list[FileRow]] = {}
        per_run: dict[str, list[FileRow]] = {}
        for f in self.catalog.files():
            groups.setdefault((f.run, f.data_class), []).append(f)
            per_run.setdefault(f.run, []).append(f)
        copy_acts, bag_acts, del_acts = [], [], []
        for (run, cls), fs in sorted(groups.items()):
            rule = self.policy.rules[cls]
            r = runs[run]
            if not self._state_ok(r, rule.when, per_run[run], copies):
                continue
            if "warm" in self.stores and rule.warm < NEVER:
                for f in fs:
                    c = copies.get(f.id, {}).get("warm")
                    if now - f.mtime >= rule.warm and (c is None or c.state in ("copying", "stale")):
                        if self.mover.best_source(f, copies.get(f.id, {}), exclude=("warm",)):
                            copy_acts.append(Action("copy", "warm", run, cls, (f.rel,), f.size, f"{cls} older than {rule.warm:.0f} s, run {rule.when}"))
            if "cold" in self.stores and rule.cold < NEVER and r["complete"]:
                states = [copies.get(f.id, {}).get("cold") for f in fs]
                need = [c is None or c.state in ("copying", "stale") for c in states]
                if any(need) and all(now - f.mtime >= rule.cold for f in fs):
                    if all(self.mover.best_source(f, copies.get(f.id, {}), exclude=("cold",)) for f in fs):
                        bag_acts.append(Action("archive", "cold", run, cls, tuple(f.rel for f in fs), sum(f.size for f in fs), f"{cls} older than {rule.cold:.0f} s: BagIt archive {run}/{cls}"))
            if not r["complete"]:
                continue
            for tier in ("hot", "warm"):
                after = rule.delete_after(tier)
                if after >= NEVER or tier not in self.stores:
                    continue
                if tier == "hot" and r["pinned_until"] > now:
                    continue
                for f in fs:
                    cs = copies.get(f.id, {})
                    c = cs.get(tier)
                    if c is None or c.state != "verified" or now - f.mtime < after:
                        continue
                    others = sum(1 for t, o in cs.items() if t != tier and o.state == "verified")
                    if others >= self.policy.verified_copies:
                        del_acts.append(Action("delete", tier, run, cls, (f.rel,), f.size, f"{tier}_delete after {after:.0f} s; {others} verified copies elsewhere"))
        return copy_acts + bag_acts + del_acts

    # -- doing it ---------------------------------------------------------------------------
    def _locked(self, fn, timeout: float = 60.0):
        if not self.lock.acquire(timeout, self._stop):
            raise StorageError(f"another mover holds {self.lock.path} (pid {self.lock.holder()}); wait for it, or stop it (appliance storage work / appliance serve)")
        try:
            return fn()
        finally:
            self.lock.release()

    def gc(self, dry_run: bool = False, now: float | None = None) -> dict:
        """Apply the policy once: catalogue, recover a crashed mover's leftovers, copy, archive,
        delete, evict under the high watermark, repair corrupt copies. ``dry_run``: only plan."""
        if dry_run:
            self.scan()
            acts = self.plan(now)
            return {"dry_run": True, "plan": [a.to_dict() for a in acts], "evict": self._evict_plan(), "level": self.hot_level()}
        return self._locked(lambda: self._gc(now))

    def _gc(self, now: float | None) -> dict:
        t0 = time.monotonic()
        scanned = self.scan()
        recovered = self.mover.recover()
        done, errors = [], []
        # copies and archives first, then a fresh plan for the deletes they made possible
        acts = [a for a in self.plan(now) if a.op != "delete"]
        self._run_actions(acts, done, errors)
        dels = [a for a in self.plan(now) if a.op == "delete"]
        self._run_actions(dels, done, errors)
        acts += dels
        evicted = self.evict()
        from appliance.storage.scrub import repair_all

        repaired = repair_all(self) if not self._stop.is_set() else {}
        self._last.update(gc=time.time(), pending=len(acts) - len(done), errors=len(errors))
        return {"scanned": scanned, "recovered": recovered, "done": [a.to_dict() for a in done], "errors": errors,
                "evicted": evicted, "repaired": repaired, "seconds": round(time.monotonic() - t0, 3), "level": self._level}

    def _run_actions(self, acts: list[Action], done: list[Action], errors: list[str]) -> None:
        copies = [a for a in acts if a.op == "copy"]
        if copies and not self._stop.is_set():  # file copies in parallel streams
            items, by_rel = [], {}
            for a in copies:
                f = self.catalog.file(a.rels[0])
                src = self.mover.best_source(f, self.catalog.copies(f.id), exclude=(a.tier,))
                if src is None:
                    errors.append(f"copy {a.tier} {f.rel}: no verified copy to read")
                    continue
                items.append((f, src, a.tier))
                by_rel[f.rel] = a
            groups: dict[tuple[str, str, str], list] = {}  # one move (span) per run and tiers
            for it in items:
                groups.setdefault((it[0].run, it[1], it[2]), []).append(it)
            for (run, src, dst), group in groups.items():
                if self._stop.is_set():
                    break
                with self.move_span(run, src, dst, **{"storage.reason": "policy"}) as span:
                    ok = failed = 0
                    moved = 0
                    for f, exc in self.mover.copy_many(group, self.policy.streams):
                        if exc is None:
                            done.append(by_rel[f.rel])
                            ok += 1
                            moved += f.size
                        else:
                            errors.append(f"copy {by_rel[f.rel].tier} {f.rel}: {exc}")
                            log.warning("%s", errors[-1])
                            failed += 1
                    span.set_attributes(move_outcome(moved, ok, failed, errors[-1] if failed else ""))
        for a in acts:
            if self._stop.is_set():
                break
            if a.op == "copy":
                continue
            try:
                self._do(a)
                done.append(a)
            except MoveError as exc:
                errors.append(f"{a.op} {a.tier} {a.rels[0] if len(a.rels) == 1 else a.run + '/' + a.data_class}: {exc}")
                log.warning("%s", errors[-1])

    def _do(self, a: Action) -> None:
        fs = [self.catalog.file(rel) for rel in a.rels]
        if a.op == "copy":
            f = fs[0]
            src = self.mover.best_source(f, self.catalog.copies(f.id), exclude=(a.tier,))
            if src is None:
                raise MoveError(f"{f.rel}: no verified copy to read")
            self.mover.copy(f, src, a.tier)
        elif a.op == "archive":
            copies = self.catalog.all_copies(a.run)
            src = ",".join(sorted({self.mover.best_source(f, copies.get(f.id, {}), exclude=("cold",)) or "none" for f in fs}))
            with self.move_span(a.run, src, "cold", **{"storage.reason": "policy", "storage.data_class": a.data_class}) as span:
                self.mover.archive(a.run, a.data_class, fs)  # validated with bagit and re-read before it counts
                span.set_attributes(move_outcome(a.bytes, len(fs), 0, ""))
        elif a.op == "delete":
            self.mover.delete(fs[0], a.tier)

    def _evict_candidates(self) -> list[FileRow]:
        now = self.clock()
        runs = {r["run"]: r for r in self.catalog.runs()}
        out = []
        for f, c in self.catalog.in_state("verified", "hot"):
            r = runs[f.run]
            if r["complete"] and r["pinned_until"] <= now:
                out.append(f)
        out.sort(key=lambda f: (self.policy.evict_rank(f.data_class), f.mtime, f.rel))
        return out

    def _evict_plan(self) -> list[dict]:
        free, total, frac = self.hot_usage()
        if frac >= self.policy.high:
            return []
        need = self.policy.high * total - free
        out = []
        copies = self.catalog.all_copies()
        for f in self._evict_candidates():
            if need <= 0:
                break
            others = sum(1 for t, c in copies.get(f.id, {}).items() if t != "hot" and c.state == "verified")
            if others >= self.policy.verified_copies:
                out.append({"rel": f.rel, "class": f.data_class, "bytes": f.size})
                need -= f.size
        return out

    def evict(self) -> list[str]:
        """Below the high watermark: delete hot copies that have the policy's verified copies
        elsewhere, least valuable class first, oldest first, until the hot tier is back above it."""
        if self.hot_level() == "ok":
            return []
        evicted = []
        for f in self._evict_candidates():
            if self._stop.is_set() or self.hot_usage()[2] >= self.policy.high:
                break
            if self.mover.delete(f, "hot"):
                evicted.append(f.rel)
        if evicted:
            log.info("evicted %d files from the hot tier", len(evicted))
        self.hot_level()
        return evicted

    def scrub(self, sample: int | None = None) -> dict:
        """One scrub pass now (see :mod:`appliance.storage.scrub`)."""
        from appliance.storage.scrub import scrub

        res = self._locked(lambda: scrub(self, self.policy.scrub_sample if sample is None else sample))
        self._last["scrub"] = time.time()
        return res

    def verify(self, run: str) -> dict:
        """Re-read every copy of ``run`` on every tier; mismatches are marked and repaired."""
        from appliance.storage.scrub import verify_run

        return self._locked(lambda: verify_run(self, run))

    def restore(self, run: str, to: str = "hot") -> dict:
        """Bring ``run`` back to ``to`` from its best verified copies (see :mod:`.restore`)."""
        from appliance.storage.restore import restore

        def traced():
            src = ",".join(t for t in ("hot", "warm", "cold") if t != to and t in self.stores)
            with self.move_span(run, src, to, **{"storage.reason": "restore"}) as span:
                res = restore(self, run, to)
                bad = len(res["failed"]) + len(res["mismatched"])
                span.set_attributes({"storage.bytes": res["bytes"], "storage.files": res["restored"],
                                     "storage.files_failed": bad, "storage.verified": res["ok"],
                                     "storage.outcome": "ok" if res["ok"] else f"failed: {bad} files, {len(res['folder_problems'])} run folder problems"})
                return res

        return self._locked(traced)

    # -- views ------------------------------------------------------------------------------
    def ls(self, run: str | None = None) -> list[dict]:
        """Runs with their state and files per tier, or (with ``run``) that run's files."""
        if run is None:
            out = []
            copies = self.catalog.all_copies()
            per_run: dict[str, list[FileRow]] = {}
            for f in self.catalog.files():
                per_run.setdefault(f.run, []).append(f)
            for r in self.catalog.run_summary():
                fs = per_run.get(r["run"], [])
                state = "running" if not r["complete"] else "analysed" if r["analysed"] else "complete"
                if state == "complete" and fs and self._state_ok(r, "offloaded", fs, copies):
                    state = "offloaded"
                out.append({"run": r["run"], "state": state, "files": r["files"], "bytes": r["bytes"],
                            "verified": {t: s.get("verified", 0) for t, s in sorted(r["tiers"].items())},
                            "corrupt": sum(s.get("corrupt", 0) for s in r["tiers"].values()),
                            "pinned_until": r["pinned_until"] or None})
            return out
        files = self.catalog.files(run)
        if not files:
            raise StorageError(f"run {run!r} is not in the catalog {self.catalog_path}; `appliance storage ls` lists the runs")
        copies = self.catalog.all_copies(run)
        return [{"rel": f.rel, "class": f.data_class, "size": f.size, "crc32c": f.crc32c, "sha256": f.sha256,
                 "copies": {t: {"state": c.state, "where": self.stores[t].display(c.url) if t in self.stores else c.url, "verified_at": c.verified_at}
                            for t, c in sorted(copies.get(f.id, {}).items())}} for f in files]

    def stats(self) -> dict:
        """The TUI storage pane's and the metrics' figures (shape in docs/storage.md)."""
        totals = self.catalog.tier_totals()
        free, total, frac = self.hot_usage()
        tiers = {}
        for tier in TIERS:
            if tier not in self.stores:
                continue
            t = totals.get(tier, {})
            usage = self.stores[tier].usage()
            tiers[tier] = {"url": self.stores[tier].display(""), "bytes": t.get("verified_bytes", 0), "files": t.get("verified_files", 0),
                           "corrupt_files": t.get("corrupt_files", 0), "free_bytes": usage[0] if usage else None, "total_bytes": usage[1] if usage else None}
        copying = sum(t.get("copying_files", 0) + t.get("stale_files", 0) for t in totals.values())
        return {
            "enabled": True,
            "tiers": tiers,
            "hot_free_fraction": round(frac, 4),
            "watermarks": {"high": self.policy.high, "critical": self.policy.critical},
            "level": "critical" if frac < self.policy.critical else "high" if frac < self.policy.high else "ok",
            "pending_moves": max(copying, self._last["pending"]),
            "verification_failures": self.catalog.count_events("verify_failed"),
            "corrupt_copies": sum(t.get("corrupt_files", 0) for t in totals.values()),
            "held_copies": self.catalog.count_held(self.policy.max_attempts),
            "bytes_copied": self.mover.bytes_copied,
            "last_gc": self._last["gc"],
            "last_scrub": self._last["scrub"],
            "running": self._thread is not None and self._thread.is_alive(),
        }

    def status(self) -> dict:
        """stats() plus the last verification failures and the current plan's size."""
        s = self.stats()
        s["recent_failures"] = self.catalog.events("verify_failed", last=10)
        s["policy"] = self.policy.source
        s["catalog"] = str(self.catalog_path)
        return s

    # -- the tierer -------------------------------------------------------------------------
    def start(self, timeout: float = 5.0) -> "StorageManager":
        """Start the tierer thread (idempotent); it runs gc() every ``mover.interval_s`` and a
        scrub pass every ``scrub.interval``."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        started = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(started,), name="storage-tierer", daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            self.stop()
            raise StorageError("the storage tierer did not start")
        return self

    def _loop(self, started: threading.Event) -> None:
        started.set()
        next_scrub = time.monotonic() + self.policy.scrub_interval_s if self.policy.scrub_interval_s < NEVER else NEVER
        while not self._stop.is_set():
            try:
                self.gc()
                if time.monotonic() >= next_scrub and not self._stop.is_set():
                    self.scrub()
                    next_scrub = time.monotonic() + self.policy.scrub_interval_s
            except StorageError as exc:
                log.info("storage pass skipped: %s", exc)
            except Exception:
                log.exception("storage pass failed; retrying in %.0f s", self.policy.interval_s)
            self._wake.wait(self.policy.interval_s)
            self._wake.clear()

    def wake(self) -> None:
        """Run the tierer's next pass now instead of at the end of ``mover.interval_s``: the
        service calls it when a run ends, so the run is catalogued (and its copies start)
        at once."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the tierer to stop (a copy in flight is abandoned between chunks, its temp file
        removed, the copy left pending), wait up to ``timeout`` and join the thread."""
        self._stop.set()
        self._wake.set()
        t = self._thread
        if t is not None:
            t.join(timeout)
            if t.is_alive():
                log.error("the storage tierer did not stop within %.0f s", timeout)
                return
            self._thread = None
        self._stop.clear()
        self._wake.clear()

    @property
    def stop_event(self) -> threading.Event:
        return self._stop

