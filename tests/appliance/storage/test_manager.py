"""The storage manager over real tiers: the plan by age and run state, full offload and
restore round trips (local, file:// and memory:// tiers), a nearly full tmpfs hot tier that
evicts in policy order and throttles admission, the tierer thread, stats and control commands."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from appliance.storage import StorageManager, StorageThrottled, admission_check, control_commands, load_policy
from tests.appliance.storage.conftest import RUN, digest, manager, write_policy


def test_plan_waits_for_age_and_run_state(tiers, tmp_path):
    hot, warm, cold, _ = tiers
    policy = write_policy(tmp_path / "p.toml", str(warm), str(cold), ages={"raw": {"warm": "1h", "cold": "7d", "hot_delete": "1d"}})
    with manager(hot, policy) as m:
        m.scan()
        now = time.time()
        plan = m.plan(now)
        assert plan and all(a.data_class != "raw" for a in plan)
        raw_later = [a for a in m.plan(now + 2 * 3600) if a.data_class == "raw"]
        assert {a.op for a in raw_later} == {"copy"} and {a.tier for a in raw_later} == {"warm"}
        raw_much_later = [a for a in m.plan(now + 8 * 86400) if a.data_class == "raw"]
        assert {a.op for a in raw_much_later} == {"copy", "archive"}  # deletes wait for the copies


def test_a_running_run_is_copied_cycle_by_cycle_but_never_deleted(tmp_path, pristine_root):
    hot = tmp_path / "hot"
    shutil.copytree(pristine_root / RUN, hot / RUN)
    for name in ("Manifest/run.json", "CopyComplete.txt", "RTAComplete.txt"):
        (hot / RUN / name).unlink()
    policy = write_policy(tmp_path / "p.toml", str(tmp_path / "warm"), ages={
        cls: {"when": "running", "hot_delete": "never"} for cls in ("raw", "basecalls", "intensities", "reports", "logs")})
    with manager(hot, policy) as m:
        res = m.gc()
        assert res["errors"] == []
        files = m.catalog.files()
        # only what the cycle manifests list: no Raw/, no markers, no .state/ until complete
        assert files and all(f.origin == "manifest" and "/Raw/" not in f.rel for f in files)
        assert all(c["hot"].state == "verified" and c["warm"].state == "verified" for c in m.catalog.all_copies().values())
        assert m.ls()[0]["state"] == "running"


def test_full_offload_then_restore_round_trips_byte_identical(tiers, tmp_path):
    hot, warm, cold, _ = tiers
    before = digest(hot)
    # every class leaves hot, and warm too: the only copy left is the cold BagIt archive
    policy = write_policy(tmp_path / "p.toml", str(warm), str(cold), copies=1, ages={
        cls: {"hot_delete": 0, "warm_delete": 0} for cls in ("raw", "basecalls", "intensities", "reports", "logs", "analysis")})
    with manager(hot, policy) as m:
        assert m.gc()["errors"] == []
        copies = m.catalog.all_copies()
        assert {c["hot"].state for c in copies.values()} == {"deleted"}
        assert {c["warm"].state for c in copies.values()} == {"deleted"}
        assert {c["cold"].state for c in copies.values()} == {"verified"}
        assert not (hot / RUN).exists() and not any(p.is_file() for p in warm.rglob("*"))
        assert m.ls()[0]["state"] == "analysed"
        res = m.restore(RUN)
        assert res["ok"] and res["restored"] == len(before) and res["bag_problems"] == []
        assert digest(hot) == before
        assert m.catalog.run(RUN)["pinned_until"] > time.time() + 86400
        again = m.gc()  # pinned: the policy does not delete the restored run straight away
        assert not [a for a in again["done"] if a["op"] == "delete" and a["tier"] == "hot"]
        assert digest(hot) == before
        assert m.verify(RUN)["ok"]


def test_restore_of_an_unknown_run_or_without_copies_is_a_clear_error(tiers):
    hot, warm, cold, policy = tiers
    from appliance.storage import StorageError

    with manager(hot, policy) as m:
        with pytest.raises(StorageError, match="not in the catalog.*storage ls"):
            m.restore("NOPE")
        with pytest.raises(StorageError, match="cannot restore to 'cold'"):
            m.restore(RUN, "cold")


@pytest.fixture
def memory_url():
    import fsspec

    root = f"apptest-{uuid.uuid4().hex[:8]}"
    yield f"memory://{root}"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{root}"):
        fs.rm(f"/{root}", recursive=True)


def test_memory_url_warm_tier_through_fsspec(tiers, tmp_path, memory_url):
    hot, _, _, _ = tiers
    import fsspec

    before = digest(hot)
    policy = write_policy(tmp_path / "p.toml", f"{memory_url}/warm", "", copies=1, ages={
        cls: {"cold": "never", "hot_delete": 0} for cls in ("raw", "basecalls", "intensities", "reports", "logs", "analysis")})
    with manager(hot, policy) as m:
        assert m.gc()["errors"] == []
        assert not (hot / RUN).exists()
        fs = fsspec.filesystem("memory")
        some = next(rel for rel in before if rel.endswith(".bcl"))
        import hashlib

        assert hashlib.sha256(fs.cat(f"/{memory_url[len('memory://'):]}/warm/{some}")).hexdigest() == before[some]
        assert m.stats()["tiers"]["warm"]["files"] == len(before)
        assert m.verify(RUN)["ok"]
        assert m.restore(RUN)["ok"]
    assert digest(hot) == before


def test_file_url_warm_and_memory_url_cold_bags(tiers, tmp_path, memory_url):
    hot, warm, _, _ = tiers
    import fsspec

    before = digest(hot)
    policy = write_policy(tmp_path / "p.toml", f"file://{warm}", f"{memory_url}/cold")
    with manager(hot, policy) as m:
        assert m.gc()["errors"] == []
        fs = fsspec.filesystem("memory")
        bag = f"/{memory_url[len('memory://'):]}/cold/{RUN}/raw"
        assert fs.exists(f"{bag}/bagit.txt") and fs.exists(f"{bag}/manifest-sha256.txt")
        manifest = fs.cat(f"{bag}/manifest-sha256.txt").decode()
        raw = [rel for rel in before if "/Raw/" in rel]
        assert all(f"{before[rel]}  data/{rel}" in manifest for rel in raw)
        assert not (hot / RUN / "Raw").exists()
        shutil.rmtree(warm / RUN / "Raw")  # the warm copies are lost: cold (memory://) must serve
        res = m.restore(RUN)
        assert res["ok"], res
        assert m.catalog.count_events("verify_failed") >= len(raw)  # the missing warm copies were noticed
    assert digest(hot) == before


def test_a_rewritten_report_is_copied_again(tiers):
    hot, warm, cold, policy = tiers
    with manager(hot, policy) as m:
        m.gc()
        cfg = hot / ".state" / RUN / "config.json"
        cfg.write_text(cfg.read_text() + "\n")
        m.gc()
        assert (warm / ".state" / RUN / "config.json").read_bytes() == cfg.read_bytes()
        f = m.catalog.file(f".state/{RUN}/config.json")
        assert {c.state for c in m.catalog.copies(f.id).values()} == {"verified"}


def test_tierer_thread_starts_works_and_stops(tiers, no_leaked_threads):
    hot, warm, cold, policy = tiers
    with manager(hot, policy) as m:
        m.start()
        m.start()  # idempotent
        deadline = time.monotonic() + 60
        while m.stats()["tiers"].get("cold", {}).get("files", 0) < len(m.catalog.files()) or not m.catalog.files():
            assert time.monotonic() < deadline, "the tierer did not archive the run"
            time.sleep(0.05)
        assert m.stats()["running"]
        m.stop()
        assert not m.stats()["running"]


def test_wake_runs_the_next_pass_now(tiers, no_leaked_threads):
    """A run that ends under `appliance serve` is catalogued at once, not an interval later."""
    hot, warm, cold, policy = tiers
    with manager(hot, policy, policy={"interval_s": 3600.0}) as m:
        m.start()
        deadline = time.monotonic() + 60
        while not (warm / ".state" / RUN / "config.json").exists():  # the first pass, at start
            assert time.monotonic() < deadline, "the tierer's first pass did not copy the run"
            time.sleep(0.05)
        cfg = hot / ".state" / RUN / "config.json"
        cfg.write_text(cfg.read_text() + "\n")
        m.wake()
        while (warm / ".state" / RUN / "config.json").read_bytes() != cfg.read_bytes():
            assert time.monotonic() < deadline, "wake() did not start a pass"
            time.sleep(0.05)
        m.stop()


def test_stats_shape_and_control_commands(tiers):
    hot, warm, cold, policy = tiers
    from appliance.control import CommandError

    with manager(hot, policy) as m:
        cmds = control_commands(m)
        assert set(cmds) == {"storage.ls", "storage.status", "storage.verify", "storage.restore", "storage.gc", "storage.scrub"}
        plan = cmds["storage.gc"].handler({"dry_run": True})
        assert plan["dry_run"] and {a["op"] for a in plan["plan"]} == {"copy", "archive"}
        assert not warm.exists()
        done = cmds["storage.gc"].handler({})
        assert done["errors"] == []
        (run,) = cmds["storage.ls"].handler({})["runs"]
        assert run["run"] == RUN and run["state"] == "analysed" and run["verified"]["cold"] == run["files"]
        files = cmds["storage.ls"].handler({"run": RUN})["files"]
        assert files[0]["copies"]["warm"]["state"] == "verified"
        st = cmds["storage.status"].handler({})
        assert set(st["tiers"]) == {"hot", "warm", "cold"} and st["level"] == "ok"
        assert {"bytes", "files", "free_bytes", "total_bytes", "url", "corrupt_files"} <= set(st["tiers"]["warm"])
        assert 0 < st["hot_free_fraction"] <= 1 and st["pending_moves"] == 0 and st["verification_failures"] == 0
        assert cmds["storage.verify"].handler({"run": RUN})["ok"]
        assert cmds["storage.scrub"].handler({"sample": 5})["checked"] == 5
        assert cmds["storage.restore"].handler({"run": RUN})["ok"]
        with pytest.raises(CommandError) as e:
            cmds["storage.verify"].handler({"run": "NOPE"})
        assert e.value.code == "storage_error"


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 24 MiB tmpfs mounted at tmp_path/hot (root only; unmounted afterwards)."""
    mnt = tmp_path / "hot"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'mount failed'}): needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill_to(root: Path, free_fraction: float, name: str = "ballast") -> None:
    """Grow a ballast file in ``root`` (not a run: never catalogued) to leave ``free_fraction``."""
    import os

    st = os.statvfs(root)
    total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    want = int(free - free_fraction * total)
    with open(root / name, "ab") as f:
        f.write(b"\0" * max(0, want))


