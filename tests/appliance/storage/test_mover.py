"""The mover: verified copies, BagIt archives checked by the bagit tool, never deleting an
unverified copy, and a real mover process killed with SIGKILL mid-copy and resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.storage.catalog import Catalog
from tests.appliance.storage.conftest import RUN, bagit_tool, digest, flip_byte, manager, temps

REPO = Path(__file__).resolve().parents[3]


def test_full_cycle_copies_verify_archive_and_delete_only_with_two_copies(tiers, pristine_root):
    hot, warm, cold, policy = tiers
    before = digest(hot)
    with manager(hot, policy) as m:
        res = m.gc()
        assert res["errors"] == [] and res["scanned"]["runs"] == 1
        files = m.catalog.files()
        classes = {f.data_class for f in files}
        assert classes == {"raw", "basecalls", "intensities", "reports", "logs", "analysis"}
        copies = m.catalog.all_copies()
        for f in files:
            c = copies[f.id]
            assert c["warm"].state == "verified" and c["cold"].state == "verified", f.rel
            if f.data_class == "raw":
                assert c["hot"].state == "deleted"  # two verified copies elsewhere
            else:
                assert c["hot"].state == "verified"
            assert f.sha256  # from the bag's sha256 manifest
    # warm mirrors the data root byte for byte; nothing else is there (no temp, no duplicate)
    assert digest(warm) == before
    assert temps(hot, warm, cold) == []
    assert not (hot / RUN / "Raw").exists() and (hot / RUN / "RunInfo.xml").exists()
    for cls in ("raw", "basecalls", "intensities", "reports", "logs", "analysis"):
        bag = cold / RUN / cls
        assert (bag / "bagit.txt").exists() and (bag / "manifest-sha256.txt").exists()
        for rel, sha in digest(bag / "data").items():
            assert before[rel] == sha


def test_bags_validate_with_the_bagit_tool_and_it_catches_a_flipped_byte(tiers):
    hot, warm, cold, policy = tiers
    with manager(hot, policy) as m:
        assert m.gc()["errors"] == []
    bag = cold / RUN / "raw"
    ok = subprocess.run([bagit_tool(), "--validate", str(bag)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "is valid" in ok.stderr
    flip_byte(next((bag / "data").rglob("*.npy")), 200)
    bad = subprocess.run([bagit_tool(), "--validate", str(bag)], capture_output=True, text=True)
    assert bad.returncode != 0 and "invalid" in bad.stderr.lower()


def test_a_copy_corrupted_before_its_verify_is_discarded_and_the_source_kept(tiers):
    hot, warm, cold, policy = tiers
    before = digest(hot)
    alerts = []

    def corrupt(store, tmp):  # fault injection between the copy and the verify re-read
        flip_byte(store.local / tmp, 0)

    with manager(hot, policy, after_copy=corrupt, on_alert=lambda kind, msg, **kw: alerts.append(kind)) as m:
        res = m.gc()
        assert res["done"] == [] and res["errors"]
        copies = m.catalog.all_copies()
        assert all(c["hot"].state == "verified" for c in copies.values())
        assert {c["warm"].state for c in copies.values()} == {"corrupt"}
        assert all(c["cold"].state == "copying" and c["cold"].tmp is None for c in copies.values())
        assert m.catalog.count_events("verify_failed") >= len(copies)
        assert m.stats()["verification_failures"] >= len(copies)
    assert "storage_verify_failed" in alerts
    assert digest(hot) == before  # nothing deleted, nothing changed
    assert temps(hot, warm, cold) == []
    assert not (cold / RUN).exists() or not any((cold / RUN).iterdir())
    # without the fault the same catalog finishes the job: copies repaired, raw deleted
    with manager(hot, policy) as m:
        res = m.gc()
        assert res["errors"] == [] and res["repaired"]["repaired"] > 0
        m.gc()
        copies = m.catalog.all_copies()
        assert {c["warm"].state for c in copies.values()} == {"verified"}
    assert not (hot / RUN / "Raw").exists()


def test_a_corrupt_source_is_never_copied_as_good(tiers):
    hot, warm, cold, policy = tiers
    bcl = next((hot / RUN).rglob("*.bcl"))
    rel = bcl.relative_to(hot).as_posix()
    with manager(hot, policy) as m:
        m.scan()
        flip_byte(bcl, 10)
        res = m.gc()
        f = m.catalog.file(rel)
        c = m.catalog.copies(f.id)
        assert c["hot"].state == "corrupt" and c["warm"].state != "verified"
        assert res["repaired"]["unrepairable"] >= 1  # no good copy anywhere: reported, not invented
        assert not (warm / rel).exists()
        assert not (cold / RUN / "basecalls").exists()  # that class's bag is postponed
        assert (cold / RUN / "raw").exists()
    assert bcl.exists()


def _wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_mover_killed_with_sigkill_mid_copy_resumes_without_loss_or_duplicates(tiers, tmp_path):
    hot, warm, cold, _ = tiers
    from tests.appliance.storage.conftest import write_policy

    policy = write_policy(tmp_path / "slow.toml", str(warm), str(cold), bandwidth=2.0)
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'[output]\nroot = "{hot}"\n[storage]\nenabled = true\npolicy = "{policy}"\n')
    before = digest(hot)
    catalog = hot / ".storage" / "catalog.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "storage", "--config", str(cfg), "work"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def mid_copy():
            # a temp of an .npy (tens to hundreds of kB at 2 MB/s over 4 streams: a wide window)
            if not any(".npy.tmp." in p.name for p in temps(warm)) or not catalog.exists():
                return False
            with Catalog(catalog) as cat:
                return cat.tier_totals().get("warm", {}).get("verified_files", 0) >= 5

        deadline = time.monotonic() + 60
        while True:  # freeze it, and kill it only if it is frozen mid-copy (no race with a rename)
            _wait_for(mid_copy, deadline - time.monotonic(), "the mover to be mid-copy")
            proc.send_signal(signal.SIGSTOP)
            if any(".npy.tmp." in p.name for p in temps(warm)):
                proc.send_signal(signal.SIGKILL)
                break
            proc.send_signal(signal.SIGCONT)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert temps(warm), "the kill should land mid-copy"
    assert digest(hot) == before  # nothing deleted early (no file had two verified copies yet)
    with Catalog(catalog) as cat:
        assert cat.in_state("copying")  # the intent of the copy in flight is on record
        half = cat.tier_totals()["warm"]["verified_files"]
        assert 5 <= half < len(cat.files())
    with manager(hot, policy, policy={"bandwidth_mb_s": 0.0}) as m:
        res = m.gc()
        assert res["recovered"]["temps_removed"] >= 1 and res["errors"] == []
        files = m.catalog.files()
        copies = m.catalog.all_copies()
        assert all(copies[f.id]["warm"].state == "verified" and copies[f.id]["cold"].state == "verified" for f in files)
        assert all(copies[f.id]["hot"].state == "deleted" for f in files if f.data_class == "raw")
        assert len(files) == len(before) and {f.rel for f in files} == set(before)
    assert temps(hot, warm, cold) == []
    assert digest(warm) == before  # every file exactly once, byte-identical
    for bag in (cold / RUN).iterdir():
        assert subprocess.run([bagit_tool(), "--validate", "--quiet", str(bag)]).returncode == 0


def test_a_second_mover_waits_for_the_lock(tiers):
    hot, warm, cold, policy = tiers
    from appliance.storage import StorageError

    with manager(hot, policy) as m1, manager(hot, policy) as m2:
        assert m1.lock.acquire(1)
        try:
            with pytest.raises(StorageError, match=f"another mover holds .*pid {os.getpid()}"):
                m2._locked(lambda: None, timeout=0.2)
        finally:
            m1.lock.release()
        assert m2._locked(lambda: 7) == 7
