"""Crash consistency after a total loss: a SIGKILL of the supervisor and every stage
together (os.killpg, as a power cut or a cgroup OOM kill does), then a resume, compared
file by file with an undisturbed run. The synthetic camera gives its frames again, so the
resumed run folder must be byte-identical."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.pipeline import Supervisor, SupervisorError
from appliance.pipeline._checkpoint import COMMIT_FILE, epochs_on_disk, read_commit
from appliance.runfolder import RunFolder
from tests.appliance.pipeline.test_pipeline_e2e import RUN_ID, config, digest
from tests.runs import small_run_overrides

REPO = Path(__file__).resolve().parents[3]
#: runs the pipeline in its own session (process group), like `appliance run` under systemd
_CHILD = """
import sys
from pathlib import Path
from tests.runs import small_run_config
from appliance.pipeline import Supervisor
root = Path(sys.argv[1])
faults = {"writer-0": {"slow_ms": float(sys.argv[2])}} if float(sys.argv[2]) else None
Supervisor(small_run_config(root), run_id=sys.argv[3], faults=faults).run()
"""


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    root = tmp_path_factory.mktemp("baseline")
    summary = Supervisor(config(root), run_id=RUN_ID).run()
    return summary, digest(root / RUN_ID)


def _state(root: Path) -> Path:
    return root / ".state" / RUN_ID


#: `appliance serve` (the service in its own process group) with a run started on it
_SERVE_CHILD = """
import json, sys, time
from appliance.service import Service
svc = Service(None, json.loads(sys.argv[1])).start()
svc.start_run([], sys.argv[2])
time.sleep(600)
"""


def _kill_group_when(root: Path, condition, slow_ms: float = 0.0, timeout: float = 300.0, argv: list[str] | None = None) -> None:
    """Start a run in its own process group (``argv``: another child program and its
    arguments), SIGKILL the whole group once ``condition()`` holds, and wait until every
    process of the group is gone."""
    argv = argv or [_CHILD, str(root), str(slow_ms), RUN_ID]
    proc = subprocess.Popen([sys.executable, "-c", *argv], cwd=REPO,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while not condition():
            assert proc.poll() is None, f"the run ended (status {proc.returncode}) before the kill point"
            assert time.monotonic() < deadline, "timed out waiting for the kill point"
            time.sleep(0.02)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    deadline = time.monotonic() + 30
    while True:  # the stages were in the group too: wait until none is left
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "processes of the killed group are still alive"
        time.sleep(0.05)


def _committed_at_least(root: Path, epoch: int):
    return lambda: read_commit(_state(root)) >= epoch


def _source_done(root: Path):
    return lambda: 26 in epochs_on_disk(_state(root)).get("source-0", [])


@pytest.mark.parametrize("point", ["before_template", "mid_acquisition", "during_drain"])
def test_sigkill_of_the_whole_process_group_then_resume_is_byte_identical(tmp_path, baseline, point):
    root = tmp_path / "data"
    if point == "before_template":  # the kernel keeps cycles 1..4 to build its cluster template
        _kill_group_when(root, _committed_at_least(root, 2))
        assert read_commit(_state(root)) < 4
    elif point == "mid_acquisition":
        _kill_group_when(root, _committed_at_least(root, 12))
    else:  # every frame acquired, the slowed writer still draining
        _kill_group_when(root, _source_done(root), slow_ms=40)
        assert read_commit(_state(root)) < 26
    committed = read_commit(_state(root))
    assert (_state(root) / "RUNNING.json").exists()

    # A plain run of the same id refuses and names the resume; it marks the run interrupted.
    with pytest.raises(SupervisorError, match="--resume"):
        Supervisor(config(root), run_id=RUN_ID).run()
    assert (_state(root) / "INTERRUPTED.json").exists()

    sup = Supervisor(config(root), run_id=RUN_ID, resume=True)
    summary = sup.run()
    assert summary["resume"]["epoch"] == committed and summary["resume"]["lost_frames"] == 0
    assert summary["resume"]["source_index"] == committed * 2 * 4
    assert digest(root / RUN_ID) == baseline[1]
    folder = RunFolder(root / RUN_ID)
    assert folder.is_complete and folder.verify() == []
    # a finished run keeps no checkpoint, commit or marker
    left = sorted(p.name for p in _state(root).iterdir() if p.suffix == ".ckpt" or p.name in (COMMIT_FILE, "RUNNING.json", "INTERRUPTED.json"))
    assert left == []


def test_serve_resumes_a_run_interrupted_by_a_total_loss_when_it_starts_again(tmp_path, baseline):
    """The service and its run die together mid-acquisition; the next service start goes on
    with that run (its recorded config) and the folder is the undisturbed run's, byte for byte."""
    from appliance.service import Service

    root = tmp_path / "data"
    overrides = small_run_overrides(root, f'control.socket_dir="{tmp_path / "sock"}"', "offload.enabled=false")
    _kill_group_when(root, _committed_at_least(root, 12), argv=[_SERVE_CHILD, json.dumps(overrides), RUN_ID])
    committed = read_commit(_state(root))
    svc = Service(None, overrides).start()
    try:
        assert svc.resumed == RUN_ID
        svc.thread.join(300)
        assert not svc.thread.is_alive() and svc.last_error is None
    finally:
        svc.shutdown()
    summary = svc.last_summary
    assert summary["resume"]["epoch"] == committed and summary["resume"]["lost_frames"] == 0
    assert digest(root / RUN_ID) == baseline[1]
    again = Service(None, overrides, auto_resume=True).start()  # nothing is left to resume
    try:
        assert again.resumed is None and again.supervisor is None
    finally:
        again.shutdown()


