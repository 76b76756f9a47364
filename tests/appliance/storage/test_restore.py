"""Restore: the best verified copy first, a bad copy skipped for the next one, every file
verified on arrival; the CLI reports a restore that could not verify everything."""

from __future__ import annotations

import shutil

from tests.appliance.storage.conftest import RUN, digest, flip_byte, manager, write_policy


def test_restore_prefers_warm_and_falls_back_to_cold_for_a_bad_warm_copy(tiers, tmp_path):
    hot, warm, cold, _ = tiers
    before = digest(hot)
    policy = write_policy(tmp_path / "p.toml", str(warm), str(cold), ages={
        cls: {"hot_delete": 0} for cls in ("raw", "basecalls", "intensities", "reports", "logs", "analysis")})
    with manager(hot, policy) as m:
        assert m.gc()["errors"] == []
        assert not (hot / RUN).exists()
        bad = next(rel for rel in before if rel.endswith(".npy") and "/Raw/" not in rel)
        flip_byte(warm / bad, 50)
        res = m.restore(RUN)
        assert res["ok"] and res["restored"] == len(before) and res["failed"] == []
        assert digest(hot) == before
        f = m.catalog.file(bad)
        assert m.catalog.copies(f.id)["warm"].state == "corrupt"  # noticed on the way, repaired by the next pass
        assert m.gc()["repaired"]["repaired"] == 1
        assert (warm / bad).read_bytes() == (hot / bad).read_bytes()


def test_restore_without_any_good_copy_says_which_files_failed(tiers, tmp_path):
    hot, warm, cold, _ = tiers
    policy = write_policy(tmp_path / "p.toml", str(warm), "", copies=1, ages={"raw": {"cold": "never", "hot_delete": 0}})
    with manager(hot, policy) as m:
        m.gc()
        raw = sorted(p.relative_to(warm).as_posix() for p in (warm / RUN / "Raw").iterdir())
        shutil.rmtree(warm / RUN / "Raw")
        res = m.restore(RUN)
        assert not res["ok"]
        assert sorted(x["rel"] for x in res["failed"]) == raw
        assert "missing" in res["failed"][0]["why"]
        assert res["already"] == len(m.catalog.files()) - len(raw)
