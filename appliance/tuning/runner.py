"""The one door through which tuning changes a machine: writes and program runs.

Everything that changes state (a kernel attribute, a config file, ``mount``, ``grubby``,
``systemctl``) goes through a :class:`Runner`, so tests can substitute a fake kernel for a
copied /proc and /sys tree, or make the second write fail to simulate a crash.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["Runner", "SystemRunner", "CommandError"]


class CommandError(RuntimeError):
    """A program run through the runner failed; carries its argv, status and stderr."""

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        super().__init__(f"{' '.join(argv)} exited with status {returncode}: {stderr.strip()}")
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


class Runner:
    """Interface of the state-changing operations; :class:`SystemRunner` does them for real."""

    def write_attr(self, path: Path, value: str) -> None:
        """Write ``value`` to an existing kernel attribute file in a single ``write()``."""
        raise NotImplementedError

    def write_file(self, path: Path, text: str, mode: int = 0o644) -> None:
        """Atomically replace a configuration file (temporary file, fsync, rename)."""
        raise NotImplementedError

    def remove_file(self, path: Path) -> None:
        """Remove a configuration file if it exists."""
        raise NotImplementedError

    def make_dir(self, path: Path) -> None:
        raise NotImplementedError

    def remove_dir(self, path: Path) -> None:
        """Remove an empty directory (one that tuning created)."""
        raise NotImplementedError

    def run(self, argv: list[str]) -> str:
        """Run a program, return its stdout; raise :class:`CommandError` on failure."""
        raise NotImplementedError

    def which(self, program: str) -> str | None:
        """Full path of ``program`` on PATH, or ``None``."""
        raise NotImplementedError


class SystemRunner(Runner):
    """Performs the operations on the real filesystem and runs real programs.

    With ``allow_programs=False`` (what the engine uses when the root is not ``/``) file
    operations still happen under that root, but programs are refused: ``mount`` or
    ``systemctl`` would act on the live machine, not on the tree.
    """

    def __init__(self, allow_programs: bool = True) -> None:
        self.allow_programs = allow_programs

    def write_attr(self, path: Path, value: str) -> None:
        # No O_CREAT: a missing attribute is an error, never a new file. O_TRUNC is ignored
        # by procfs/sysfs and makes plain-file captures behave like them.
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        try:
            data = value.encode()
            if os.write(fd, data) != len(data):
                raise OSError(f"short write to {path}")
        finally:
            os.close(fd)

    def write_file(self, path: Path, text: str, mode: int = 0o644) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        _fsync_dir(path.parent)

    def remove_file(self, path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            return
        _fsync_dir(path.parent)

    def make_dir(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)

    def remove_dir(self, path: Path) -> None:
        try:
            path.rmdir()
        except FileNotFoundError:
            pass

    def run(self, argv: list[str]) -> str:
        if not self.allow_programs:
            raise CommandError(
                argv,
                -1,
                "not run: the root is not /, and programs act on the "
                "live machine (run as root on the machine itself)",
            )
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise CommandError(argv, proc.returncode, proc.stderr)
        return proc.stdout

    def which(self, program: str) -> str | None:
        return shutil.which(program)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