def test_serve_without_a_record_of_the_interrupted_run_stays_idle_and_says_how_to_resume(tmp_path):
    from appliance.service import Service

    root = tmp_path / "data"
    _kill_group_when(root, _committed_at_least(root, 1))  # `appliance run`-like child: no serve record
    (_state(root) / "invocation.json").unlink(missing_ok=True)
    svc = Service(None, small_run_overrides(root, f'control.socket_dir="{tmp_path / "sock"}"', "offload.enabled=false")).start()
    try:
        assert svc.resumed is None and svc.supervisor is None
        assert "has no" in svc.last_error and f"appliance run --resume {root.resolve() / RUN_ID}" in svc.last_error
    finally:
        svc.shutdown()
    assert (_state(root) / "INTERRUPTED.json").exists()


def test_a_plain_run_marks_an_interrupted_run_of_another_id_and_names_the_resume(tmp_path):
    root = tmp_path / "data"
    _kill_group_when(root, _committed_at_least(root, 1))
    sup = Supervisor(config(root, "run.cycles=6"), run_id="OTHER")
    sup.run()
    assert (_state(root) / "INTERRUPTED.json").exists() and not (_state(root) / "RUNNING.json").exists()
    warnings = [e["message"] for e in sup.events if e["kind"] == "warning" and e.get("run") == RUN_ID]
    assert warnings and f"appliance run --resume {root.resolve() / RUN_ID}" in warnings[0]


def test_resume_of_a_run_that_is_not_interrupted_is_refused(tmp_path):
    with pytest.raises(SupervisorError, match="not an interrupted run"):
        Supervisor(config(tmp_path, "run.cycles=6"), run_id="NEVER", resume=True).run()


def test_resume_with_another_config_is_refused_naming_the_keys(tmp_path):
    root = tmp_path / "data"
    _kill_group_when(root, _committed_at_least(root, 1))
    with pytest.raises(SupervisorError, match="run.cycles"):
        Supervisor(config(root, "run.cycles=30"), run_id=RUN_ID, resume=True).run()
    assert json.loads((_state(root) / "config.json").read_text())["run"]["cycles"] == 26


def test_appliance_run_resume_after_a_killed_process_group(tmp_path, baseline, capsys):
    """The documented verb: `appliance run` killed with its stages, then `appliance run
    --resume RUN_DIR` with nothing else: the run's own --set come back from its state."""
    from appliance.cli import main

    root = tmp_path / "data"
    sets = [f'output.root="{root}"', "source.synthetic.tile_size=256", "source.rate_hz=0", 'edges.raw.policy="block"',
            "supervisor.backoff_s=0.1", "control.enabled=false"]
    argv = [sys.executable, "-m", "appliance", "run", "--run-id", RUN_ID, "--no-offload", *[a for s in sets for a in ("--set", s)]]
    proc = subprocess.Popen(argv, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while read_commit(_state(root)) < 8:
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before the kill point"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    while True:
        try:
            os.killpg(proc.pid, 0)
            time.sleep(0.05)
        except ProcessLookupError:
            break
    assert main(["run", "--resume", str(root / RUN_ID), "--no-offload", "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "resumed: every stage restored cycle" in out
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["resume"]["epoch"] >= 8 and summary["resume"]["lost_frames"] == 0
    files = digest(root / RUN_ID)
    assert {k: files.get(k) for k in baseline[1]} == baseline[1]
