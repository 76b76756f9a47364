"""SupervisorCore over event sequences: the run's states and the shell's instructions, with
no process, no clock and no file."""

import pytest

from appliance.pipeline.core import (
    TRANSITIONS, DiskFreed, DiskFull, Fail, Finish, HeartbeatStale, Kill, PauseRequested, ProcessExited, Publish, RaiseAlert,
    Refuse, RestartPolicy, Retire, ResumeRequested, RunState, SetDrain, SetPause, SourcePhase, Spawn, Started, StopRequested,
    SupervisorCore, Tick,
)

NAMES = ("writer-0", "basecall-0", "kernel-0", "preprocess-0", "source-0")


def started(max_restarts=2, backoff_s=1.0) -> SupervisorCore:
    core = SupervisorCore(RestartPolicy(max_restarts, backoff_s))
    assert core.handle(Started(NAMES, "source-0")) == [Spawn(n) for n in NAMES]
    assert core.state is RunState.STARTING
    return core


def finish_all(core, *, complete=True, now=10.0):
    """The source's stream ends, then every other process finishes: the instructions."""
    out = core.handle(ProcessExited("source-0", 0, True, now, complete))
    assert Retire("source-0") in out
    assert core.state is RunState.DRAINING
    for n in NAMES[:-1]:
        out = core.handle(ProcessExited(n, 0, True, now))
        assert out[0] == Retire(n)
    return out


def test_a_run_goes_starting_prerendering_acquiring_draining_done():
    core = started()
    assert core.handle(SourcePhase("prerendering")) == []
    assert core.state is RunState.PRERENDERING
    core.handle(SourcePhase("acquiring"))
    assert core.state is RunState.ACQUIRING
    core.handle(SourcePhase("acquiring"))  # repeated reports change nothing
    out = finish_all(core)
    assert out[-1] == Finish(RunState.DONE)
    assert core.state is RunState.DONE and core.state.final and core.rejected == []


def test_every_transition_the_core_makes_is_in_the_table():
    # the table itself: the final states go nowhere, and every state but them can drain
    for state, nexts in TRANSITIONS.items():
        assert not nexts if state.final else state is RunState.DRAINING or RunState.DRAINING in nexts


def test_a_stop_drains_and_a_stopped_run_ends_stopped_early():
    core = started()
    core.handle(SourcePhase("acquiring"))
    assert core.handle(StopRequested()) == [Publish("stopping", "drain requested: stopping acquisition"), SetDrain()]
    assert core.state is RunState.DRAINING
    assert core.handle(StopRequested()) == []  # once
    out = finish_all(core, complete=False)
    assert out[-1] == Finish(RunState.STOPPED_EARLY)
    # a stop after every frame was acquired: the run is still complete
    core = started()
    core.handle(SourcePhase("acquiring"))
    core.handle(ProcessExited("source-0", 0, True, 1.0, True))
    core.handle(StopRequested())
    for n in NAMES[:-1]:
        out = core.handle(ProcessExited(n, 0, True, 1.0))
    assert out[-1] == Finish(RunState.DONE)


def test_a_source_that_ends_short_without_a_stop_fails_the_run():
    core = started()
    core.handle(SourcePhase("acquiring"))
    assert finish_all(core, complete=False)[-1] == Finish(RunState.FAILED)
    assert core.state is RunState.FAILED


def test_a_crash_restarts_after_the_backoff_and_gives_up_past_max_restarts():
    core = started(max_restarts=1, backoff_s=2.0)
    core.handle(SourcePhase("acquiring"))
    out = core.handle(ProcessExited("kernel-0", -9, False, now=100.0))
    assert out == [RaiseAlert("stage kernel-0 crashed (exit -9); restart 1 in 2.0 s", (("stage", "kernel-0"),))]
    assert core.waiting_to_restart("kernel-0")
    assert core.handle(Tick(101.0)) == []
    # an exit seen again while it waits is not a second crash
    assert core.handle(ProcessExited("kernel-0", -9, False, now=101.5)) == []
    assert core.handle(Tick(102.0)) == [Spawn("kernel-0", restart=True)]
    assert not core.waiting_to_restart("kernel-0")
    out = core.handle(ProcessExited("kernel-0", 1, False, now=103.0))
    assert isinstance(out[0], Publish) and out[0].kind == "error" and "crashed 2 times" in out[0].message
    assert isinstance(out[-1], Fail) and "max_restarts = 1" in out[-1].reason
    assert core.state is RunState.FAILED
    # a failed run answers nothing more, and refuses the operator
    assert core.handle(Tick(200.0)) == []
    assert core.handle(PauseRequested()) == [Refuse("the run is failed")]


def test_a_stale_heartbeat_kills_the_process_once_per_pid():
    core = started()
    out = core.handle(HeartbeatStale("basecall-0", 4242, 7.5, 5.0))
    assert isinstance(out[0], RaiseAlert) and dict(out[0].fields) == {"stage": "basecall-0", "rule": "hang"}
    assert "heartbeat stale (7.5 s, hang timeout 5.0 s" in out[0].message
    assert out[1] == Kill("basecall-0", 4242)
    assert core.handle(HeartbeatStale("basecall-0", 4242, 8.0, 5.0)) == []  # it may live on a moment
    core.handle(ProcessExited("basecall-0", -9, False, now=1.0))
    core.handle(Tick(5.0))
    assert core.handle(HeartbeatStale("basecall-0", 4343, 6.0, 5.0))[1] == Kill("basecall-0", 4343)  # the new instance


