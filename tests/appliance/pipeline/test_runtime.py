"""A stage process's set-up: the CPU plan is applied in the real spawned process."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading

import pytest

from appliance.config import load_config
from appliance.pipeline._spec import StageSpec


def _prepared_affinity(spec: StageSpec, conn) -> None:
    from appliance.pipeline.runtime import _prepare_process

    watch = _prepare_process(spec, threading.Event())
    conn.send((sorted(os.sched_getaffinity(0)), type(watch).__name__))
    conn.close()


def _spec(tmp_path, cpus) -> StageSpec:
    return StageSpec(
        stage="kernel", replica=0, inputs=(), outputs=(), config=load_config(overrides=[f'output.root="{tmp_path}"']),
        run_id="PIN", run_dir=tmp_path / "PIN", state_dir=tmp_path / ".state", cpus=cpus, parent_pid=os.getpid(),
    )


def _stage_affinity(spec: StageSpec, start_on: set[int] | None = None) -> tuple[list[int], str]:
    """Start a real spawned process that prepares itself as stage ``spec`` and report its
    affinity; ``start_on``: the CPUs of the thread that starts it (inherited, like systemd's
    CPUAffinity=)."""
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe(duplex=False)
    before = os.sched_getaffinity(0)
    if start_on is not None:
        os.sched_setaffinity(0, start_on)  # this thread only, restored at once
    try:
        proc = ctx.Process(target=_prepared_affinity, args=(spec, theirs))
        proc.start()
    finally:
        os.sched_setaffinity(0, before)
    try:
        theirs.close()
        assert ours.poll(60), "the stage process did not report"
        report = ours.recv()
    finally:
        proc.join(30)
        ours.close()
    assert proc.exitcode == 0
    return report


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to tell a pinned process apart")
def test_a_stage_process_is_pinned_to_its_planned_cpus(tmp_path):
    cpu = max(os.sched_getaffinity(0))
    affinity, watch = _stage_affinity(_spec(tmp_path, frozenset({cpu})))
    assert affinity == [cpu] and watch == "ParentWatch"
    assert sorted(os.sched_getaffinity(0)) != [cpu] or len(os.sched_getaffinity(0)) == 1  # the parent is untouched


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to tell a confined process apart")
def test_an_unplanned_stage_spreads_over_every_allowed_cpu_not_the_supervisors(tmp_path):
    """Under systemd's CPUAffinity= the supervisor sits on the housekeeping CPUs; a stage with
    no planned CPUs (too few to pin) must not inherit that and crowd onto them."""
    import rt

    affinity, _ = _stage_affinity(_spec(tmp_path, None), start_on={min(os.sched_getaffinity(0))})
    assert affinity == sorted(rt.allowed_cpus()) and len(affinity) >= 2
