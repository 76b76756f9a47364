"""cycle-qc: figures checked against values computed directly from the .bcl and intensities."""

from __future__ import annotations

import json

import numpy as np
import pytest

from appliance.analysis import cycle_qc
from appliance.offload.errors import PermanentJobError
from appliance.runfolder import RunFolder
from tests.appliance.analysis.conftest import copy_run, job


def test_figures_match_the_bcl_and_intensities(analysis_run, tmp_path):
    ctx = job(tmp_path, "cycle-qc", analysis_run.root)
    result = cycle_qc.run_job({"run": analysis_run.run_id, "cycle": 5}, ctx)
    doc = json.loads((ctx.staging_dir / "cycle_qc_0005.json").read_text())
    folder = RunFolder(analysis_run.path)
    bases = np.concatenate([folder.read_bcl(t, 5)[0] for t in folder.info.tiles])
    quals = np.concatenate([folder.read_bcl(t, 5)[1] for t in folder.info.tiles])
    intens = np.concatenate([folder.read_intensities(t, 5) for t in folder.info.tiles])
    assert result["clusters"] == doc["all"]["clusters"] == len(bases)
    assert doc["all"]["mean_quality"] == pytest.approx(quals.mean())
    assert doc["all"]["pct_q30"] == pytest.approx(100 * (quals >= 30).mean())
    for k, b in enumerate("ACGT"):
        assert doc["all"]["base_composition"][b] == pytest.approx(100 * (bases == k).mean())
        assert doc["all"]["intensity"][b]["median"] == pytest.approx(float(np.median(intens[:, k])))
        assert doc["all"]["intensity"][b]["mean"] == pytest.approx(float(intens[:, k].mean()))
    t = doc["tiles"]["1101"]
    b1101 = folder.read_bcl(1101, 5)[0]
    assert t["clusters"] == len(b1101) and t["base_composition"]["G"] == pytest.approx(100 * (b1101 == 2).mean())


def test_no_calls_count_and_lower_the_quality(analysis_run, tmp_path):
    """A run folder written with no-calls (through the real writer, so the manifest lists them)."""
    from appliance.runfolder import RunFolderWriter

    src = RunFolder(analysis_run.path)
    w = RunFolderWriter(tmp_path / "root", src.info)
    for tile in src.info.tiles:
        w.write_locs(tile, src.read_locs(tile))
        b, q = src.read_bcl(tile, 1)
        b, q = b.copy(), q.copy()
        b[:10], q[:10] = 4, 0
        w.write_bcl(tile, 1, b, q)
        w.write_intensities(tile, 1, src.read_intensities(tile, 1))
    w.complete_cycle(1)
    doc = cycle_qc.cycle_figures(RunFolder(tmp_path / "root" / src.info.run_id), 1)
    n = doc["all"]["clusters"]
    assert doc["all"]["pct_no_call"] == pytest.approx(100 * 20 / n)


def test_incomplete_cycle_bad_cycle_and_damage_are_permanent_errors(analysis_run, tmp_path):
    with pytest.raises(PermanentJobError, match="allowed 1..20"):
        cycle_qc.run_job({"run": analysis_run.run_id, "cycle": 21}, job(tmp_path / "a", "cycle-qc", analysis_run.root))
    run_dir = copy_run(analysis_run, tmp_path / "root")
    (run_dir / "Manifest" / "cycle_0004.json").unlink()
    with pytest.raises(PermanentJobError, match="cycle 4 is not complete"):
        cycle_qc.run_job({"run": analysis_run.run_id, "cycle": 4}, job(tmp_path / "b", "cycle-qc", tmp_path / "root"))
    bcl = run_dir / RunFolder(run_dir).layout.bcl(1101, 2)
    bcl.write_bytes(bcl.read_bytes()[:-1] + b"\x07")
    with pytest.raises(PermanentJobError, match="damaged"):
        cycle_qc.run_job({"run": analysis_run.run_id, "cycle": 2}, job(tmp_path / "c", "cycle-qc", tmp_path / "root"))
