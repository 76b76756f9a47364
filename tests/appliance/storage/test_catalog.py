"""The catalog: a real SQLite file, its migrations, copy states, and several processes
writing to it at once."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3

import pytest

from appliance.storage.catalog import Catalog, CatalogError


def test_schema_is_migrated_once_and_in_wal_mode(tmp_path):
    path = tmp_path / "c.sqlite"
    Catalog(path).close()
    with Catalog(path) as cat:
        assert cat._q("PRAGMA user_version")[0][0] == 1
        assert cat._q("PRAGMA journal_mode")[0][0] == "wal"


def test_a_newer_schema_is_refused_with_a_clear_error(tmp_path):
    path = tmp_path / "c.sqlite"
    Catalog(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(CatalogError, match="schema version 99, newer than.*upgrade the appliance"):
        Catalog(path)


def test_files_copies_and_summaries(tmp_path):
    with Catalog(tmp_path / "c.sqlite") as cat:
        cat.upsert_run("R", complete=False, analysed=False, completed_at=None)
        fid = cat.add_file("R", "R/a.bcl", "basecalls", 10, "0000abcd", 1.0, "manifest", "R/a.bcl")
        assert cat.add_file("R", "R/a.bcl", "basecalls", 99, "ffffffff", 2.0, "manifest", "R/a.bcl") == fid  # known: unchanged
        assert cat.file("R/a.bcl").size == 10
        assert cat.copies(fid)["hot"].state == "verified"
        cat.set_copy(fid, "warm", "copying", url="R/a.bcl", tmp="R/.a.bcl.tmp.1.0", attempt=True)
        assert [(f.rel, c.tier, c.tmp) for f, c in cat.in_state("copying")] == [("R/a.bcl", "warm", "R/.a.bcl.tmp.1.0")]
        cat.set_copy(fid, "warm", "verified", tmp=None, crc32c="0000abcd", verified=True)
        c = cat.copies(fid)["warm"]
        assert c.state == "verified" and c.tmp is None and c.verified_at and c.attempts == 0  # the count restarts at each verification
        cat.upsert_run("R", complete=True, analysed=False, completed_at=5.0)
        cat.upsert_run("R", complete=False, analysed=False, completed_at=None)  # never goes back
        assert cat.run("R")["complete"] == 1 and cat.run("R")["completed_at"] == 5.0
        totals = cat.tier_totals()
        assert totals["warm"] == {"verified_files": 1, "verified_bytes": 10}
        (row,) = cat.run_summary()
        assert row["files"] == 1 and row["tiers"] == {"hot": {"verified": 1}, "warm": {"verified": 1}}
        cat.update_content(fid, 12, "00001111", 3.0)  # a rewritten report: other copies go stale
        assert cat.copies(fid)["warm"].state == "stale" and cat.copies(fid)["hot"].crc32c == "00001111"
        cat.event("verify_failed", "bad", run="R", rel="R/a.bcl", tier="warm")
        assert cat.count_events("verify_failed") == 1 and cat.events()[0]["message"] == "bad"


def _writer(path: str, prefix: str, n: int) -> None:
    with Catalog(path) as cat:
        cat.upsert_run(prefix, complete=True, analysed=False, completed_at=1.0)
        for i in range(n):
            fid = cat.add_file(prefix, f"{prefix}/f{i}", "raw", i, f"{i:08x}", 1.0, "scan", f"{prefix}/f{i}")
            cat.set_copy(fid, "warm", "verified", url=f"{prefix}/f{i}", verified=True)


def test_several_processes_write_at_once(tmp_path):
    path = str(tmp_path / "c.sqlite")
    Catalog(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, f"P{k}", 150)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    with Catalog(path) as cat:
        assert len(cat.files()) == 450
        assert cat.tier_totals()["warm"]["verified_files"] == 450
