"""plan, apply, verify and rollback: the tuning engine over a profile and a root.

- :func:`plan` reads only: every item's current and desired value and status.
- :func:`apply` journals each old value (fsynced) before changing it, changes only what
  differs (so it is idempotent), re-reads to confirm, and reports what changed.
- :func:`verify` is :func:`plan` judged: exit 0 when the running system matches, with drift,
  missing, unsupported and a pending reboot told apart.
- :func:`rollback` restores the journal's values and archives the journal.
"""

from __future__ import annotations

import errno
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from appliance.tuning.bootloader import boot_config
from appliance.tuning.cpulist import format_cpulist, parse_cpulist
from appliance.tuning.host import Host
from appliance.tuning.items import Context, ItemError, build_items
from appliance.tuning.journal import Journal
from appliance.tuning.profile import Profile, load_profile
from appliance.tuning.risk import risk_of
from appliance.tuning.runner import CommandError, Runner, SystemRunner

__all__ = [
    "PlanEntry",
    "Plan",
    "ApplyReport",
    "VerifyReport",
    "RollbackReport",
    "plan",
    "apply",
    "verify",
    "rollback",
    "resolve_profile",
    "EXIT_OK",
    "EXIT_DRIFT",
    "EXIT_PENDING_REBOOT",
]

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_DRIFT = 1
EXIT_PENDING_REBOOT = 3


@dataclass(frozen=True)
class PlanEntry:
    key: str
    kind: str
    status: str
    current: str | None
    desired: str
    reason: str = ""
    #: why this setting is risky, in one line ("" when it is not): appliance.tuning.risk
    risk: str = ""


_NUMBERED = re.compile(r"(?P<head>[a-z]+:[a-z]*)(?P<n>\d+)(?P<tail>(?::.*)?)\Z")
_IRQ_REASON = re.compile(r"(?P<name>[^@;]*)(?:@(?P<device>[^;]+))?; (?P<rule>.+)\Z")


def _cpus(values: list[str | None]) -> str:
    """The union of CPU lists, or the distinct values when they are not CPU lists."""
    try:
        cpus: set[int] = set()
        for v in values:
            cpus |= set(parse_cpulist(v or ""))
        return format_cpulist(sorted(cpus))
    except (ValueError, TypeError):
        return ",".join(dict.fromkeys("-" if v is None else v for v in values))


