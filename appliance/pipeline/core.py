"""The supervisor's decisions as a pure state machine: events in, instructions out.

:class:`SupervisorCore` holds the run's state (:class:`RunState`, with the transitions in
:data:`TRANSITIONS`), the restart policy's counts, the restarts waiting for their backoff,
why acquisition is paused, and which processes are still to finish. ``handle(event)``
returns the instructions for the shell (:class:`~appliance.pipeline.supervisor.Supervisor`)
to carry out: spawn or kill a process, set the drain or pause flag, publish an event, raise
an alert, give up. It does no I/O, reads no clock (times come in on the events) and is tested
over event sequences without processes (tests/appliance/pipeline/test_core.py).

The shell feeds it:

- :class:`Started` once the rings exist: spawn every process;
- :class:`Tick` from its loop: restarts whose backoff is over are spawned;
- :class:`SourcePhase` when the source reports pre-rendering or acquiring;
- :class:`ProcessExited` when a process is gone (with whether it finished its work);
- :class:`HeartbeatStale` when a live process's heartbeat is older than its hang timeout;
- :class:`StopRequested`, :class:`PauseRequested`, :class:`ResumeRequested` from the operator;
- :class:`DiskFull` and :class:`DiskFreed` from whoever met (or got past) a full disk.

Every event but the tick goes to the flight recorder (topic ``supervisor``), so the recorder
holds what the supervisor decided from, not only what it published.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field

__all__ = [
    "RunState", "TRANSITIONS", "SupervisorCore", "RestartPolicy", "Restart", "GiveUp", "Done",
    # events
    "Started", "Tick", "SourcePhase", "ProcessExited", "HeartbeatStale", "StopRequested",
    "PauseRequested", "ResumeRequested", "DiskFull", "DiskFreed",
    # instructions
    "Spawn", "Kill", "Retire", "SetDrain", "SetPause", "Publish", "RaiseAlert", "Refuse", "Finish", "Fail",
]


class RunState(str, enum.Enum):
    """What the run is doing. ``done``, ``stopped_early`` and ``failed`` are final."""

    STARTING = "starting"  #: processes starting; the source has not reported yet
    PRERENDERING = "prerendering"  #: the synthetic source renders its frames before acquiring
    ACQUIRING = "acquiring"
    PAUSED = "paused"  #: acquisition paused (the operator, or a full disk); frames in the pipeline go on
    DRAINING = "draining"  #: acquisition over (stopped, or every frame acquired); the rest finishes
    DONE = "done"  #: every planned frame was acquired and every process finished
    STOPPED_EARLY = "stopped_early"  #: drained after an operator's stop, before the last frame
    FAILED = "failed"  #: a process crashed past max_restarts, or the source ended short

    @property
    def final(self) -> bool:
        return self in (RunState.DONE, RunState.STOPPED_EARLY, RunState.FAILED)


log = logging.getLogger("appliance.supervisor")

_S = RunState
#: the allowed transitions (anything to FAILED is allowed too: a give-up can come at any time)
TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    _S.STARTING: frozenset({_S.PRERENDERING, _S.ACQUIRING, _S.PAUSED, _S.DRAINING}),
    _S.PRERENDERING: frozenset({_S.ACQUIRING, _S.PAUSED, _S.DRAINING}),
    _S.ACQUIRING: frozenset({_S.PRERENDERING, _S.PAUSED, _S.DRAINING}),  # a restarted source renders again
    _S.PAUSED: frozenset({_S.STARTING, _S.PRERENDERING, _S.ACQUIRING, _S.DRAINING}),
    _S.DRAINING: frozenset({_S.DONE, _S.STOPPED_EARLY}),
    _S.DONE: frozenset(),
    _S.STOPPED_EARLY: frozenset(),
    _S.FAILED: frozenset(),
}


# -- the restart policy ---------------------------------------------------------------------


@dataclass(frozen=True)
class Restart:
    name: str
    delay_s: float
    attempt: int


@dataclass(frozen=True)
class GiveUp:
    name: str
    reason: str


@dataclass(frozen=True)
class Done:
    name: str


@dataclass
class RestartPolicy:
    """Bounded restarts with exponential backoff, per process.

    ``on_exit(name, exitcode, finished)`` returns Done (finished cleanly), Restart (after a
    delay: ``backoff_s * 2**(attempt-1)``, the exponent capped at 16) or GiveUp (more than ``max_restarts`` crashes).
    """

    max_restarts: int
    backoff_s: float
    restarts: dict[str, int] = field(default_factory=dict)

    def on_exit(self, name: str, exitcode: int | None, finished: bool) -> Restart | GiveUp | Done:
        if exitcode == 0 and finished:
            return Done(name)
        n = self.restarts.get(name, 0) + 1
        how = f"killed by signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit status {exitcode}"
        if n > self.max_restarts:
            return GiveUp(name, f"stage {name} crashed {n} times (last: {how}); max_restarts = {self.max_restarts}")
        self.restarts[name] = n
        return Restart(name, self.backoff_s * 2 ** min(n - 1, 16), n)  # capped: a long run may restart often


# -- events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    """The rings exist: start ``names`` (in this order: consumers first)."""

    names: tuple[str, ...]
    source: str  #: which of them is the camera (appliance.topology.Topology.source)


@dataclass(frozen=True)
class Tick:
    now: float  #: the shell's monotonic clock


@dataclass(frozen=True)
class SourcePhase:
    """The source reported what it does: ``prerendering`` or ``acquiring``."""

    phase: str


@dataclass(frozen=True)
class ProcessExited:
    name: str
    exitcode: int | None
    finished: bool  #: its summary says it finished its work (the source: its stream ended)
    now: float = 0.0
    #: the source only: it acquired every planned frame (None: not known, not the source)
    complete: bool | None = None


@dataclass(frozen=True)
class HeartbeatStale:
    """A live process's heartbeat is older than its hang timeout."""

    name: str
    pid: int
    age_s: float
    timeout_s: float


