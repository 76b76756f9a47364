"""Placement across compute pools (``place()``) as a pure function over recorded states: fit
(GPU, cores, memory), data locality, walltime, cost and load, and the class rules across pools.
Also the pool config's validation and the pure pool figures (report, starvation, scaling)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.config import ConfigError
from appliance.offload.config import CLASSES, load_offload
from appliance.offload.kinds import BUILTIN_KINDS
from appliance.offload.pools import PoolConfig, pool_report, starved
from appliance.offload.scheduler import Candidate, PoolState, SchedulerPolicy, SchedulerState, place, plan, unplaceable
from appliance.offload.slurm import cluster_kwargs, scale_target

INF = math.inf
POLICY = SchedulerPolicy(slots=8, limits={"realtime": 8, "batch": 8, "reprocess": 8}, shares={"batch": 0.0, "reprocess": 0.0},
                         reserved_realtime=0)


def pool(name, free=2, slots=None, **kw) -> PoolState:
    left = kw.pop("left", (INF,) * free)
    return PoolState(name=name, slots=slots if slots is not None else free, free_time_left=tuple(left), **kw)


def test_a_job_with_inputs_only_on_the_hot_tier_is_never_placed_on_a_warm_only_pool():
    hot_only = Candidate(1, "batch", inputs=("hot",))
    pools = [pool("warm", free=4, reads=("warm",), cost=0.1), pool("instr", free=0, slots=2, reads=("hot", "warm"))]
    p = place([hot_only], {}, pools, POLICY)
    assert p.start == ()  # the cheap warm pool has slots, but cannot read the inputs
    assert "instr: no free slot" in p.waiting[1]
    p = place([hot_only], {}, [pools[0], pool("instr", free=1, reads=("hot", "warm"))], POLICY)
    assert p.start == ((1, "instr"),)
    assert "reads warm; the job's inputs are only on hot" in unplaceable(hot_only, pools[0])
    # alone with the warm pool: never started, and the reason says why
    p = place([hot_only], {}, [pools[0]], POLICY)
    assert p.start == () and "no pool can run it" in p.waiting[1] and "only on hot" in p.waiting[1]


def test_gpu_cores_and_memory_fit():
    cpu = pool("cpu", free=4, cores=4, memory_mb=8000, cost=1)
    gpu = pool("gpu", free=1, cores=8, memory_mb=64000, gpus=1, cost=5)
    jobs = [Candidate(1, "batch", gpu=True, cores=2, memory_mb=16000), Candidate(2, "batch", cores=2, memory_mb=4000),
            Candidate(3, "batch", cores=2, memory_mb=32000), Candidate(4, "batch", cores=16)]
    p = place(jobs, {}, [cpu, gpu], POLICY)
    where = dict(p.start)
    assert where[1] == "gpu"  # only the GPU pool has a GPU
    assert where[2] == "cpu"  # fits the cheaper pool
    assert 3 not in where and "gpu: no free slot" in p.waiting[3]  # too much memory for cpu; gpu is taken by 1
    assert 4 not in where and "16 cores" in p.waiting[4]  # fits no pool at all
    assert "has no GPU" in unplaceable(jobs[0], cpu)
    assert "32000 MB" in unplaceable(jobs[2], cpu)


def test_walltime_a_job_never_starts_on_a_worker_that_cannot_finish_it():
    long = Candidate(1, "batch", timeout_s=7200)
    short_pool = pool("hpc", free=2, walltime_s=3600)
    p = place([long], {}, [short_pool], POLICY)
    assert p.start == () and "timeout_s" in p.waiting[1] and "3600 s (walltime_s)" in p.waiting[1]
    # the pool's walltime is long enough, but the free workers have only 10 min left: wait
    aged = pool("hpc", free=2, walltime_s=14400, left=(600.0, 900.0))
    p = place([long], {}, [aged], POLICY)
    assert p.start == () and "no free worker has 7200 s of walltime left (most: 900 s)" in p.waiting[1]
    # a fresh worker takes it; a short job takes the worker with the least time that suffices
    p = place([Candidate(2, "batch", timeout_s=500), long], {}, [pool("hpc", free=3, walltime_s=14400, left=(600.0, 14000.0, 900.0))],
              POLICY)
    assert p.start == ((2, "hpc"), (1, "hpc"))


def test_cost_then_load_choose_among_pools_that_fit():
    pools = [pool("dear", free=4, cost=10), pool("cheap-busy", free=1, slots=4, cost=1), pool("cheap-idle", free=4, cost=1)]
    p = place([Candidate(i, "batch") for i in range(1, 4)], {}, pools, POLICY)
    assert [w for _, w in p.start] == ["cheap-idle"] * 3  # cheapest first, then the least loaded
    p = place([Candidate(i, "batch") for i in range(1, 7)], {}, pools, POLICY)
    assert [w for _, w in p.start] == ["cheap-idle"] * 3 + ["cheap-busy", "cheap-idle", "dear"]


def test_a_reprocess_flood_on_the_hpc_pool_does_not_delay_realtime_on_the_local_pool():
    policy = SchedulerPolicy(slots=6, limits={"realtime": 2, "batch": 4, "reprocess": 4}, shares={"batch": 0.2, "reprocess": 0.1},
                             reserved_realtime=1)
    local = pool("local", free=1, slots=2, classes=("realtime", "batch"), running={"batch": 1})
    hpc = pool("hpc", free=0, slots=4, classes=("batch", "reprocess"), running={"reprocess": 4})
    flood = [Candidate(i, "reprocess") for i in range(10, 60)]
    p = place([*flood, Candidate(1, "realtime")], {"reprocess": 4, "batch": 1}, [local, hpc], policy)
    assert p.start == ((1, "local"),)
    # the reserved slot: batch may not take the local pool's last slot
    p = place([Candidate(2, "batch")], {"batch": 1}, [local, hpc], policy)
    assert p.start == () and "reserved for real-time" in p.waiting[2]
    # a pool that does not serve realtime keeps nothing in reserve
    p = place([Candidate(3, "batch")], {}, [pool("hpc", free=1, slots=4, classes=("batch",), running={"batch": 3})], policy)
    assert p.start == ((3, "hpc"),)


def test_class_limits_and_shares_hold_across_pools():
    policy = SchedulerPolicy(slots=8, limits={"realtime": 8, "batch": 2, "reprocess": 8}, shares={"batch": 0.5, "reprocess": 0.0},
                             reserved_realtime=0)
    pools = [pool("a", free=4), pool("b", free=4)]
    ready = [Candidate(i, "realtime") for i in range(1, 7)] + [Candidate(i, "batch") for i in range(10, 14)]
    p = place(ready, {}, pools, policy)
    by = {i: c.priority for c in ready for i in [c.id]}
    classes = [by[i] for i, _ in p.start]
    assert classes.count("batch") == 2  # the class limit counts every pool
    assert classes[:2] == ["realtime", "batch"]  # the share: batch gets every second dispatch it waits for
    assert "offload.limits.batch = 2" in p.waiting[12]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(CLASSES), st.booleans(), st.sampled_from([("hot",), ("warm",), ("hot", "warm")]),
                          st.sampled_from([0, 1000, 20000])), max_size=20),
       st.lists(st.tuples(st.integers(0, 4), st.booleans(), st.sampled_from([("hot",), ("warm",), ("hot", "warm", "object")]),
                          st.sampled_from([0, 4000, 64000])), min_size=1, max_size=4))
def test_place_invariants(jobs, pools_in):
    ready = [Candidate(i, c, gpu=g, inputs=inp, memory_mb=m) for i, (c, g, inp, m) in enumerate(jobs)]
    pools = [pool(f"p{i}", free=f, gpus=int(g), reads=r, memory_mb=m) for i, (f, g, r, m) in enumerate(pools_in)]
    p = place(ready, {}, pools, POLICY)
    by_id = {c.id: c for c in ready}
    by_pool = {q.name: q for q in pools}
    assert len({i for i, _ in p.start}) == len(p.start)
    for job_id, name in p.start:
        assert unplaceable(by_id[job_id], by_pool[name]) is None  # every placement fits and can read the inputs
    for q in pools:
        assert sum(1 for _, n in p.start if n == q.name) <= len(q.free_time_left)
    started = {i for i, _ in p.start}
    assert all(c.id in p.waiting for c in ready if c.id not in started)  # every job left has a reason
    # nothing that could start was left while its class had room and a fitting pool had a free slot
    left_free = {q.name: len(q.free_time_left) - sum(1 for _, n in p.start if n == q.name) for q in pools}
    for c in ready:
        if c.id not in started:
            assert not any(left_free[q.name] > 0 and unplaceable(c, q) is None for q in pools)


def test_one_unconstrained_pool_places_like_plan():
    policy = SchedulerPolicy(slots=3, limits={"realtime": 2, "batch": 2, "reprocess": 1}, shares={"batch": 0.2, "reprocess": 0.1},
                             reserved_realtime=1)
    ready = [Candidate(i, c) for i, c in enumerate(["reprocess", "batch", "batch", "realtime", "realtime", "realtime"])]
    state = SchedulerState()
    for _ in range(3):
        d = plan(ready, {}, 3, policy, state)
        p = place(ready, {}, [PoolState("local", 3, (INF,) * 3)], policy, state)
        assert [i for i, _ in p.start] == list(d.start) and p.reasons == d.reasons and p.state == d.state
        state = d.state


def test_builtin_kinds_declare_their_needs():
    for k in BUILTIN_KINDS:
        c = k.candidate(1)
        assert c.cores >= 1 and c.memory_mb > 0 and c.inputs[0] == "hot" and c.timeout_s == k.timeout_s and not c.gpu
        # the kinds a cloud pool can stage (a complete run folder, a job output) also read the object store
        assert ("object" in c.inputs) == (k.name in ("fastq", "align-qc")), k
        assert k.expected_s > 0


# -- pool config ---------------------------------------------------------------------------------

def test_no_pool_tables_keep_the_single_executor():
    assert load_offload({}).pools == {}


@pytest.mark.parametrize("pools, key", [
    ({"a": {"kind": "pbs"}}, "offload.pools.a.kind"),
    ({"a": {"kind": "slurm", "cores": 1, "memory_mb": 100}}, "offload.pools.a.walltime_s"),
    ({"a": {"kind": "slurm", "walltime_s": "1:00:00", "memory_mb": 100}}, "offload.pools.a.cores"),
    ({"a": {"kind": "local", "partition": "gpu"}}, "offload.pools.a.partition"),
    ({"a": {"reads": ["tape"]}}, "offload.pools.a.reads"),
    ({"a": {"classes": ["batch"]}}, "offload.pools"),  # nothing serves realtime
    ({"a": {"slots": 0}}, "offload.pools.a.slots"),
    ({"a": {"kind": "slurm", "cores": 1, "memory_mb": 1, "walltime_s": "soon"}}, "offload.pools.a.walltime_s"),
    ({"a": {"colour": "red"}}, "offload.pools.a.colour"),
])
def test_bad_pool_config_names_the_key(pools, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_offload({"pools": pools})


def test_slurm_pool_becomes_slurmcluster_arguments():
    p = load_offload({"pools": {"rt": {"slots": 2}, "hpc": {
        "kind": "slurm", "slots": 2, "cores": 4, "memory_mb": 8000, "gpus": 1, "walltime_s": "1-02:00:00", "partition": "gpu",
        "account": "lab", "qos": "high", "job_extra": ["--constraint=a100"], "prologue": ["module load cuda"],
        "classes": ["reprocess"], "min_jobs": 0, "max_jobs": 3}}}).pools["hpc"]
    kw = cluster_kwargs(p, python="/opt/venv/bin/python")
    assert (kw["cores"], kw["processes"], kw["memory"], kw["walltime"]) == (8, 2, "16000MB", "26:00:00")
    assert (kw["queue"], kw["account"], kw["python"]) == ("gpu", "lab", "/opt/venv/bin/python")
    assert kw["job_extra_directives"] == ["--qos=high", "--gres=gpu:2", "--constraint=a100"]
    assert kw["job_script_prologue"] == ["module load cuda"]
    assert p.capacity_max == 6


def test_scale_target_follows_the_backlog_between_min_and_max():
    p = PoolConfig("hpc", kind="slurm", slots=2, min_jobs=1, max_jobs=4)
    assert scale_target(0, 0, 0, p) == 1
    assert scale_target(5, 1, 0, p) == 3
    assert scale_target(100, 2, 0, p) == 4
    assert scale_target(0, 3, 2, p) == 2  # never below the jobs whose workers are busy


def test_starvation_and_report_are_pure():
    since, alert = starved(3, 0, None, 100.0, 60)
    assert (since, alert) == (100.0, False)
    assert starved(3, 0, since, 170.0, 60) == (100.0, True)
    assert starved(3, 1, since, 170.0, 60) == (None, False)  # a worker came
    assert starved(0, 0, since, 170.0, 60) == (None, False)  # nothing to do
    pools = {"hpc": PoolConfig("hpc", kind="slurm", slots=1, max_jobs=4, classes=("batch",))}
    rows = pool_report(pools, {"hpc": 1}, {"hpc": 0}, {"hpc": 1}, {"hpc": 2}, {"hpc": 7}, {"hpc": 100.0}, 130.0)
    assert rows == [{"pool": "hpc", "kind": "slurm", "classes": ["batch"], "reads": ["hot", "warm", "object"], "cost": 1.0,
                     "slots": 1, "used": 1, "free": 0, "max_slots": 4, "pending_jobs": 2, "backlog": 7, "starved_s": 30.0}]


def test_pool_metrics_are_one_gauge_per_figure_labelled_by_pool():
    from appliance.offload.pools import pool_metrics

    rows = [{"pool": "hpc", "slots": 2, "used": 1, "free": 1, "pending_jobs": 3, "backlog": 9, "starved_s": None},
            {"pool": "instr", "slots": 2, "used": 2, "free": 0, "pending_jobs": 0, "backlog": 0, "starved_s": 12.5}]
    m = {name: v for name, _, v in pool_metrics(rows)}
    assert m["appliance_pool_pending_jobs"] == {"hpc": 3.0, "instr": 0.0}
    assert m["appliance_pool_backlog"]["hpc"] == 9.0 and m["appliance_pool_slots_used"]["instr"] == 2.0
    assert m["appliance_pool_starved_seconds"] == {"hpc": 0.0, "instr": 12.5}
