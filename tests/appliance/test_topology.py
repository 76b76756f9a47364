"""The run's topology: processes and rings as typed objects, built once from the config."""

from __future__ import annotations

import pytest

from appliance.config import default_config, load_config
from appliance.schema import EDGES, PIPELINE
from appliance.topology import Link, Process, Topology


def test_the_default_run_is_one_process_per_stage_and_one_ring_per_edge():
    top = Topology.from_config(default_config())
    assert top.names == ("source-0", "preprocess-0", "kernel-0", "basecall-0", "writer-0")
    assert top.source == Process("source", 0) and top.source.is_source and not top.source.is_last
    assert Process("writer", 0).is_last
    assert [link.key for link in top.links] == ["raw.0.0", "corrected.0.0", "intensities.0.0", "calls.0.0"]
    assert [link.edge for link in top.links] == list(EDGES)
    k = top.process("kernel-0")
    assert top.inputs(k) == (Link("corrected", Process("preprocess", 0), k),)
    assert top.outputs(k) == (Link("intensities", k, Process("basecall", 0)),)
    assert top.inputs(top.source) == () and top.outputs(top.process("writer-0")) == ()


def test_replicas_fan_out_from_each_producer_and_fan_in_at_each_consumer():
    top = Topology.from_config(load_config(None, ["stages.kernel.replicas=2", "stages.basecall.replicas=3"]))
    assert top.replicas("kernel") == 2 and top.replicas("basecall") == 3 and top.replicas("source") == 1
    assert [p.name for p in top.processes if p.stage == "basecall"] == ["basecall-0", "basecall-1", "basecall-2"]
    # kernel -> basecall: every kernel replica feeds every base caller (by tile)
    assert [link.key for link in top.links_of("intensities")] == [f"intensities.{i}.{j}" for i in range(2) for j in range(3)]
    b1 = top.process("basecall-1")
    assert [link.producer.name for link in top.inputs(b1)] == ["kernel-0", "kernel-1"]  # fan-in, in replica order
    k1 = top.process("kernel-1")
    assert [link.consumer.name for link in top.outputs(k1)] == ["basecall-0", "basecall-1", "basecall-2"]  # indexed by replica
    assert len(top.links) == 1 + 2 + 6 + 3


def test_a_bad_topology_is_refused_naming_what_is_wrong():
    with pytest.raises(ValueError, match=r"missing \['writer'\]"):
        Topology.of({s: 1 for s in PIPELINE[:-1]})
    with pytest.raises(ValueError, match=r"invalid \{'kernel': 0\}"):
        Topology.of({**{s: 1 for s in PIPELINE}, "kernel": 0})
    with pytest.raises(KeyError, match="no process 'kernel-3'.*kernel-0"):
        Topology.from_config(default_config()).process("kernel-3")


def test_a_name_read_back_is_its_process():
    assert Process.from_name("basecall-12") == Process("basecall", 12)
    for p in Topology.from_config(default_config()).processes:
        assert Process.from_name(p.name) == p
    for bad in ("kernel", "kernel-x", "camera-0", "-0"):
        with pytest.raises(ValueError, match="not a stage process name"):
            Process.from_name(bad)
