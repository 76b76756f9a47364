"""The telemetry schema (appliance.schema): stage and ring samples read from what a sample
says, and from samples recorded before the fields existed."""

from __future__ import annotations

from appliance.schema import EDGES, PIPELINE, SCHEMA_VERSION, RingSample, StageSample, ring_samples, stage_samples


def test_a_schema_1_sample_is_read_from_its_fields_not_its_keys():
    sample = {"schema": SCHEMA_VERSION,
              "stages": {"any-name": {"stage": "kernel", "replica": 3, "alive": True, "frames_in": 7, "stage_state": "disk_full"}},
              "rings": {"whatever": {"edge": "calls", "producer": "basecall-1", "consumer": "writer-0", "occupancy": 2,
                                     "n_slots": 8, "drops": 1}}}
    (st,) = stage_samples(sample)
    assert (st.name, st.stage, st.replica, st.alive, st.frames_in, st.state) == ("any-name", "kernel", 3, True, 7, "disk_full")
    (r,) = ring_samples(sample)
    assert (r.key, r.edge, r.producer, r.consumer, r.occupancy, r.n_slots, r.drops) == ("whatever", "calls", "basecall-1", "writer-0", 2, 8, 1)


def test_a_sample_from_before_schema_1_is_read_from_its_keys():
    assert StageSample.from_dict("basecall-2", {}).stage == "basecall" and StageSample.from_dict("basecall-2", {}).replica == 2
    assert RingSample.from_dict("intensities.1.0", {}) == RingSample("intensities.1.0", "intensities", "kernel-1", "basecall-0")
    assert RingSample.from_dict("not-a-ring", {}) is None
    assert ring_samples({"rings": {"raw.0.0": {"written": 5}, "junk": {}}})[0].written == 5


def test_the_pipeline_shape_is_defined_once():
    from appliance.config import EDGES as config_edges, STAGES as config_stages

    assert config_edges is EDGES and PIPELINE == ("source", *config_stages)
    assert [src for src, _ in EDGES.values()] == list(PIPELINE[:-1])


def test_a_whole_sample_is_read_into_its_dataclasses():
    from appliance.schema import AlertSample, BottleneckSample, HostSample, PrerenderSample, StatsSample

    d = {"schema": 1, "t": 12.5, "run_id": "R1", "state": "acquiring", "frames_acquired": 40, "frames_planned": 800,
         "tiles": [1101, 1102], "cycles": 100, "e2e_latency_ms_p99": 150.0, "e2e_latency_budget_ms": 2000.0,
         "host": {"memory_available": 1, "memory_total": 4, "disk_free": 5, "disk_total": 100, "cpu_percent": 37.5},
         "stages": {"source-0": {"stage": "source", "replica": 0, "frames_in": 40}},
         "rings": {"raw.0.0": {"edge": "raw", "producer": "source-0", "consumer": "preprocess-0", "drops": 3},
                   "corrected.0.0": {"edge": "corrected", "producer": "preprocess-0", "consumer": "kernel-0", "drops": 1}},
         "alerts": [{"rule": "frames_dropped", "subject": "raw.0.0", "severity": "critical", "message": "m", "first_seen": 3.0}],
         "prerender": {"done": 2, "total": 8}, "bottleneck": {"stage": "kernel", "resource": "cpu", "busy": 0.9, "text": "t"}}
    s = StatsSample.from_dict(d)
    assert (s.schema, s.t, s.run_id, s.state, s.frames_acquired, s.frames_planned, s.tiles, s.cycles) == (1, 12.5, "R1", "acquiring", 40, 800, (1101, 1102), 100)
    assert s.host == HostSample(1, 4, 5, 100, 37.5) and s.host.disk_free_fraction == 0.05
    assert s.drops == 4 and [st.name for st in s.stages] == ["source-0"]
    assert s.alerts == (AlertSample("frames_dropped", "raw.0.0", "critical", "m", 3.0),)
    assert s.prerender == PrerenderSample(2, 8) and s.bottleneck == BottleneckSample("kernel", "cpu", 0.9, "t")
    for part in (s.host, *s.alerts, s.prerender, s.bottleneck):  # the wire form reads back the same
        assert type(part).from_dict(part.to_dict()) == part


def test_a_sample_that_lacks_parts_reads_as_not_known():
    from appliance.schema import HostSample, StatsSample

    s = StatsSample.from_dict({"host": {"disk_free": True}, "alerts": ["junk"], "prerender": "junk"})
    assert s.schema == 0 and s.host == HostSample() and s.host.disk_free_fraction is None
    assert s.alerts == () and s.prerender is None and s.bottleneck is None and s.drops == 0
    assert StatsSample.from_dict(None) == StatsSample()
