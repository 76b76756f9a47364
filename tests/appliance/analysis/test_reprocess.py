"""reprocess and compare: production reproduces the run bit for bit; candidates are compared
and a deliberately bad one is judged "rollback"."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from appliance.analysis import compare, reprocess
from appliance.analysis.algorithms import AlgorithmRegistry
from appliance.offload.errors import PermanentJobError
from tests.appliance.analysis.conftest import copy_run, job


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def production_output(analysis_run, tmp_path_factory):
    ctx = job(tmp_path_factory.mktemp("rp"), "reprocess", analysis_run.root)
    result = reprocess.run_job({"run": analysis_run.run_id}, ctx)
    return ctx.staging_dir, result


def test_reprocess_with_production_reproduces_the_run_exactly(analysis_run, production_output):
    out, result = production_output
    assert result["algorithm"] == "chain@1" and result["settings_source"] == "run" and result["tiles"] == [1101, 1102]
    mine = digest(out / analysis_run.run_id)
    theirs = digest(analysis_run.path)
    # every file is the run's, byte for byte: the calls, the cycle and run manifests, and the
    # instrument's QC (InterOp/, RunParameters.xml, RunInfo.xml with its ImageChannels)
    assert {"RunInfo.xml", "RunParameters.xml", "InterOp/TileMetricsOut.bin", "InterOp/ErrorMetricsOut.bin"} <= set(mine)
    assert all(theirs[k] == v for k, v in mine.items())
    # not reprocessed: the raw frames, and how the acquisition ended (the run's)
    assert set(theirs) - set(mine) == {p for p in theirs if p.startswith("Raw/")} | {"RunCompletionStatus.xml"}
    assert json.loads((out / reprocess.RESULT_FILE).read_text()) == result


def _interop_counts(run_dir: Path) -> dict:
    interop = pytest.importorskip("interop")  # Illumina's reader (GPL): a test-only dependency
    rm = interop.read(str(run_dir))
    sets = {"tile": rm.tile_metric_set(), "q": rm.q_metric_set(), "extraction": rm.extraction_metric_set(),
            "corrected": rm.corrected_intensity_metric_set(), "error": rm.error_metric_set()}
    out = {}
    for name, ms in sets.items():
        recs = [ms.at(i) for i in range(ms.size())]
        out[name] = sorted({(r.tile(), r.cycle()) for r in recs} if name != "tile" else {r.tile() for r in recs})
    total = interop.summary(rm)[0]
    out["summary"] = {k: total[k] for k in ("Cluster Count", "Cluster Count Pf", "% >= Q30", "Error Rate") if k in total.dtype.names}
    return out


def test_reprocess_output_is_read_by_illumina_interop_as_the_run(analysis_run, production_output):
    out, _ = production_output
    got, want = _interop_counts(out / analysis_run.run_id), _interop_counts(analysis_run.path)
    assert got == want
    assert got["tile"] == [1101, 1102] and len(got["q"]) == 2 * 20 and len(got["error"]) == 2 * 20
    assert (out / analysis_run.run_id / "RunInfo.xml").read_bytes() == (analysis_run.path / "RunInfo.xml").read_bytes()


def test_reprocess_without_the_state_folder_still_writes_interop(analysis_run, tmp_path):
    """Everything but the error rates comes from the run folder itself: without the run's
    state folder (its config: the ground truth) only ErrorMetricsOut.bin is left out."""
    root = tmp_path / "root"
    root.mkdir()
    shutil.copytree(analysis_run.path, root / analysis_run.run_id)
    ctx = job(tmp_path, "reprocess", root)
    result = reprocess.run_job({"run": analysis_run.run_id}, ctx)
    assert result["settings_source"] == "defaults"
    run_dir = ctx.staging_dir / analysis_run.run_id
    assert (run_dir / "RunInfo.xml").read_bytes() == (analysis_run.path / "RunInfo.xml").read_bytes()
    assert (run_dir / "RunParameters.xml").read_bytes() == (analysis_run.path / "RunParameters.xml").read_bytes()
    assert not (run_dir / "InterOp" / "ErrorMetricsOut.bin").exists()
    got, want = _interop_counts(run_dir), _interop_counts(analysis_run.path)
    assert got["error"] == [] and want["error"]
    assert {k: v for k, v in got.items() if k not in ("error", "summary")} == {k: v for k, v in want.items() if k not in ("error", "summary")}


def test_reprocess_is_deterministic(analysis_run, production_output, tmp_path):
    ctx = job(tmp_path, "reprocess", analysis_run.root)
    reprocess.run_job({"run": analysis_run.run_id}, ctx)
    assert digest(ctx.staging_dir) == digest(production_output[0])


def test_run_without_raw_frames_names_the_setting(analysis_run, tmp_path):
    run_dir = copy_run(analysis_run, tmp_path / "root")
    shutil.rmtree(run_dir / "Raw")
    with pytest.raises(PermanentJobError, match="output.keep_raw_every"):
        reprocess.run_job({"run": analysis_run.run_id}, job(tmp_path, "reprocess", tmp_path / "root"))


def test_unknown_algorithm_is_a_permanent_error(analysis_run, tmp_path):
    with pytest.raises(PermanentJobError, match="no algorithm nope@1"):
        reprocess.run_job({"run": analysis_run.run_id}, job(tmp_path, "reprocess", analysis_run.root, algorithm="nope", version="1"))


def _candidate(analysis_run, tmp_path, name, version, params):
    root = tmp_path / "root"
    if not root.exists():
        copy_run(analysis_run, root)
    reg = AlgorithmRegistry(root)
    reg.register(name, version, params)
    reg.set_candidate(name, version)
    ctx = job(tmp_path / f"{name}{version}", "reprocess", root, algorithm=name, version=version)
    reprocess.run_job({"run": analysis_run.run_id}, ctx)
    cctx = job(tmp_path / f"{name}{version}", "compare", root)
    result = compare.run_job({"run": analysis_run.run_id, "candidate": str(ctx.staging_dir), "algorithm": name, "version": version}, cctx)
    return result, json.loads((cctx.staging_dir / compare.RESULT_FILE).read_text()), (cctx.staging_dir / compare.REPORT_FILE).read_text()


def test_production_against_itself_is_identical_and_promotable(analysis_run, production_output, tmp_path):
    ctx = job(tmp_path, "compare", analysis_run.root)
    result = compare.run_job({"run": analysis_run.run_id, "candidate": str(production_output[0]), "algorithm": "chain", "version": "1"}, ctx)
    doc = json.loads((ctx.staging_dir / compare.RESULT_FILE).read_text())
    assert result["verdict"] == "promote" and result["agreement"] == 1.0 and result["matched_fraction"] == 1.0
    assert result["error_rate"]["production"] == result["error_rate"]["candidate"] > 0
    assert all(v["median_rel_diff"] == 0.0 and v["p95_rel_diff"] == 0.0 for v in doc["intensity"].values())
    assert doc["pf_rate"]["production"] == doc["pf_rate"]["candidate"]


def test_a_close_candidate_is_promoted_and_a_bad_one_rolled_back(analysis_run, tmp_path):
    good, gdoc, _ = _candidate(analysis_run, tmp_path, "chain", "2", {"chain": {"background_percentile": 25.0}})
    assert good["verdict"] == "promote", good
    assert 0.98 <= good["agreement"] < 1.0 and gdoc["intensity"]["A"]["median_rel_diff"] > 0
    bad, bdoc, md = _candidate(analysis_run, tmp_path, "wide", "1", {"chain": {"psf_sigma": 2.5, "extraction": "bilinear"}})
    assert bad["verdict"] == "rollback" and bad["reasons"]
    assert bdoc["clusters"]["matched"] < bdoc["clusters"]["production"]
    assert "**Verdict: rollback**" in md and "wide@1" in md
    # the thresholds are the caller's: a lenient threshold set promotes the same candidate
    ctx = job(tmp_path / "lenient", "compare", tmp_path / "root")
    lenient = compare.run_job({"run": analysis_run.run_id, "candidate": str(tmp_path / "wide1" / ".reprocess.staging"), "algorithm": "wide",
                               "version": "1", "min_matched": 0.5, "max_error_increase": 0.01}, ctx)
    assert lenient["verdict"] == "promote"


def test_compare_bad_candidate_folder(analysis_run, tmp_path):
    with pytest.raises(PermanentJobError, match="run the reprocess job"):
        compare.run_job({"run": analysis_run.run_id, "candidate": str(tmp_path), "algorithm": "a", "version": "1"}, job(tmp_path / "c", "compare", analysis_run.root))
