"""Run configuration: embedded defaults, files, overrides, and errors that name the key."""

from __future__ import annotations

import re

import pytest

from appliance.config import EDGES, ConfigError, load_config


def test_embedded_defaults_load_and_are_consistent():
    cfg = load_config()
    assert cfg.run.tiles == (1101, 1102) and cfg.run.cycles == 26
    assert set(cfg.edges) == set(EDGES)
    assert cfg.stages["writer"].replicas == 1
    assert cfg.edges["raw"].policy == "drop_newest"  # a camera cannot wait


def test_file_then_overrides(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('[run]\ncycles = 30\ntiles = [1101]\n[source.synthetic]\ntile_size = 256\n')
    cfg = load_config(f, ["run.cycles=40", 'edges.raw.policy="block"', "source.rate_hz=0"])
    assert cfg.run.cycles == 40 and cfg.run.tiles == (1101,)
    assert cfg.source.synthetic.tile_size == 256
    assert cfg.edges["raw"].policy == "block" and cfg.source.rate_hz == 0.0


@pytest.mark.parametrize(
    "override, message",
    [
        ("run.cycles=0", "run.cycles = 0 is invalid: allowed an integer 1..1000"),
        ("run.cycles=3", "run.cycles = 3 is invalid: allowed at least 4 with stages.kernel.algorithm"),
        ("run.tiles=[1101, 1101]", "run.tiles"),
        ("run.colour=1", "unknown config key run.colour"),
        ("edges.raw.n_slots=48", "edges.raw.n_slots = 48 is invalid: allowed a power of two"),
        ('edges.calls.policy="drop_oldest"', "allowed block or drop_newest"),
        ('edges.raw.wait="busy"', "allowed spin, yield, sleep, kernel"),
        ('stages.kernel.backend="gpu"', "allowed auto, numpy or cupy"),
        ("stages.writer.replicas=2", "one writer owns the run folder"),
        ('source.kind="camera"', "allowed synthetic, replay or genicam"),
        ("source.genicam.exposure_us=-5", "source.genicam.exposure_us = -5"),
        ("source.genicam.frame_rate_hz=-1", "source.genicam.frame_rate_hz = -1"),
        ("supervisor.e2e_latency_p99_ms=-1", "supervisor.e2e_latency_p99_ms = -1"),
        ('source.kind="genicam"', "stages.kernel.algorithm = 'chain' is invalid: allowed passthrough"),
        ('stages.kernel.algorithm="fast"', "allowed chain or passthrough"),
        ('source.genicam.pixel_format="RGB8"', "Mono8, Mono10, Mono12, Mono14 or Mono16"),
        ('cpu.housekeeping="zero"', "cpu.housekeeping"),
        ('integrity.verify_at=["camera"]', "integrity.verify_at"),
        ("source.synthetic.tile_size=300", "source.synthetic.tile_size"),
        ("source.synthetic.brightness=10", "source.synthetic.brightness = 10.0 is invalid: allowed 50 to 100000 e-"),
        ("run.cycles=lots", "run.cycles = 'lots' is invalid: allowed an integer"),
        ("supervisor.strict=true", "supervisor.strict"),
        ("nonsense", "write section.key=value"),
    ],
)
def test_bad_values_name_the_key_and_the_allowed_values(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(overrides=[override])


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read run config"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\ncycles = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("run = 5\n")
    with pytest.raises(ConfigError, match="run = 5 is invalid: allowed a table"):
        load_config(wrong)