def test_nearly_full_hot_tier_evicts_in_policy_order_and_throttles_admission(small_tmpfs, pristine_root, tmp_path):
    hot = small_tmpfs
    shutil.copytree(pristine_root / RUN, hot / RUN)
    shutil.copytree(pristine_root / ".state" / RUN, hot / ".state" / RUN)
    policy = write_policy(tmp_path / "p.toml", str(tmp_path / "warm"), str(tmp_path / "cold"), ages={"raw": {"hot_delete": "never"}},
                          extra="[watermarks]\nhigh = 0.5\ncritical = 0.2\n")
    alerts = []
    with manager(hot, policy, on_alert=lambda kind, msg, **kw: alerts.append((kind, kw.get("cleared", False)))) as m:
        assert m.gc()["errors"] == [] and m.hot_level() == "ok"
        assert (hot / RUN / "Raw").is_dir()  # nothing deleted: no rule asks for it while there is room
        _fill_to(hot, 0.45)
        res = m.gc()
        evicted = res["evicted"]
        assert evicted and m.hot_usage()[2] >= 0.5
        ranks = [m.policy.evict_rank(m.catalog.file(rel).data_class) for rel in evicted]
        assert ranks == sorted(ranks) and ranks[0] == 0  # raw first, then the next class
        assert (hot / RUN / "RunInfo.xml").exists()  # the valuable classes stay
        for rel in evicted:
            f = m.catalog.file(rel)
            assert sum(c.state == "verified" for t, c in m.catalog.copies(f.id).items() if t != "hot") >= 2
        assert ("hot_tier_high", False) in alerts
        # past the critical watermark with nothing left worth evicting first: new runs are refused
        from tests.runs import small_run_config

        cfg = small_run_config(hot, "storage.enabled=true", f'storage.warm="{tmp_path / "warm"}"', "storage.high=0.5", "storage.critical=0.2", "control.enabled=false")
        admission_check(cfg)  # room enough now
        _fill_to(hot, 0.1, "ballast2")
        assert m.hot_level() == "critical" and ("hot_tier_critical", False) in alerts
        with pytest.raises(StorageThrottled, match=r"is \d+\.\d% free .*below the critical watermark 20%.*appliance storage gc"):
            admission_check(cfg)
        from appliance.pipeline import Supervisor, SupervisorError

        with pytest.raises(SupervisorError, match="critical watermark"):
            Supervisor(cfg, run_id="RUN2").run()
        assert not (hot / "RUN2").exists()  # refused before anything was written
        (hot / "ballast2").unlink()
        (hot / "ballast").unlink()
        m.hot_level()
        assert ("hot_tier_critical", True) in alerts or ("hot_tier_high", True) in alerts