def test_operator_pause_and_resume_go_back_to_what_the_source_does():
    core = started()
    core.handle(SourcePhase("prerendering"))
    assert core.handle(PauseRequested()) == [SetPause(True), Publish("event", "acquisition paused")]
    assert core.state is RunState.PAUSED
    assert core.handle(PauseRequested()) == []
    core.handle(SourcePhase("acquiring"))  # the source went on rendering, then reached its first frame
    assert core.state is RunState.PAUSED
    assert core.handle(ResumeRequested()) == [SetPause(False), Publish("event", "acquisition resumed")]
    assert core.state is RunState.ACQUIRING
    assert core.handle(ResumeRequested()) == []  # nothing paused


def test_pause_and_resume_are_refused_while_draining():
    core = started()
    core.handle(SourcePhase("acquiring"))
    core.handle(StopRequested())
    (refused,) = core.handle(PauseRequested())
    assert isinstance(refused, Refuse) and "draining" in refused.reason and "only an acquiring run" in refused.reason
    (refused,) = core.handle(ResumeRequested())
    assert isinstance(refused, Refuse) and "nothing to resume" in refused.reason


def test_a_full_disk_pauses_until_every_writer_is_through():
    core = started()
    core.handle(SourcePhase("acquiring"))
    out = core.handle(DiskFull("kernel-0", "/data/.state/r/kernel-0.ckpt"))
    assert out[0] == SetPause(True) and "disk full (kernel-0 waiting for space)" in out[1].message
    assert core.state is RunState.PAUSED
    assert core.handle(DiskFull("supervisor", "/data/.state/r/stats.jsonl")) == []
    assert core.handle(DiskFreed("kernel-0")) == []  # the supervisor still waits
    assert core.state is RunState.PAUSED
    out = core.handle(DiskFreed("supervisor"))
    assert out == [SetPause(False), Publish("event", "acquisition resumed: space freed", (("rule", "disk_full"),))]
    assert core.state is RunState.ACQUIRING
    assert core.handle(DiskFreed("supervisor")) == []


def test_an_operator_pause_outlives_a_full_disk_and_a_resume_waits_for_space():
    core = started()
    core.handle(SourcePhase("acquiring"))
    core.handle(PauseRequested())
    assert core.handle(DiskFull("writer-0", "/data/run")) == []  # paused already
    (refused,) = [i for i in core.handle(ResumeRequested()) if isinstance(i, Refuse)] or [None]
    assert refused is None  # the operator's own pause ends...
    assert core.state is RunState.PAUSED  # ... but the disk still holds it
    assert "operator" not in core.paused_by
    (refused,) = core.handle(ResumeRequested())
    assert isinstance(refused, Refuse) and "full disk" in refused.reason
    assert core.handle(DiskFreed("writer-0"))[0] == SetPause(False)
    assert core.state is RunState.ACQUIRING
    # and the other order: a full disk, then an operator's pause, then space
    core = started()
    core.handle(SourcePhase("acquiring"))
    core.handle(DiskFull("writer-0"))
    assert core.handle(PauseRequested()) == [Publish("event", "acquisition paused")]
    assert core.handle(DiskFreed("writer-0")) == []  # the operator's pause stays
    assert core.state is RunState.PAUSED
    assert core.handle(ResumeRequested())[0] == SetPause(False)


def test_a_full_disk_while_draining_does_not_pause():
    core = started()
    core.handle(StopRequested())
    assert core.handle(DiskFull("writer-0", "/data/run")) == []
    assert core.state is RunState.DRAINING


def test_a_stop_while_paused_drains():
    core = started()
    core.handle(SourcePhase("acquiring"))
    core.handle(PauseRequested())
    core.handle(StopRequested())
    assert core.state is RunState.DRAINING
    assert finish_all(core, complete=False)[-1] == Finish(RunState.STOPPED_EARLY)


def test_the_core_state_is_bounded_by_the_processes_not_the_run():
    core = started(max_restarts=10**6, backoff_s=0.0)
    core.handle(SourcePhase("acquiring"))
    for i in range(2000):  # a long run with many crashes and hangs
        core.handle(HeartbeatStale("kernel-0", 10_000 + i, 9.0, 5.0))
        core.handle(ProcessExited("kernel-0", -9, False, now=float(i)))
        core.handle(Tick(float(i)))
    assert len(core.pending) == 0 and core.live == set(NAMES)
    assert core.hang_killed == {"kernel-0": 10_000 + 1999}
    assert core.policy.restarts == {"kernel-0": 2000}


def test_an_unknown_source_phase_is_refused_loudly():
    core = started()
    with pytest.raises(ValueError):
        core.handle(SourcePhase("warming-up"))


def test_a_restarted_source_renders_again_and_a_bad_transition_never_ends_the_run():
    core = started()
    core.handle(SourcePhase("acquiring"))
    core.handle(SourcePhase("prerendering"))  # the source crashed and its new instance renders
    assert core.state is RunState.PRERENDERING and core.rejected == []
    core.handle(SourcePhase("acquiring"))
    assert core.state is RunState.ACQUIRING
    # a transition the table does not have is refused and remembered, not raised
    core._go(RunState.DONE)
    assert core.state is RunState.ACQUIRING and core.rejected == [(RunState.ACQUIRING, RunState.DONE)]
