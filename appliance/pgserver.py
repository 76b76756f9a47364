"""A private PostgreSQL server in a folder: ``initdb`` + ``pg_ctl``, on a unix socket only.

``appliance lab simulate`` starts one when the config names no PostgreSQL ledger, and the
tests start one per session (tests/pg.py). The server runs as the ``postgres`` user when we
are root (postgres refuses to run as root), as the current user otherwise, with ``fsync``
off: its data need not survive a power cut. A lab's real server is set up as docs/lab.md
says, not with this.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

__all__ = ["PgServer", "PgUnavailable", "find_bindir", "start_private_server"]


class PgUnavailable(RuntimeError):
    """No private server can be started here: the message says what is missing."""


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` with initdb and pg_ctl, or the ones on PATH."""
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0, reverse=True):
        if (Path(d) / "initdb").is_file() and (Path(d) / "pg_ctl").is_file():
            return Path(d)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


class PgServer:
    """One private server: data in ``folder/data``, its socket in ``folder``."""

    def __init__(self, bindir: Path, folder: Path, run_as: str | None) -> None:
        self.bindir, self.folder, self.run_as = bindir, folder, run_as
        self.data = folder / "data"
        self.log = folder / "log"

    # -- driving it ------------------------------------------------------------------------------

    def _cmd(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        full = [str(self.bindir / argv[0]), *argv[1:]]
        if self.run_as:
            full = ["runuser", "-u", self.run_as, "--", *full]
        out = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr.strip()}\n{log}")
        return out

    def init(self) -> None:
        self._cmd("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        # unix socket only; fsync off: a test server's data need not survive a power cut
        self._cmd("pg_ctl", "-D", str(self.data), "-o", f"-k {self.folder} -c listen_addresses='' -c fsync=off",
                  "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._cmd("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every client connection is terminated."""
        self._cmd("pg_ctl", "-D", str(self.data), "-m", "fast", "-o", f"-k {self.folder} -c listen_addresses='' -c fsync=off",
                  "-l", str(self.log), "-w", "-t", "60", "restart")

    def running(self) -> bool:
        full = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "status"]
        if self.run_as:
            full = ["runuser", "-u", self.run_as, "--", *full]
        return subprocess.run(full, capture_output=True).returncode == 0

    # -- databases -------------------------------------------------------------------------------

    def dsn(self, db: str = "postgres") -> str:
        return f"postgresql:///{db}?host={self.folder}&user=postgres"

    def sql(self, statement: str, db: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self.dsn(db), autocommit=True) as c:
            c.execute(statement)

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.sql(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_private_server(prefix: str = "pg-") -> PgServer:
    """Start a private server in a new temporary folder (short: a unix socket path has a
    107-byte limit), or raise :class:`PgUnavailable` naming what is missing."""
    bindir = find_bindir()
    if bindir is None:
        raise PgUnavailable("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql "
                            "(bash scripts/system-deps installs it)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise PgUnavailable("psycopg is not installed: pip install 'flowcell-appliance[lab]'") from None
    run_as = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise PgUnavailable("running as root and there is no postgres user to run the server as (postgres refuses root)") from None
        run_as = "postgres"
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    if run_as:
        shutil.chown(folder, run_as)
    server = PgServer(bindir, folder, run_as)
    try:
        server.init()
        server.start()
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return server
