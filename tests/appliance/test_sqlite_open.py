"""Opening one fresh SQLite file from several processes at once (appliance._sqlite.connect_wal):
the switch to WAL mode is not covered by the busy timeout and met "database is locked" (about
one round in ten before the retry); it is retried, so every process opens every file. Real
processes, started together at a barrier for each fresh file."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import threading
from pathlib import Path

import pytest

from appliance._sqlite import connect_wal, migrate

PROCS = 8
ROUNDS = 40


class OpenError(Exception):
    pass


def _open_each(folder: str, barrier, out) -> None:
    """For each round: wait for the others, then open (create) that round's fresh file."""
    for r in range(ROUNDS):
        try:
            barrier.wait(60)
            conn = connect_wal(Path(folder) / f"r{r}.sqlite", what="the test file", error=OpenError, busy_timeout_s=10.0)
            try:
                migrate(conn, threading.RLock(), ["CREATE TABLE t (x INTEGER)"], what="the test file", error=OpenError)
                conn.execute("INSERT INTO t VALUES (1)")
                out.put((r, conn.execute("PRAGMA journal_mode").fetchone()[0]))
            finally:
                conn.close()
        except Exception as exc:  # reported to the test, which fails on it
            out.put((r, f"{type(exc).__name__}: {exc}"))


def test_processes_opening_a_fresh_file_at_once_all_get_it_in_wal_mode(tmp_path):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    barrier = ctx.Barrier(PROCS)
    procs = [ctx.Process(target=_open_each, args=(str(tmp_path), barrier, out)) for _ in range(PROCS)]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=120) for _ in range(PROCS * ROUNDS)]
    finally:
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()
    failed = sorted(r for r in results if r[1] != "wal")
    assert failed == [], f"{len(failed)} of {len(results)} opens failed, e.g. {failed[:3]}"
    for r in range(ROUNDS):
        with sqlite3.connect(tmp_path / f"r{r}.sqlite") as c:
            assert c.execute("SELECT count(*) FROM t").fetchone()[0] == PROCS


def test_a_file_held_locked_past_the_retries_is_refused_with_a_message(tmp_path):
    path = tmp_path / "held.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("CREATE TABLE t (x)")
        holder.execute("BEGIN EXCLUSIVE")  # the switch to WAL needs the file to itself
        with pytest.raises(OpenError, match=r"held\.sqlite is locked by another process.*0\.3 s"):
            connect_wal(path, what="the test file", error=OpenError, busy_timeout_s=0.3)
    finally:
        holder.close()
