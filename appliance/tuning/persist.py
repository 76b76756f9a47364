"""persist: make a profile survive reboots.

Writes, under the root: ``/etc/sysctl.d/90-appliance.conf`` (sysctls), the irqbalance
environment file (banned CPUs), ``/etc/systemd/system/appliance-sysconfig.service`` (re-applies
the runtime items -- hugepages per node, mounts, IRQ affinity, THP, cpufreq -- at boot), and
the kernel command line through ``grubby``, BLS entries or ``/etc/default/grub`` where
present, otherwise it prints the exact parameters to add. Every file it changes is journalled
first, so ``rollback`` undoes persist too.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from appliance.tuning.bootloader import (
    _bls_field,
    bls_entries,
    boot_config,
    format_param,
    grub_default_values,
    parse_cmdline,
    set_params,
)
from appliance.tuning.host import Host, read_text
from appliance.tuning.items import (
    CmdlineItem,
    Context,
    IrqbalanceItem,
    SysctlItem,
    build_items,
)
from appliance.tuning.journal import Journal
from appliance.tuning.profile import Profile
from appliance.tuning.runner import Runner, SystemRunner

__all__ = ["persist", "PersistReport", "SYSCTL_FILE", "UNIT_NAME"]

SYSCTL_FILE = "etc/sysctl.d/90-appliance.conf"
# the directory holding the `appliance` package, so the boot unit imports this very code
_CODE_ROOT = Path(__file__).resolve().parents[2]
UNIT_NAME = "appliance-sysconfig.service"


@dataclass
class PersistReport:
    profile: str
    outputs: list[dict[str, Any]] = field(default_factory=list)

    def add(self, what: str, path: str | None, action: str, detail: str = "") -> None:
        self.outputs.append({"what": what, "path": path, "action": action, "detail": detail})

    @property
    def exit_code(self) -> int:
        return 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        lines = [f"persist {self.profile}:"]
        for o in self.outputs:
            where = f" {o['path']}" if o["path"] else ""
            detail = f"\n      {o['detail']}" if o["detail"] else ""
            lines.append(f"  {o['action']:<9} {o['what']}{where}{detail}")
        return "\n".join(lines) + "\n"


def _write(
    ctx: Context,
    report: PersistReport,
    what: str,
    path: Path,
    text: str,
    after: list[str] | None = None,
) -> bool:
    """Write a config file through the journal unless it already has ``text``."""
    rel = ctx.rel(path)
    if read_text(path) == text:
        report.add(what, rel, "unchanged")
        return False
    ctx.change_file(f"persist:{rel}", path, text, after=after)
    report.add(what, rel, "written")
    return True


def persist(
    profile: str | Profile,
    root: Path = Path("/"),
    runner: Runner | None = None,
    profile_dirs: list[Path] | None = None,
    journal: Journal | None = None,
) -> PersistReport:
    """Write the boot-time configuration for ``profile`` (see the module docstring)."""
    from appliance.tuning.engine import resolve_profile

    prof = resolve_profile(profile, profile_dirs)
    host = Host(root)
    runner = runner or SystemRunner(allow_programs=Path(root) == Path("/"))
    items, _ = build_items(prof, host)
    report = PersistReport(prof.name)
    journal = journal or Journal(root)
    live = host.root == Path("/")
    with journal.locked():
        journal.begin("persist", prof.name, host.boot_id)
        ctx = Context(host, runner, journal)

        sysctls = [
            i
            for i in items
            if isinstance(i, SysctlItem) and i.observe(host).status != "unsupported"
        ]
        if sysctls:
            text = (
                f"# Written by `appliance sysconfig persist --profile {prof.name}`; "
                "edit the profile, not this file.\n"
            )
            text += "".join(f"{i.name} = {i.desired}\n" for i in sysctls)
            _write(ctx, report, "sysctls", host.path(SYSCTL_FILE), text)

        for item in items:
            if isinstance(item, IrqbalanceItem):
                if item.observe(host).status == "unsupported":
                    report.add(
                        "irqbalance banned CPUs", None, "skipped", "irqbalance is not installed"
                    )
                else:
                    restart = (
                        ["systemctl", "try-restart", "irqbalance.service"]
                        if live and runner.which("systemctl")
                        else None
                    )
                    if (
                        _write(
                            ctx,
                            report,
                            "irqbalance banned CPUs",
                            item.path,
                            item.new_text(host),
                            after=restart,
                        )
                        and restart
                    ):
                        runner.run(restart)

        _persist_unit(ctx, report, prof, items, live)
        _persist_cmdline(ctx, report, [i for i in items if isinstance(i, CmdlineItem)], live)
    return report


def _persist_unit(ctx: Context, report: PersistReport, prof: Profile, items, live: bool) -> None:
    runtime = [i for i in items if i.kind == "runtime" and not isinstance(i, SysctlItem)]
    if not runtime:
        return
    source = prof.sources[-1].resolve()
    unit = f"""\
