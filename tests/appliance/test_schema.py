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
