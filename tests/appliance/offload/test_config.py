"""The [offload] config section: defaults load, bad values name the key and what is allowed."""

from __future__ import annotations

import pytest

from appliance.config import ConfigError, load_config
from appliance.offload import OffloadConfig
from appliance.offload.kinds import JobKind, KindRegistry


def test_defaults_load():
    off = load_config().offload
    assert isinstance(off, OffloadConfig) and off.executor == "local" and off.kinds["fastq"].max_attempts == 3
    assert off.ledger_path("/data") .as_posix() == "/data/.offload/ledger.sqlite"


@pytest.mark.parametrize("override, message", [
    ('offload.executor="spark"', "offload.executor = 'spark' is invalid: allowed local or dask"),
    ('offload.dask_address="tcp://h:8786"', "offload.dask_address"),
    ("offload.heartbeat_s=20.0", "at most half of offload.lease_s"),
    ("offload.limits.realtime=0", "offload.limits.realtime"),
    ("offload.share.batch=0.9", "offload.share.batch"),
    ("offload.reserved_realtime=2", "fewer than offload.workers"),
    ("offload.kinds.fastq.max_attempts=0", "offload.kinds.fastq.max_attempts"),
    ("offload.plugins=[1]", "offload.plugins"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_config(overrides=[override])


def test_overrides_apply_to_kinds():
    cfg = load_config(overrides=["offload.kinds.fastq.max_attempts=7", 'offload.executor="dask"', 'offload.dask_address="tcp://10.0.0.1:8786"'])
    reg = KindRegistry([JobKind("fastq", "m:f", "realtime", 3)])
    assert reg.get("fastq", cfg.offload).max_attempts == 7
    with pytest.raises(KeyError, match="known kinds: fastq"):
        reg.get("nope")
    with pytest.raises(ValueError, match="already registered"):
        reg.register(JobKind("fastq", "m:g"))
