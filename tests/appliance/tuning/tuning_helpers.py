"""Helpers for host-tuning tests: copies of captured host trees and a fake kernel.

A captured tree is plain files, so writing "never" to its THP file would leave "never"
rather than "always madvise [never]". :class:`FakeKernel` is the stand-in for the kernel
behind those files: it implements the few kernel behaviours tuning depends on (selector
files, hugepage pool counters, IRQ mask files, refusing read-only attributes, mount and
umount editing /proc/mounts) and performs every other operation for real on the copy.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
from pathlib import Path

from appliance.tuning.cpulist import format_cpumask, parse_cpulist
from appliance.tuning.runner import CommandError, SystemRunner

DATA = Path(__file__).resolve().parents[2] / "data"
HOSTS = DATA / "hosts"
GOLDEN = DATA / "golden"
HOST_NAMES = ("vm-2core", "dual-socket-gpu")
PROFILES = ("dev", "instrument", "hpc-node")


def copy_host(name: str, dest: Path) -> Path:
    """Copy capture ``name`` to ``dest`` and re-apply the kernel's read-only modes."""
    root = dest / name
    shutil.copytree(HOSTS / name, root)
    for line in (root / "readonly.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            (root / line).chmod(0o444)
    return root


def tree_digest(root: Path) -> dict[str, str]:
    """relative path -> sha256 of content + mode, for every file and directory under ``root``.

    The journal directory is left out: it keeps the applied journals as history by design.
    """
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir.startswith(os.path.join("var", "lib", "appliance")):
            continue
        for d in dirnames:
            rel = os.path.normpath(os.path.join(rel_dir, d))
            if rel not in ("var", os.path.join("var", "lib")) and not rel.startswith(
                os.path.join("var", "lib", "appliance")
            ):
                out[rel + "/"] = "dir"
        for f in filenames:
            p = Path(dirpath) / f
            h = hashlib.sha256(p.read_bytes())
            h.update(oct(stat.S_IMODE(p.stat().st_mode)).encode())
            out[os.path.normpath(os.path.join(rel_dir, f))] = h.hexdigest()
    return out


def _kernel_write(path: Path, text: str) -> None:
    """Write as the kernel does: regardless of the file's (read-only) mode, keeping it."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if not mode & stat.S_IWUSR:
        path.chmod(mode | stat.S_IWUSR)  # needed when the tests do not run as root
    try:
        path.write_text(text)
    finally:
        path.chmod(mode)


class FakeKernel(SystemRunner):
    """Runner for a copied tree: kernel semantics for the attributes tuning writes."""

    def __init__(self, root: Path, hugepage_limit: int | None = None) -> None:
        self.root = root
        self.hugepage_limit = hugepage_limit  # the most pages one pool can get (fragmentation)
        self.commands: list[list[str]] = []
        self.writes: list[Path] = []

    def write_attr(self, path: Path, value: str) -> None:
        self.writes.append(path)
        if not path.stat().st_mode & stat.S_IWUSR:
            raise OSError(errno.EIO, "Input/output error", str(path))
        text = path.read_text()
        word = value.strip()
        if "[" in text:  # selector file: "always [madvise] never"
            words = [w.strip("[]") for w in text.split()]
            if word not in words:
                raise OSError(errno.EINVAL, "Invalid argument", str(path))
            _kernel_write(path, " ".join(f"[{w}]" if w == word else w for w in words) + "\n")
            return
        if path.name == "nr_hugepages":
            n = int(word)
            if self.hugepage_limit is not None:
                n = min(n, self.hugepage_limit)
            _kernel_write(path, f"{n}\n")
            self._sync_hugepages(path)
            return
        if path.name == "smp_affinity_list":
            cpus = parse_cpulist(word)  # raises like EINVAL on garbage
            _kernel_write(path, value)
            possible = parse_cpulist((self.root / "sys/devices/system/cpu/possible").read_text())
            _kernel_write(
                path.parent / "smp_affinity", format_cpumask(cpus, max(possible) + 1) + "\n"
            )
            return
        _kernel_write(path, value)

    def _sync_hugepages(self, path: Path) -> None:
        # A node pool changed: the global pool of that size is the sum over nodes, and the
        # new pages are free.
        size_dir = path.parent.name
        node_root = self.root / "sys/devices/system/node"
        if node_root in path.parents:
            total = sum(
                int(p.read_text())
                for p in node_root.glob(f"node*/hugepages/{size_dir}/nr_hugepages")
            )
            _kernel_write(path.parent / "free_hugepages", path.read_text())
            glob = self.root / "sys/kernel/mm/hugepages" / size_dir
            _kernel_write(glob / "nr_hugepages", f"{total}\n")
            _kernel_write(glob / "free_hugepages", f"{total}\n")
        else:
            _kernel_write(path.parent / "free_hugepages", path.read_text())

    def run(self, argv: list[str]) -> str:
        self.commands.append(list(argv))
        mounts = self.root / "proc/mounts"
        if argv[:3] == ["mount", "-t", "hugetlbfs"]:
            target = "/" + str(Path(argv[-1]).relative_to(self.root))
            _kernel_write(
                mounts,
                mounts.read_text() + f"hugetlbfs {target} hugetlbfs rw,relatime,{argv[4]} 0 0\n",
            )
            return ""
        if argv[0] == "umount":
            target = "/" + str(Path(argv[1]).relative_to(self.root))
            lines = mounts.read_text().splitlines(keepends=True)
            keep = [ln for ln in lines if ln.split()[1] != target]
            if len(keep) == len(lines):
                raise CommandError(argv, 32, f"umount: {argv[1]}: not mounted.")
            _kernel_write(mounts, "".join(keep))
            return ""
        raise CommandError(argv, 127, f"{argv[0]}: not available in the fake kernel")

    def which(self, program: str) -> str | None:
        return None
