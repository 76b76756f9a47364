"""The supervisor's pure parts: restart policy, CPU plan, ring budget (no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

import rt
from appliance.config import load_config
from appliance.pipeline import Done, GiveUp, Restart, RestartPolicy, plan_cpus, ring_budget


def test_restart_policy_backoff_then_give_up():
    p = RestartPolicy(max_restarts=2, backoff_s=0.5)
    assert p.on_exit("kernel-0", 0, True) == Done("kernel-0")
    assert p.on_exit("kernel-0", -9, False) == Restart("kernel-0", 0.5, 1)
    assert p.on_exit("kernel-0", 1, False) == Restart("kernel-0", 1.0, 2)
    action = p.on_exit("kernel-0", -9, False)
    assert isinstance(action, GiveUp) and "crashed 3 times" in action.reason and "signal 9" in action.reason
    # other stages have their own budget
    assert p.on_exit("writer-0", 1, False) == Restart("writer-0", 0.5, 1)


def test_exit_zero_without_finishing_is_a_crash():
    # A stage that exited 0 but did not finish (stopped) must be restarted, not forgotten.
    assert isinstance(RestartPolicy(1, 0.1).on_exit("basecall-0", 0, False), Restart)


def _tree(tmp_path: Path, cpus: str, isolated: str = "") -> Path:
    root = tmp_path / "host"
    d = root / "sys/devices/system/cpu"
    d.mkdir(parents=True)
    (d / "online").write_text(cpus + "\n")
    (d / "possible").write_text(cpus + "\n")
    (d / "isolated").write_text(isolated + "\n")
    return root


NAMES = ["source-0", "preprocess-0", "kernel-0", "basecall-0", "writer-0"]


def test_cpu_plan_one_core_each_isolated_first(tmp_path):
    topo = rt.read_topology(_tree(tmp_path, "0-7", "4-7"))
    plan = plan_cpus(topo, frozenset({0}), NAMES)
    cpus = [next(iter(plan.assignments[n])) for n in NAMES]
    assert cpus == [4, 5, 6, 7, 1] and not plan.warnings


def test_cpu_plan_degrades_on_a_small_machine(tmp_path):
    topo = rt.read_topology(_tree(tmp_path, "0-1"))
    plan = plan_cpus(topo, frozenset({0}), NAMES)
    assert all(v is None for v in plan.assignments.values())
    assert "only 1 CPUs outside housekeeping" in plan.warnings[0]


def test_cpu_plan_unpinned_on_request(tmp_path):
    topo = rt.read_topology(_tree(tmp_path, "0-63"))
    plan = plan_cpus(topo, frozenset({0}), NAMES, pin=False)
    assert all(v is None for v in plan.assignments.values())


def test_ring_budget_scales_with_tile_and_slots():
    small = load_config(overrides=["source.synthetic.tile_size=256"])
    big = load_config(overrides=["source.synthetic.tile_size=2048"])
    ones = {e: 1 for e in small.edges}
    assert ring_budget(big, ones) > 32 * ring_budget(small, ones) / 2
    assert ring_budget(small, {e: 2 for e in small.edges}) == 2 * ring_budget(small, ones)


def test_budget_refusal_names_the_fix(tmp_path):
    from appliance.pipeline import Supervisor, SupervisorError

    cfg = load_config(overrides=["source.synthetic.tile_size=5120", "edges.raw.n_slots=4096", f'output.root="{tmp_path}"'])
    with pytest.raises(SupervisorError, match="lower edges.*n_slots"):
        Supervisor(cfg, run_id="BUDGET")._create_rings()


def _numa_tree(tmp_path: Path) -> Path:
    root = _tree(tmp_path, "0-7")
    for node, cpus in ((0, "0-3"), (1, "4-7")):
        d = root / f"sys/devices/system/node/node{node}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(cpus + "\n")
    (root / "sys/devices/system/node/online").write_text("0-1\n")
    return root


def test_cpu_plan_is_numa_local_for_gpu_and_camera(tmp_path):
    topo = rt.read_topology(_numa_tree(tmp_path))
    # the stages' NUMA traits (Handler.numa): the kernel by the GPU, the camera's readers by the NIC
    numa = {"source-0": "nic", "preprocess-0": "nic", "kernel-0": "gpu"}
    plan = plan_cpus(topo, frozenset({0}), NAMES, gpu_node=1, nic_node=0, numa=numa)
    cpu = {n: next(iter(c)) for n, c in plan.assignments.items()}
    assert cpu["kernel-0"] in range(4, 8)
    assert cpu["source-0"] in range(1, 4) and cpu["preprocess-0"] in range(1, 4)
    assert len(set(cpu.values())) == len(NAMES) and 0 not in cpu.values()
    assert not plan.warnings


def test_cpu_plan_warns_when_the_local_node_is_full(tmp_path):
    topo = rt.read_topology(_numa_tree(tmp_path))
    names = [f"kernel-{i}" for i in range(5)]
    plan = plan_cpus(topo, frozenset({0}), names, gpu_node=1, numa=dict.fromkeys(names, "gpu"))
    assert sum("remote node" in w for w in plan.warnings) == 1


def test_stage_traits_and_a_stage_class_named_in_the_config(tmp_path):
    from appliance.config import ConfigError
    from appliance.pipeline import Supervisor, SupervisorError
    from appliance.pipeline.handlers import KernelHandler, PassthroughHandler, SourceHandler, WriterHandler, stage_class

    cfg = load_config()
    assert (SourceHandler.realtime, SourceHandler.numa, SourceHandler.replicable) == (True, "nic", False)
    assert (KernelHandler.numa, WriterHandler.realtime, WriterHandler.replicable) == ("gpu", True, False)
    assert stage_class(cfg, "kernel") is KernelHandler
    mine = load_config(overrides=['stages.kernel.handler="appliance.pipeline.handlers:PassthroughHandler"'])
    assert stage_class(mine, "kernel") is PassthroughHandler  # one's own class, by "module:Class"
    with pytest.raises(ConfigError, match="stages.kernel.handler"):
        load_config(overrides=['stages.kernel.handler="no_colon"'])
    for target, why in (("nowhere.at_all:Stage", "cannot import"), ("appliance.pipeline.handlers:Nope", "has no 'Nope'"),
                        ("appliance.pipeline.handlers:LiveParams", "not a stage class")):
        bad = load_config(overrides=[f'stages.kernel.handler="{target}"', f'output.root="{tmp_path}"'])
        with pytest.raises(SupervisorError, match=why):  # refused before anything starts
            Supervisor(bad, run_id="BAD")._plan()
    not_replicable = load_config(overrides=['stages.basecall.handler="appliance.pipeline.handlers:WriterHandler"',
                                            "stages.basecall.replicas=2", f'output.root="{tmp_path}"'])
    with pytest.raises(SupervisorError, match="runs as one process only"):
        Supervisor(not_replicable, run_id="BAD")._plan()


def test_new_run_id_never_reuses_the_number_of_an_existing_run(tmp_path):
    from appliance.pipeline.supervisor import new_run_id

    cfg = load_config(overrides=[f'output.root="{tmp_path}"'])
    inst, fc = cfg.run.instrument_id, cfg.run.flowcell
    assert new_run_id(cfg, tmp_path).split("_")[2] == "0001"
    for n in (1, 2, 3):
        (tmp_path / f"261101_{inst}_{n:04d}_{fc}").mkdir()
    (tmp_path / f"261101_{inst}_0001_{fc}").rmdir()  # an old run tiered away: 2 folders left
    assert new_run_id(cfg, tmp_path).split("_")[2] == "0004"  # not 0003, which exists
    (tmp_path / ".state" / f"261102_{inst}_0007_{fc}").mkdir(parents=True)  # its folder gone, its state kept
    (tmp_path / "Analysis").mkdir()
    assert new_run_id(cfg, tmp_path).split("_")[2] == "0008"