def test_admission_is_not_checked_when_storage_is_disabled(tmp_path):
    from tests.runs import small_run_config

    assert admission_check(small_run_config(tmp_path)) is None
    assert admission_check(small_run_config(tmp_path, "storage.high=0.99", "storage.critical=0.99")) is None


def test_manager_from_config_uses_the_data_root_and_default_catalog(tmp_path):
    from appliance.config import load_config

    cfg = load_config(overrides=[f'output.root="{tmp_path}"', f'storage.warm="{tmp_path}/w"'])
    with StorageManager.from_config(cfg) as m:
        assert m.root == tmp_path.resolve() and m.catalog_path == tmp_path.resolve() / ".storage" / "catalog.sqlite"
        assert set(m.stores) == {"hot", "warm"} and m.policy.source == "<embedded default>"
        assert load_policy().rules == m.policy.rules


def test_prometheus_gauges_from_stats(tiers):
    from prometheus_client import CollectorRegistry, generate_latest

    from appliance.metrics import StorageCollector

    hot, warm, cold, policy = tiers
    with manager(hot, policy) as m:
        m.gc()
        reg = CollectorRegistry(auto_describe=False)
        reg.register(StorageCollector(m.stats))
        text = generate_latest(reg).decode()
        n = len(m.catalog.files())
        assert f'appliance_storage_files{{tier="warm"}} {float(n)}' in text
        assert "appliance_storage_pending_moves 0.0" in text
        assert "appliance_storage_held_copies 0.0" in text
        assert "appliance_storage_verification_failures_total 0.0" in text
        assert "appliance_storage_hot_free_fraction" in text
