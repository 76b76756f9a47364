"""One real small pipeline run (2 tiles of 256 px, 20 cycles, a dim flow cell, raw frames kept) shared by the
analysis tests, and helpers to call a job function the way the executor does."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.runs import small_run_config
from appliance.offload.context import JobContext

RUN_ID = "ANALYSIS"
CYCLES = 20


@dataclass(frozen=True)
class Run:
    config: object
    root: Path
    run_id: str
    summary: dict

    @property
    def path(self) -> Path:
        return self.root / self.run_id


def make_run(root: Path, run_id: str = RUN_ID, *extra: str) -> Run:
    from appliance.pipeline import Supervisor

    # A dim flow cell (300 e- clusters): a run with base-call errors to find (~0.2%; at the
    # default 2000 e- the 20 cycles are called without error).
    cfg = small_run_config(root, "output.keep_raw_every=1", f"run.cycles={CYCLES}", "control.enabled=false",
                           "source.synthetic.brightness=300", *extra)
    summary = Supervisor(cfg, run_id=run_id).run()
    assert summary["run_complete"], summary
    return Run(cfg, root, run_id, summary)


@pytest.fixture(scope="package")
def analysis_run(tmp_path_factory) -> Run:
    return make_run(tmp_path_factory.mktemp("analysis"))


def job(tmp_path: Path, kind: str, data_root: Path, name: str | None = None, algorithm=None, version=None) -> JobContext:
    """A JobContext with a fresh, empty staging folder under ``tmp_path``."""
    name = name or kind
    staging = tmp_path / f".{name}.staging"
    staging.mkdir(parents=True)
    return JobContext(1, kind, 1, data_root, staging, tmp_path / name, algorithm, version)


def copy_run(run: Run, dest_root: Path) -> Path:
    """A copy of the run folder (and its state) under ``dest_root`` to damage in a test."""
    dest_root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(run.path, dest_root / run.run_id)
    if (run.root / ".state" / run.run_id).is_dir():
        shutil.copytree(run.root / ".state" / run.run_id, dest_root / ".state" / run.run_id)
    return dest_root / run.run_id