@dataclass(frozen=True)
class StopRequested:
    pass


@dataclass(frozen=True)
class PauseRequested:
    pass


@dataclass(frozen=True)
class ResumeRequested:
    pass


@dataclass(frozen=True)
class DiskFull:
    who: str  #: a stage's name, or "supervisor"
    path: str = ""


@dataclass(frozen=True)
class DiskFreed:
    who: str


# -- instructions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Spawn:
    name: str
    restart: bool = False  #: a restart (injected faults fire once: the shell drops them)


@dataclass(frozen=True)
class Kill:
    name: str
    pid: int


@dataclass(frozen=True)
class Retire:
    """The process finished its work: forget it."""

    name: str


@dataclass(frozen=True)
class SetDrain:
    pass


@dataclass(frozen=True)
class SetPause:
    on: bool


@dataclass(frozen=True)
class Publish:
    """An event for the run's events, the recorder, the control plane's PUB and the log."""

    kind: str  #: event, stopping, warning, error
    message: str
    fields: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class RaiseAlert:
    message: str
    fields: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class Refuse:
    """The request does not apply in this state (a pause while draining)."""

    reason: str


@dataclass(frozen=True)
class Finish:
    """Every process is gone: the run ended in ``state``."""

    state: RunState


@dataclass(frozen=True)
class Fail:
    """Give up: the run cannot go on."""

    reason: str


Event = Started | Tick | SourcePhase | ProcessExited | HeartbeatStale | StopRequested | PauseRequested | ResumeRequested | DiskFull | DiskFreed
Instruction = Spawn | Kill | Retire | SetDrain | SetPause | Publish | RaiseAlert | Refuse | Finish | Fail


