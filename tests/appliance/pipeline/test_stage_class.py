"""A stage written as one class (docs/architecture.md, "Writing a stage"): its unit test
through a real ring without processes, and the same class named in the config running in a
real run in place of the built-in kernel stage."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import rt
from appliance.pipeline.handlers import Handler


@dataclass(frozen=True)
class CountState:
    frames: int = 0


class CountingKernel(Handler):
    """The example of docs/architecture.md: forwards every frame and counts them."""

    numa = "gpu"

    def __init__(self, spec, stats) -> None:
        super().__init__(spec, stats)
        self.frames = 0

    def on_frame(self, frame, out) -> None:
        self.frames += 1
        self.stats.extra["counted"] = self.frames
        out.emit(frame.kind, frame.tile, frame.cycle, frame.channel, frame.array(), source_header=frame.header, flags=frame.flags)

    def snapshot(self) -> CountState:
        return CountState(self.frames)

    def restore(self, state: CountState) -> None:
        self.frames = state.frames


def test_the_stage_alone_through_a_real_ring_and_its_state(tmp_path):
    from tests.appliance.pipeline.test_checkpoint_state import Harness

    target = f'stages.kernel.handler="{__name__}:CountingKernel"'
    h = Harness(tmp_path, "kernel", target, 'stages.kernel.algorithm="passthrough"')
    try:
        assert isinstance(h.handler, CountingKernel)
        image = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
        for ch in range(4):
            h.feed(rt.FrameKind.IMAGE, 1101, 1, ch, image)
        assert h.emitted == [(rt.FrameKind.IMAGE, 1101, 1, ch) for ch in range(4)]
        state = h.handler.snapshot()
        assert state == CountState(4)
        again = CountingKernel(h.spec, h.stats)
        again.restore(state)
        assert again.frames == 4
    finally:
        h.close()


def test_the_class_named_in_the_config_runs_in_a_real_run(tmp_path):
    from appliance.pipeline import Supervisor
    from tests.runs import small_run_config

    cfg = small_run_config(tmp_path, f'stages.kernel.handler="{__name__}:CountingKernel"', 'stages.kernel.algorithm="passthrough"',
                           "run.cycles=3", "run.tiles=[1101]")
    summary = Supervisor(cfg, run_id="MINE").run()
    assert summary["frames_acquired"] == 12 and summary["frames_dropped"] == 0
    assert summary["stages"]["kernel-0"]["counted"] == 12  # its own figure, in the run's summary
    assert summary["stages"]["writer-0"]["frames_in"] == 12