def _group(entries: tuple[PlanEntry, ...]) -> list[tuple[list[PlanEntry], str, str, str]]:
    """Rows of the text plan: ``(entries, item, current -> desired, note)``. Many IRQs of one
    device and pin rule become one row (``32 IRQs of pci:... (mlx5_comp*)``, as tuna shows
    them), and numbered items with the same change (``cpufreq:policy0-63:...``) one row."""
    groups: dict[tuple, list[PlanEntry]] = {}
    for e in entries:
        m = _NUMBERED.match(e.key)
        irq = _IRQ_REASON.match(e.reason) if e.key.startswith("irq:") and m else None
        if irq:
            gk: tuple = ("irq", e.status, e.desired, irq["device"], irq["rule"], e.risk)
        elif m and not e.key.startswith("irq:"):
            gk = ("num", e.status, m["head"], m["tail"], e.current, e.desired, e.reason, e.risk)
        else:
            gk = ("one", e.key)
        groups.setdefault(gk, []).append(e)
    rows = []
    for gk, es in groups.items():
        e = es[0]
        cur = "-" if e.current is None else e.current
        if gk[0] == "one" or len(es) == 1:
            rows.append((es, e.key, f"{cur} -> {e.desired}", e.reason))
        elif gk[0] == "irq":
            numbers = format_cpulist(sorted(int(x.key.split(":", 1)[1]) for x in es))
            rule = gk[4].removeprefix("pin ")
            what = f"{len(es)} IRQs of {gk[3]} ({rule})" if gk[3] else f"{len(es)} IRQs ({rule})"
            names = [m["name"] for m in (_IRQ_REASON.match(x.reason) for x in es) if m]
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            note = f"irq {numbers}" + ("" if gk[3] else f": {shown}")
            rows.append((es, what, f"CPU {_cpus([x.current for x in es])} -> CPU {e.desired}", note))
        else:
            m = _NUMBERED.match(e.key)
            assert m is not None
            numbers = format_cpulist(sorted(int(_NUMBERED.match(x.key)["n"]) for x in es))  # type: ignore[index]
            rows.append((es, f"{m['head']}{numbers}{m['tail']}", f"{cur} -> {e.desired}", "; ".join(filter(None, (f"{len(es)} items", e.reason)))))
    return rows


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    out = []
    for r in rows:
        out.append(
            "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        )
    return "\n".join(line.rstrip() for line in out)


@dataclass(frozen=True)
class Plan:
    profile: str
    root: str
    cpusets: dict[str, str]
    boot_config: str | None
    entries: tuple[PlanEntry, ...]
    description: str = ""

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.entries:
            out[e.status] = out.get(e.status, 0) + 1
        return dict(sorted(out.items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "description": self.description,
            "root": self.root,
            "cpusets": self.cpusets,
            "boot_config": self.boot_config,
            "counts": self.counts(),
            "items": [asdict(e) for e in self.entries],
        }

    def to_text(self) -> str:
        """The plan for people: the profile's description, one row per item or group of
        alike items (IRQs of one device, cpufreq policies), and each risky change marked
        ``!`` with its why on the next line. ``to_dict`` keeps one entry per item."""
        lines = [f"profile {self.profile} on {self.root}"]
        if self.description:
            lines.append(f"  {self.description}")
        lines += [f"  cpu set {k} = {v}" for k, v in self.cpusets.items()]
        lines.append(f"  boot loader: {self.boot_config or 'none found'}")
        rows = [[" ", "STATUS", "ITEM", "CURRENT -> DESIRED  (note)"]]
        whys: dict[int, str] = {}
        risky = 0
        for es, item, change, note in _group(self.entries):
            e = es[0]
            flag = bool(e.risk) and e.status not in ("ok", "unsupported", "missing")
            risky += len(es) if flag else 0
            rows.append(["!" if flag else " ", e.status, item, change + (f"  ({note})" if note else "")])
            if flag:
                whys[len(rows) - 1] = e.risk
        table = _table(rows).split("\n")
        out = []
        for i, line in enumerate(table):
            out.append(line)
            if i in whys:
                out.append(f"    ! {whys[i]}")
        summary = ", ".join(f"{n} {s}" for s, n in self.counts().items())
        if risky:
            summary += f"; {risky} risky (marked !)"
        return "\n".join(lines) + "\n" + "\n".join(out) + f"\n{summary}\n"


def resolve_profile(profile: str | Profile, profile_dirs: list[Path] | None = None) -> Profile:
    return profile if isinstance(profile, Profile) else load_profile(profile, profile_dirs)


def plan(
    profile: str | Profile, root: Path = Path("/"), profile_dirs: list[Path] | None = None
) -> Plan:
    """Current and desired value and status of every item; writes nothing."""
    prof = resolve_profile(profile, profile_dirs)
    host = Host(root)
    items, sets = build_items(prof, host)
    entries = []
    for item in items:
        obs = item.observe(host)
        entries.append(
            PlanEntry(item.key, item.kind, obs.status, obs.current, item.desired, obs.reason,
                      risk_of(item.key, item.desired))
        )
    boot = boot_config(host)
    return Plan(
        profile=prof.name,
        description=prof.description,
        root=str(root),
        cpusets={k: format_cpulist(v) for k, v in sets.items()},
        boot_config=None
        if boot is None
        else f"{boot.source} {'/' + str(boot.path.relative_to(host.root))}",
        entries=tuple(entries),
    )


@dataclass
class ApplyReport:
    profile: str
    changed: list[dict[str, Any]] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    journal: str = ""

    @property
    def exit_code(self) -> int:
        return EXIT_DRIFT if self.failed else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        lines = [
            f"apply {self.profile}: {len(self.changed)} changed, {len(self.unchanged)} "
            f"already right, {len(self.failed)} failed, {len(self.skipped)} skipped"
        ]
        lines += [f"  changed  {c['key']}: {c['old']} -> {c['new']}" for c in self.changed]
        lines += [f"  FAILED   {f['key']}: {f['error']}" for f in self.failed]
        lines += [
            f"  skipped  {s['key']}: {s['status']} {s['reason']}".rstrip() for s in self.skipped
        ]
        lines.append(f"  journal: {self.journal}")
        return "\n".join(lines) + "\n"


def apply(
    profile: str | Profile,
    root: Path = Path("/"),
    runner: Runner | None = None,
    profile_dirs: list[Path] | None = None,
    journal: Journal | None = None,
) -> ApplyReport:
    """Bring every runtime item to its desired value, journalling old values first.

    The whole profile is resolved (and so validated against this host) before the first
    write. Reboot items are skipped (``persist`` configures them). An item the kernel refuses
    is reported in ``failed`` and the rest still apply; any other exception propagates,
    leaving the journal for :func:`rollback`.
    """
    prof = resolve_profile(profile, profile_dirs)
    host = Host(root)
    runner = runner or SystemRunner(allow_programs=Path(root) == Path("/"))
    items, _ = build_items(prof, host)
    observed = [(item, item.observe(host)) for item in items]
    journal = journal or Journal(root)
    report = ApplyReport(prof.name, journal=str(journal.path))
    with journal.locked():
        journal.begin("apply", prof.name, host.boot_id)
        ctx = Context(host, runner, journal)
        for item, obs in observed:
            if obs.status == "ok":
                report.unchanged.append(item.key)
                continue
            if obs.status != "change":
                report.skipped.append({"key": item.key, "status": obs.status, "reason": obs.reason})
                continue
            try:
                item.apply(ctx)
            except (ItemError, CommandError, OSError) as exc:
                log.warning("%s: %s", item.key, exc)
                report.failed.append({"key": item.key, "error": str(exc)})
                continue
            after = item.observe(host)
            if after.status != "ok":
                report.failed.append(
                    {
                        "key": item.key,
                        "error": f"still {after.current!r} after writing {item.desired!r}",
                    }
                )
                continue
            report.changed.append(
                {"key": item.key, "old": obs.current or "-", "new": after.current}
            )
    return report


@dataclass
class VerifyReport:
    profile: str
    ok: bool
    pending_reboot: bool
    running_cmdline: str | None
    configured_cmdline: str | None
    drift: list[dict[str, Any]]
    missing: list[dict[str, Any]]
    unsupported: list[dict[str, Any]]
    reboot_pending_items: list[dict[str, Any]]
    matching: int

    @property
    def exit_code(self) -> int:
        if self.drift or self.missing:
            return EXIT_DRIFT
        return EXIT_PENDING_REBOOT if self.pending_reboot else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "exit_code": self.exit_code}

    def problems(self) -> list[str]:
        """One line per drifted, missing or reboot-pending item (empty when all match)."""
        out = []
        for d in self.drift:
            out.append(f"drift {d['key']}: is {d['current']}, profile wants {d['desired']}")
        for m in self.missing:
            out.append(f"missing {m['key']}: {m['reason']}")
        for r in self.reboot_pending_items:
            out.append(
                f"reboot pending {r['key']}: running {r['current']}, next boot {r['desired']}"
            )
        return out

    def to_text(self) -> str:
        head = (
            "matches"
            if self.exit_code == EXIT_OK
            else ("reboot pending" if self.exit_code == EXIT_PENDING_REBOOT else "DRIFT")
        )
        lines = [
            f"verify {self.profile}: {head} ({self.matching} items match, "
            f"{len(self.drift)} drift, {len(self.missing)} missing, "
            f"{len(self.unsupported)} unsupported here)"
        ]
        lines += ["  " + p for p in self.problems()]
        return "\n".join(lines) + "\n"


def verify(
    profile: str | Profile, root: Path = Path("/"), profile_dirs: list[Path] | None = None
) -> VerifyReport:
    """Judge the running system against the profile (see :class:`VerifyReport.exit_code`)."""
    p = plan(profile, root, profile_dirs)
    host = Host(root)
    boot = boot_config(host)

    def row(e):
        return {
            "key": e.key,
            "kind": e.kind,
            "current": e.current,
            "desired": e.desired,
            "reason": e.reason,
        }

    drift = [row(e) for e in p.entries if e.status in ("change", "reboot")]
    missing = [row(e) for e in p.entries if e.status == "missing"]
    unsupported = [row(e) for e in p.entries if e.status == "unsupported"]
    pending = [row(e) for e in p.entries if e.status == "pending-reboot"]
    running = host.cmdline
    return VerifyReport(
        profile=p.profile,
        ok=not (drift or missing or pending),
        pending_reboot=bool(pending),
        running_cmdline=running,
        configured_cmdline=None if boot is None else boot.cmdline,
        drift=drift,
        missing=missing,
        unsupported=unsupported,
        reboot_pending_items=pending,
        matching=sum(1 for e in p.entries if e.status == "ok"),
    )


@dataclass
class RollbackReport:
    restored: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    archived: str | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_DRIFT if self.failed else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        if not self.restored and not self.failed:
            return "rollback: the journal is empty, nothing to restore\n"
        lines = [f"rollback: {len(self.restored)} restored, {len(self.failed)} failed"]
        lines += [f"  restored {r['key']}: {r['what']}" for r in self.restored]
        lines += [f"  FAILED   {f['key']}: {f['error']}" for f in self.failed]
        if self.archived:
            lines.append(f"  journal archived to {self.archived}")
        else:
            lines.append("  journal kept (fix the failures and run rollback again)")
        return "\n".join(lines) + "\n"


def rollback(
    root: Path = Path("/"), runner: Runner | None = None, journal: Journal | None = None
) -> RollbackReport:
    """Restore every journalled value (the state before the first apply) and archive the journal."""
    runner = runner or SystemRunner(allow_programs=Path(root) == Path("/"))
    journal = journal or Journal(root)
    report = RollbackReport()
    if not journal.path.exists():
        return report
    with journal.locked():
        for rec in journal.undo_plan():
            undo = rec["undo"]
            try:
                what = _undo(undo, Path(root), runner)
            except (OSError, CommandError) as exc:
                report.failed.append({"key": rec["key"], "error": str(exc)})
                continue
            report.restored.append({"key": rec["key"], "what": what})
        if not report.failed:
            archived = journal.archive()
            report.archived = None if archived is None else str(archived)
    return report


def _undo(undo: dict[str, Any], root: Path, runner: Runner) -> str:
    op = undo["op"]
    path = root / undo["path"].lstrip("/") if "path" in undo else None
    if op == "attr":
        runner.write_attr(path, undo["value"])
        return f"{undo['path']} = {undo['value'].strip()!r}"
    if op == "file":
        if undo["text"] is None:
            runner.remove_file(path)
            what = f"removed {undo['path']}"
        else:
            runner.write_file(path, undo["text"], undo.get("mode", 0o644))
            what = f"restored {undo['path']}"
        if undo.get("after"):
            runner.run(undo["after"])
        return what
    if op == "umount":
        if not any(m.target == undo["path"] for m in Host(root).mounts):
            return f"{undo['path']} already unmounted"
        runner.run(["umount", str(path)])
        return f"unmounted {undo['path']}"
    if op == "rmdir":
        try:
            runner.remove_dir(path)
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:
                raise
            # someone else put files there since: theirs to keep
            return f"kept directory {undo['path']} (not empty)"
        return f"removed directory {undo['path']}"
    if op == "run":
        runner.run(undo["argv"])
        return "ran " + " ".join(undo["argv"])
    raise RuntimeError(f"unknown journal operation {op!r} (journal from a newer version?)")
