"""The kernel command line: parse it, and read what the boot loader is configured to pass.

Sources, in order: BLS entries (``/boot/loader/entries/*.conf``, Fedora/RHEL and
systemd-boot), then ``/etc/default/grub`` (Debian/Ubuntu and others). Reading is root-relative;
changing them is :mod:`appliance.tuning.persist`'s job.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from appliance.tuning.host import Host, read_text

__all__ = [
    "parse_cmdline",
    "BootConfig",
    "boot_config",
    "bls_entries",
    "set_params",
    "format_param",
]


def parse_cmdline(text: str) -> dict[str, str | None]:
    """``"ro isolcpus=1-3 quiet -- init args"`` -> ``{"ro": None, "isolcpus": "1-3", "quiet": None}``.

    Stops at ``--`` (what follows goes to init). A repeated parameter keeps its last value,
    as most kernel parameters do.
    """
    try:
        tokens = shlex.split(text)
    except ValueError:
        tokens = text.split()
    out: dict[str, str | None] = {}
    for token in tokens:
        if token == "--":
            break
        key, eq, value = token.partition("=")
        out[key] = value if eq else None
    return out


def format_param(key: str, value: str | None) -> str:
    if value is None:
        return key
    return f'{key}="{value}"' if " " in value else f"{key}={value}"


def set_params(options: str, params: dict[str, str | None]) -> str:
    """``options`` with each of ``params`` set (an old value of the same key is removed)."""
    kept = [t for t in _tokens(options) if t.partition("=")[0] not in params]
    return " ".join(kept + [format_param(k, v) for k, v in params.items()])


def _tokens(options: str) -> list[str]:
    # Keep quoting intact: split on whitespace outside double quotes.
    return re.findall(r'(?:[^\s"]+|"[^"]*")+', options)


@dataclass(frozen=True)
class BootConfig:
    """The command line the boot loader will pass at next boot, and where it came from."""

    source: str  # "bls", "grub-default"
    path: Path
    cmdline: str


def bls_entries(host: Host) -> list[Path]:
    d = host.path("boot/loader/entries")
    return sorted(d.glob("*.conf")) if d.is_dir() else []


def _bls_field(text: str, name: str) -> str | None:
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key == name:
            return value.strip()
    return None


def boot_config(host: Host) -> BootConfig | None:
    """What the boot loader is configured to pass, or ``None`` if no known source exists."""
    entries = bls_entries(host)
    if entries:
        running = parse_cmdline(host.cmdline or "").get("BOOT_IMAGE") or ""
        chosen = entries[-1]
        for entry in entries:
            linux = _bls_field(read_text(entry) or "", "linux") or ""
            if running and linux and running.endswith(linux.rsplit("/", 1)[-1]):
                chosen = entry
                break
        options = _bls_field(read_text(chosen) or "", "options") or ""
        return BootConfig("bls", chosen, options)
    grub = host.path("etc/default/grub")
    text = read_text(grub)
    if text is not None:
        values = grub_default_values(text)
        cmdline = " ".join(
            v
            for v in (values.get("GRUB_CMDLINE_LINUX"), values.get("GRUB_CMDLINE_LINUX_DEFAULT"))
            if v
        )
        return BootConfig("grub-default", grub, cmdline)
    return None


def grub_default_values(text: str) -> dict[str, str]:
    """Shell assignments of /etc/default/grub (``KEY="value"``), unquoted."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^\s*([A-Z_]+)=(.*)$", line)
        if m:
            try:
                parts = shlex.split(m.group(2))
            except ValueError:
                continue
            out[m.group(1)] = " ".join(parts)
    return out
