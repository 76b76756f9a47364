"""The tiering policy: the embedded default, durations, classes, and validation errors that
name the key and the allowed values."""

from __future__ import annotations

import pytest

from appliance.config import ConfigError, load_config
from appliance.storage.policy import NEVER, PolicyError, classify, load_policy, parse_duration


def test_embedded_default_policy_loads_with_its_documented_values():
    p = load_policy()
    assert p.source == "<embedded default>"
    assert p.verified_copies == 2 and p.high == 0.15 and p.critical == 0.05
    assert p.rules["raw"].warm == 3600 and p.rules["raw"].cold == 7 * 86400
    assert p.rules["raw"].hot_delete == 86400 and p.rules["raw"].warm_delete == NEVER
    assert p.rules["analysis"].when == "analysed"
    assert p.evict_order[0] == "raw" and set(p.evict_order) == set(p.rules)
    assert not p.configured("warm") and p.configured("hot")
    assert p.streams == 4 and p.max_attempts == 5


@pytest.mark.parametrize("text, seconds", [(0, 0.0), (90, 90.0), ("30s", 30.0), ("15m", 900.0), ("1h", 3600.0), ("7d", 604800.0), ("1.5h", 5400.0)])
def test_durations(text, seconds):
    assert parse_duration(text, "k") == seconds


def test_never_is_beyond_any_age_and_valid_json():
    import json

    assert parse_duration("never", "k") == NEVER > 1e15
    assert json.loads(json.dumps(load_policy().rules["raw"].__dict__))["warm_delete"] == NEVER


@pytest.mark.parametrize("rel, cls", [
    ("R/Raw/s_1101_c1_ch0.npy", "raw"),
    ("R/Data/Intensities/L001/C1.1/s_1_1101.npy", "intensities"),
    ("R/Data/Intensities/intensities.json", "intensities"),
    ("R/Data/Intensities/L001/s_1_1101.locs", "basecalls"),
    ("R/Data/Intensities/BaseCalls/L001/C1.1/s_1_1101.bcl", "basecalls"),
    ("R/Manifest/run.json", "basecalls"),
    ("R/RunInfo.xml", "basecalls"),
    ("R/CopyComplete.txt", "basecalls"),
    (".state/R/report.html", "reports"),
    (".state/R/writer-0.summary.json", "reports"),
    (".state/R/stats.jsonl", "logs"),
    ("Analysis/R/align-qc/qc.json", "analysis"),
])
def test_classify(rel, cls):
    assert classify(rel) == cls


@pytest.mark.parametrize("body, key, allowed", [
    ('[rules.raw]\nwhen = "someday"\n', "rules.raw.when", "running, complete, offloaded, analysed"),
    ('[rules.raw]\nwarm = "soon"\n', "rules.raw.warm", '"7d" or "never"'),
    ("[rules.raw]\nwarm = -1\n", "rules.raw.warm", "a number >= 0"),
    ("[copies]\nverified = 0\n", "copies.verified", "1 or 2"),
    ("[watermarks]\nhigh = 0.1\ncritical = 0.2\n", "watermarks.critical", "at most watermarks.high"),
    ("[watermarks]\nhigh = 1.5\n", "watermarks.high", "0 to 0.99"),
    ('[evict]\norder = ["raw"]\n', "evict.order", "each data class once"),
    ("[mover]\nbandwidth_mb_s = -5\n", "mover.bandwidth_mb_s", "0 (unlimited)"),
    ("[mover]\nmax_attempts = 0\n", "mover.max_attempts", "an integer 1..1000"),
    ("[tiers]\nwarm = 3\n", "tiers.warm", "fsspec URL"),
    ('[rules.raw]\nwhen = "running"\nhot_delete = 0\n', "rules.raw.when", "never deleted"),
])
def test_validation_errors_name_key_and_allowed_values(tmp_path, body, key, allowed):
    p = tmp_path / "p.toml"
    p.write_text(body)
    with pytest.raises(PolicyError) as e:
        load_policy(p)
    assert key in str(e.value) and allowed in str(e.value)


def test_unknown_keys_and_unreadable_files(tmp_path):
    p = tmp_path / "p.toml"
    p.write_text("[rules.raw]\nwarmth = 1\n")
    with pytest.raises(PolicyError, match=r"unknown storage policy key rules\.raw\.warmth; known keys here: cold, hot_delete"):
        load_policy(p)
    p.write_text("[rules.rawdata]\n")
    with pytest.raises(PolicyError, match="rules.rawdata"):
        load_policy(p)
    p.write_text("not toml [")
    with pytest.raises(PolicyError, match="not valid TOML"):
        load_policy(p)
    with pytest.raises(PolicyError, match="cannot read storage policy"):
        load_policy(tmp_path / "missing.toml")


def test_run_config_storage_section_overrides_the_policy(tmp_path):
    cfg = load_config(overrides=[f'storage.warm="{tmp_path}/w"', "storage.high=0.3", "storage.critical=0.1", "storage.bandwidth_mb_s=50", "storage.enabled=true"])
    st = cfg.storage
    assert st.enabled and st.policy.tiers["warm"] == f"{tmp_path}/w" and st.policy.tiers["cold"] == ""
    assert (st.policy.high, st.policy.critical, st.policy.bandwidth_mb_s) == (0.3, 0.1, 50.0)
    assert load_config().storage.enabled is False


@pytest.mark.parametrize("override, key", [
    ("storage.enabled=true", "storage.enabled"),  # no lower tier
    ("storage.critical=0.5", "storage.critical"),  # above the policy's high watermark
    ("storage.high=2", "storage.high"),
    ("storage.bandwidth=3", "storage.bandwidth"),
    ('storage.policy="/nonexistent/policy.toml"', "storage.policy"),
])
def test_run_config_storage_errors(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[override])
    assert key in str(e.value)