class SupervisorCore:
    """The run's state machine (see the module docstring). Its state is small and bounded
    by the number of processes, not by the run's length."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.state = RunState.STARTING
        #: what the source last reported (STARTING, PRERENDERING or ACQUIRING): where a
        #: resume goes back to
        self.source_phase = RunState.STARTING
        self.source = ""  # the camera process: named by Started
        #: processes that have not finished their work (alive, or waiting to restart)
        self.live: set[str] = set()
        #: name -> when (the shell's monotonic clock) its restart is due
        self.pending: dict[str, float] = {}
        #: name -> the pid last killed for a stale heartbeat (one kill per hung process)
        self.hang_killed: dict[str, int] = {}
        #: why acquisition is paused: "operator", and/or who waits for disk space (-> the path)
        self.paused_by: dict[str, str] = {}
        self.stop_requested = False
        self.acquired_all = False
        #: the last transitions the table refused (a bug if any: the tests check it stays empty)
        self.rejected: list[tuple[RunState, RunState]] = []

    # -- transitions ------------------------------------------------------------------------
    def _go(self, to: RunState) -> None:
        if to is self.state:
            return
        if to is not RunState.FAILED and to not in TRANSITIONS[self.state]:
            # a gap in the table is a bug, but it must not end a run: stay, and say so
            log.error("supervisor core: run state %s -> %s is not a transition; staying %s", self.state.value, to.value, self.state.value)
            self.rejected.append((self.state, to))
            del self.rejected[:-8]
            return
        self.state = to

    def waiting_to_restart(self, name: str) -> bool:
        return name in self.pending

    # -- events -----------------------------------------------------------------------------
    def handle(self, event: Event) -> list[Instruction]:
        """The instructions for ``event``, in the order to carry them out."""
        if self.state.final:
            return [Refuse(f"the run is {self.state.value}")] if isinstance(event, (StopRequested, PauseRequested, ResumeRequested)) else []
        method = getattr(self, "_on_" + type(event).__name__)
        return method(event)

    def _on_Started(self, ev: Started) -> list[Instruction]:
        self.source = ev.source
        self.live = set(ev.names)
        return [Spawn(n) for n in ev.names]

    def _on_Tick(self, ev: Tick) -> list[Instruction]:
        due = sorted(n for n, t in self.pending.items() if ev.now >= t)
        for n in due:
            del self.pending[n]
        return [Spawn(n, restart=True) for n in due]

    def _on_SourcePhase(self, ev: SourcePhase) -> list[Instruction]:
        phase = RunState(ev.phase)
        if phase not in (RunState.PRERENDERING, RunState.ACQUIRING) or phase is self.source_phase:
            return []
        self.source_phase = phase
        if self.state in (RunState.STARTING, RunState.PRERENDERING, RunState.ACQUIRING):
            self._go(phase)
        return []

    def _on_ProcessExited(self, ev: ProcessExited) -> list[Instruction]:
        if ev.name not in self.live or ev.name in self.pending:
            return []
        action = self.policy.on_exit(ev.name, ev.exitcode, ev.finished)
        out: list[Instruction] = []
        if isinstance(action, Done):
            self.live.discard(ev.name)
            out.append(Retire(ev.name))
            if ev.name == self.source:
                # The stream ended: every frame that entered is drained.
                self.acquired_all = bool(ev.complete) if ev.complete is not None else not self.stop_requested
                if self.state is not RunState.DRAINING:
                    self._go(RunState.DRAINING)
        elif isinstance(action, Restart):
            out.append(RaiseAlert(f"stage {ev.name} crashed (exit {ev.exitcode}); restart {action.attempt} in {action.delay_s:.1f} s",
                                  (("stage", ev.name),)))
            self.pending[ev.name] = ev.now + action.delay_s
        else:
            self._go(RunState.FAILED)
            return [Publish("error", action.reason, (("stage", ev.name),)),
                    Fail(action.reason + ": the run is incomplete; see the stage's log above")]
        if not self.live:
            # FAILED here: the source's stream ended short with no stop (a short replay)
            end = RunState.DONE if self.acquired_all else RunState.STOPPED_EARLY if self.stop_requested else RunState.FAILED
            self._go(end)
            out.append(Finish(end))
        return out

    def _on_HeartbeatStale(self, ev: HeartbeatStale) -> list[Instruction]:
        if self.hang_killed.get(ev.name) == ev.pid or ev.name not in self.live or ev.name in self.pending:
            return []
        self.hang_killed[ev.name] = ev.pid  # it may live on a moment after the kill
        return [RaiseAlert(f"stage {ev.name} heartbeat stale ({ev.age_s:.1f} s, hang timeout {ev.timeout_s:.1f} s "
                           "from the rings ahead of it and the frame rate): restarting", (("stage", ev.name), ("rule", "hang"))),
                Kill(ev.name, ev.pid)]

    def _on_StopRequested(self, ev: StopRequested) -> list[Instruction]:
        if self.stop_requested:
            return []
        self.stop_requested = True
        if self.state is not RunState.DRAINING:
            self._go(RunState.DRAINING)
        return [Publish("stopping", "drain requested: stopping acquisition"), SetDrain()]

    def _pausable(self) -> str | None:
        if self.state is RunState.DRAINING or self.stop_requested:
            return f"the run is {self.state.value}"
        return None

    def _on_PauseRequested(self, ev: PauseRequested) -> list[Instruction]:
        why = self._pausable()
        if why:
            return [Refuse(why + ": only an acquiring run can be paused")]
        if "operator" in self.paused_by:
            return []
        was_paused = bool(self.paused_by)
        self.paused_by["operator"] = ""
        self._go(RunState.PAUSED)
        return ([] if was_paused else [SetPause(True)]) + [Publish("event", "acquisition paused")]

    def _on_ResumeRequested(self, ev: ResumeRequested) -> list[Instruction]:
        why = self._pausable()
        if why:
            return [Refuse(why + ": nothing to resume")]
        if "operator" not in self.paused_by:
            if self.paused_by:
                return [Refuse(f"acquisition is paused for a full disk ({', '.join(sorted(self.paused_by))} waiting for space): "
                               "it resumes by itself when space is freed")]
            return []
        del self.paused_by["operator"]
        if self.paused_by:
            return [Publish("event", f"operator resume: acquisition stays paused for a full disk ({', '.join(sorted(self.paused_by))} waiting for space)")]
        self._go(self.source_phase)  # back to what the source does
        return [SetPause(False), Publish("event", "acquisition resumed")]

    def _on_DiskFull(self, ev: DiskFull) -> list[Instruction]:
        was_paused = bool(self.paused_by)
        self.paused_by[ev.who] = ev.path
        if was_paused or self._pausable():
            return []  # already paused (or draining: the stages wait for space themselves)
        self._go(RunState.PAUSED)
        waiting = sorted(k for k in self.paused_by if k != "operator")
        return [SetPause(True), Publish("event", f"acquisition paused: disk full ({', '.join(waiting)} waiting for space)", (("rule", "disk_full"),))]

    def _on_DiskFreed(self, ev: DiskFreed) -> list[Instruction]:
        if ev.who not in self.paused_by or ev.who == "operator":
            return []
        del self.paused_by[ev.who]
        if self.paused_by or self.state is not RunState.PAUSED:
            return []
        self._go(self.source_phase)  # back to what the source does
        return [SetPause(False), Publish("event", "acquisition resumed: space freed", (("rule", "disk_full"),))]