# Written by `appliance sysconfig persist --profile {prof.name}`.
# Re-applies the runtime tuning (hugepages, hugetlbfs mounts, IRQ affinity, THP, cpufreq)
# at every boot, before irqbalance and the appliance start. Old values go to the journal in
# /var/lib/appliance/sysconfig, so `appliance sysconfig rollback` can undo it.
[Unit]
Description=Appliance host tuning (profile {prof.name})
After=local-fs.target systemd-sysctl.service
Before=irqbalance.service appliance.service

[Service]
Type=oneshot
RemainAfterExit=yes
Environment=PYTHONPATH={_CODE_ROOT}
ExecStart={sys.executable} -m appliance.tuning apply --profile {source}

[Install]
WantedBy=multi-user.target
"""
    path = ctx.host.path(f"etc/systemd/system/{UNIT_NAME}")
    changed = _write(ctx, report, "boot-time unit for runtime items", path, unit)
    enable = ["systemctl", "enable", UNIT_NAME]
    if live and ctx.host.path("run/systemd/system").is_dir() and ctx.runner.which("systemctl"):
        if changed:
            ctx.runner.run(["systemctl", "daemon-reload"])
            ctx.journal.undo(
                f"persist:{UNIT_NAME}", {"op": "run", "argv": ["systemctl", "disable", UNIT_NAME]}
            )
            ctx.runner.run(enable)
            report.add("enabled", UNIT_NAME, "ran", " ".join(enable))
    else:
        report.add("enable the unit", UNIT_NAME, "print", " ".join(enable))


def _persist_cmdline(
    ctx: Context, report: PersistReport, items: list[CmdlineItem], live: bool
) -> None:
    if not items:
        return
    host = ctx.host
    wanted = {i.name: i.value for i in items}
    line = " ".join(format_param(k, v) for k, v in wanted.items())
    boot = boot_config(host)
    configured = parse_cmdline(boot.cmdline) if boot else {}
    if boot is not None and all(k in configured and configured[k] == v for k, v in wanted.items()):
        report.add(
            "kernel command line", "/" + str(boot.path.relative_to(host.root)), "unchanged", line
        )
        return

    grubby = ctx.runner.which("grubby") if live else None
    if grubby:
        old = {k: configured[k] for k in wanted if k in configured}
        if old:
            ctx.journal.undo(
                "persist:cmdline",
                {
                    "op": "run",
                    "argv": [
                        grubby,
                        "--update-kernel=ALL",
                        "--args=" + " ".join(format_param(k, v) for k, v in old.items()),
                    ],
                },
            )
        ctx.journal.undo(
            "persist:cmdline",
            {
                "op": "run",
                "argv": [grubby, "--update-kernel=ALL", "--remove-args=" + " ".join(wanted)],
            },
        )
        argv = [grubby, "--update-kernel=ALL", "--args=" + line]
        ctx.runner.run(argv)
        report.add("kernel command line", None, "ran", " ".join(argv) + "  (reboot to apply)")
        return

    # RHEL 8 style entries whose options are only "$kernelopts" live in grubenv: not handled
    entries = [
        e
        for e in bls_entries(host)
        if not all(
            t.startswith("$") for t in (_bls_field(read_text(e) or "", "options") or "$").split()
        )
    ]
    if entries:
        for entry in entries:
            text = read_text(entry) or ""
            out = []
            for ln in text.splitlines():
                key, _, value = ln.strip().partition(" ")
                out.append(
                    f"options {set_params(value.strip(), wanted)}" if key == "options" else ln
                )
            _write(
                ctx,
                report,
                "kernel command line (BLS entry, reboot to apply)",
                entry,
                "\n".join(out) + "\n",
            )
        return

    grub = host.path("etc/default/grub")
    text = read_text(grub)
    if text is not None:
        current = grub_default_values(text).get("GRUB_CMDLINE_LINUX", "")
        new_value = set_params(current, wanted).replace('"', '\\"')
        lines = [ln for ln in text.splitlines() if not ln.strip().startswith("GRUB_CMDLINE_LINUX=")]
        lines.append(f'GRUB_CMDLINE_LINUX="{new_value}"')
        regen = None
        if live:
            if ctx.runner.which("update-grub"):
                regen = ["update-grub"]
            elif ctx.runner.which("grub2-mkconfig"):
                cfg = (
                    "/boot/grub2/grub.cfg"
                    if Path("/boot/grub2").is_dir()
                    else "/boot/grub/grub.cfg"
                )
                regen = ["grub2-mkconfig", "-o", cfg]
        if _write(
            ctx,
            report,
            "kernel command line (GRUB_CMDLINE_LINUX)",
            grub,
            "\n".join(lines) + "\n",
            after=regen,
        ):
            if regen:
                ctx.runner.run(regen)
                report.add(
                    "boot loader config", None, "ran", " ".join(regen) + "  (reboot to apply)"
                )
            else:
                report.add(
                    "regenerate the boot loader config",
                    None,
                    "print",
                    "update-grub  (Debian/Ubuntu) or grub2-mkconfig -o /boot/grub2/grub.cfg, then reboot",
                )
        return

    report.add(
        "kernel command line",
        None,
        "print",
        f"no grubby, BLS entries or /etc/default/grub here: add these parameters to the "
        f"kernel command line of your boot loader, then reboot:\n      {line}",
    )
