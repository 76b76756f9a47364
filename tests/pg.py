"""A private PostgreSQL server for the tests (``appliance.pgserver``), one database per test.

Use it from a conftest (``from tests.pg import pg_server, pg_dsn``):

- ``pg_server`` (session): the running :class:`PgServer`; ``restart()`` / ``stop()`` /
  ``start()`` drive it like an operator would (``pg_ctl``).
- ``pg_dsn``: a fresh, empty database for this test (dropped after it), as a
  ``postgresql:///DB?host=SOCKETDIR&user=postgres`` DSN.

Tests skip, with the reason, only where the binaries are missing or root has no ``postgres``
user to run the server as.
"""

from __future__ import annotations

import shutil

import pytest

from appliance.pgserver import PgServer, PgUnavailable, find_bindir, start_private_server

__all__ = ["PgServer", "find_bindir", "pg_dsn", "pg_server"]


def start_server() -> PgServer:
    """Start a private server or raise :class:`pytest.skip.Exception` saying what is missing."""
    try:
        return start_private_server()
    except PgUnavailable as exc:
        pytest.skip(str(exc))


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
