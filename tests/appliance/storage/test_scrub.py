"""Scrubbing and verification: corrupted warm and cold copies are found, alerted and
repaired from a good copy; the sample goes least recently verified first."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.appliance.storage.conftest import RUN, bagit_tool, digest, flip_byte, manager


def test_scrub_finds_a_corrupted_warm_copy_alerts_and_repairs_it(tiers):
    hot, warm, cold, policy = tiers
    alerts = []
    with manager(hot, policy, on_alert=lambda kind, msg, **kw: alerts.append((kind, kw.get("tier"), kw.get("rel")))) as m:
        m.gc()
        before = digest(warm)
        victim = next(rel for rel in before if rel.endswith(".bcl"))
        flip_byte(warm / victim, 5)
        res = m.scrub(sample=10_000)
        assert res["checked"] == sum(len(c) - 1 for c in m.catalog.all_copies().values())  # all warm+cold copies
        assert res["corrupt"] == [{"rel": victim, "tier": "warm", "problem": res["corrupt"][0]["problem"]}]
        assert "CRC32C" in res["corrupt"][0]["problem"] and res["repaired"] == 1
        assert ("storage_verify_failed", "warm", victim) in alerts
        assert digest(warm) == before
        f = m.catalog.file(victim)
        assert m.catalog.copies(f.id)["warm"].state == "verified"
        assert [e["kind"] for e in m.catalog.events()][-2:] == ["verify_failed", "repaired"]
        assert m.stats()["verification_failures"] == 1


def test_scrub_repairs_a_file_inside_a_cold_bag_and_the_bag_validates_again(tiers):
    hot, warm, cold, policy = tiers
    with manager(hot, policy) as m:
        m.gc()
        bag = cold / RUN / "intensities"
        victim = next((bag / "data").rglob("*.npy"))
        good = victim.read_bytes()
        flip_byte(victim, 100)
        assert subprocess.run([bagit_tool(), "--validate", "--quiet", str(bag)]).returncode != 0
        res = m.scrub(sample=10_000)
        assert len(res["corrupt"]) == 1 and res["corrupt"][0]["tier"] == "cold" and res["repaired"] == 1
        assert victim.read_bytes() == good
    assert subprocess.run([bagit_tool(), "--validate", "--quiet", str(bag)]).returncode == 0


def test_scrub_samples_the_least_recently_verified_copies_first(tiers):
    hot, warm, cold, policy = tiers
    with manager(hot, policy) as m:
        m.gc()
        first = m.catalog.oldest_verified(("warm", "cold"), 3)
        assert m.scrub(sample=3)["checked"] == 3
        after = m.catalog.oldest_verified(("warm", "cold"), 10_000)
        rescrubbed = {(f.rel, c.tier) for f, c in first}
        assert {(f.rel, c.tier) for f, c in after[-3:]} == rescrubbed  # now the most recent


def test_verify_run_reads_every_tier_and_brings_back_a_lost_hot_file(tiers):
    hot, warm, cold, policy = tiers
    with manager(hot, policy) as m:
        m.gc()
        lost = hot / RUN / "RunInfo.xml"
        good = lost.read_bytes()
        lost.unlink()
        res = m.verify(RUN)
        assert not res["ok"] and res["corrupt"] == [{"rel": f"{RUN}/RunInfo.xml", "tier": "hot", "problem": "missing"}]
        assert res["repaired"] == 1 and lost.read_bytes() == good
        assert set(res["tiers"]) == {"hot", "warm", "cold"} and res["bag_problems"] == []
        assert m.verify(RUN)["ok"]


def test_a_copy_that_keeps_failing_verification_is_held_then_retried_by_verify(tiers):
    """A destination that corrupts every write is not rewritten forever: after
    mover.max_attempts the copy is held (one alert), and an operator's verify retries it."""
    hot, warm, cold, policy = tiers
    before = digest(hot)
    alerts = []
    failing = [True]

    def corrupt_warm(store, tmp):  # the warm disk garbles what it is given
        if failing[0] and Path(store.local).resolve() == warm.resolve():
            flip_byte(store.local / tmp, 0)

    with manager(hot, policy, policy={"max_attempts": 2}, after_copy=corrupt_warm,
                 on_alert=lambda kind, msg, **kw: alerts.append((kind, kw.get("rel")))) as m:
        m.gc()
        held = [f.rel for f, c in m.catalog.in_state("corrupt", "warm")]
        assert held and all(c.attempts >= 2 for _, c in m.catalog.in_state("corrupt", "warm"))
        assert sorted(rel for kind, rel in alerts if kind == "storage_copy_held") == sorted(held)  # once each
        assert m.stats()["held_copies"] == len(held)
        failures = m.catalog.count_events("verify_failed")
        res = m.gc()  # held: not tried again, no new failures or alerts
        assert res["repaired"]["held"] == len(held) and res["repaired"]["repaired"] == 0
        assert m.catalog.count_events("verify_failed") == failures
        assert sum(kind == "storage_copy_held" for kind, _ in alerts) == len(held)
        assert digest(hot) == before  # nothing deleted on the strength of a bad copy
        failing[0] = False  # the operator fixed the warm storage
        res = m.verify(RUN)
        assert res["repaired"] == len(held) and res["held"] == 0
        assert m.stats()["held_copies"] == 0
        assert all(m.catalog.copies(m.catalog.file(rel).id)["warm"].state == "verified" for rel in held)
