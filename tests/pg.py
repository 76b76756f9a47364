"""A private PostgreSQL server for the tests: ``initdb`` + ``pg_ctl`` in a temporary folder,
listening on a unix socket only (no TCP), one database per test.

Use it from a conftest (``from tests.pg import pg_server, pg_dsn``):

- ``pg_server`` (session): the running :class:`PgServer`; ``restart()`` / ``stop()`` /
  ``start()`` drive it like an operator would (``pg_ctl``).
- ``pg_dsn``: a fresh, empty database for this test (dropped after it), as a
  ``postgresql:///DB?host=SOCKETDIR&user=postgres`` DSN.

The server runs as the ``postgres`` user when the tests run as root (postgres refuses root);
as the current user otherwise. Tests skip, with the reason, only where the binaries are missing
or root has no ``postgres`` user to run the server as.
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

import pytest

__all__ = ["PgServer", "find_bindir", "pg_dsn", "pg_server"]


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


def start_server() -> PgServer:
    """Start a private server or raise :class:`pytest.skip.Exception` saying what is missing."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install -e '.[dev]'")
    run_as = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run the server as (postgres refuses root)")
        run_as = "postgres"
    folder = Path(tempfile.mkdtemp(prefix="pg-"))  # short: a unix socket path has a 107-byte limit
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


@pytest.fixture(scope="session")
def pg_server():
    server = start_server()
    try:
        yield server
    finally:
        try:
            if server.running():
                server.stop()
        finally:
            shutil.rmtree(server.folder, ignore_errors=True)


@pytest.fixture
def pg_dsn(pg_server):
    if not pg_server.running():  # a test that stopped it must not fail the next ones
        pg_server.start()
    name = pg_server.create_database()
    yield pg_server.dsn(name)
    if not pg_server.running():
        pg_server.start()
    pg_server.drop_database(name)
