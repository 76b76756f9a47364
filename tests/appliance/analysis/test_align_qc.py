"""align-qc: % aligned and the per-cycle error rate of a real synthetic run agree with the
ground truth the synthetic instrument knows.

Tolerance: a PF read aligned at its true position is compared over its whole length with the
reference window its cluster was drawn from, so its mismatches are exactly the truth's errors
of that cluster. The figures can only differ through PF reads that do not align (their errors
are not seen) or PF clusters the truth scorer could not match to a true cluster (their reads
count here but not there). So the allowed difference in errors is the bases of those reads:
per cycle, |mismatches - truth errors| <= unaligned + unmatched PF reads, and % aligned within
1 point of the truth's matched fraction of PF clusters (the synthetic runs have ~100%).
"""

from __future__ import annotations

import json

import pytest

from appliance.analysis import align_qc, fastq
from appliance.offload.errors import PermanentJobError
from appliance.pipeline.summary import score_against_truth
from appliance.runfolder.layout import REFERENCE
from tests.appliance.analysis.conftest import copy_run, job


@pytest.fixture(scope="module")
def fastq_dir(analysis_run, tmp_path_factory):
    ctx = job(tmp_path_factory.mktemp("fq"), "fastq", analysis_run.root)
    fastq.run_job({"run": analysis_run.run_id}, ctx)
    return ctx.staging_dir


def test_error_rate_and_aligned_fraction_match_ground_truth(analysis_run, fastq_dir, tmp_path):
    ctx = job(tmp_path, "align-qc", analysis_run.root)
    result = align_qc.run_job({"run": analysis_run.run_id, "fastq": str(fastq_dir)}, ctx)
    truth = score_against_truth(analysis_run.config, analysis_run.path)
    doc = json.loads((ctx.staging_dir / align_qc.RESULT_FILE).read_text())
    pf_reads = result["pf_reads"]
    truth_pf_matched = (truth["bases_called"] + truth["no_calls"]) // 20  # PF clusters matched to the truth
    unmatched = pf_reads - truth_pf_matched
    unaligned = pf_reads - result["aligned"]
    # no-calls (cluster-cycles out of view) are N in the FASTQ: the same count, but for
    # those in reads the truth could not match or minimap2 could not align
    assert abs(result["no_calls"] - truth["no_calls"]) <= (unaligned + unmatched) * 20
    assert abs(result["pct_aligned"] - 100.0 * truth_pf_matched / pf_reads) <= 1.0
    slack = unaligned + unmatched
    for ours, theirs in zip(doc["per_cycle"], truth["per_cycle"]):
        assert abs(ours["mismatches"] - theirs["errors"]) <= slack, (ours, theirs)
    assert abs(result["error_rate"] - truth["error_rate"]) <= slack * 20 / max(result["bases_compared"], 1) + 1e-12
    assert result["mismatches"] > 0  # the run has errors to find: the comparison is not vacuous
    tsv = (ctx.staging_dir / align_qc.PER_CYCLE_FILE).read_text().splitlines()
    assert tsv[0].split("\t") == ["cycle", "bases", "mismatches", "no_calls", "error_rate"] and len(tsv) == 21


def test_errors_are_counted_at_their_cycle_on_both_strands(analysis_run):
    """A read with a known substitution, forward and reverse-complemented: the error is found
    at its cycle in both orientations (the reverse read's cycles run backwards on the reference)."""
    aligner = align_qc.make_aligner(analysis_run.path / REFERENCE, 20)
    ref = next(iter(align_qc._load_reference(aligner).values()))
    read = list(ref[5000:5020])
    read[14] = "A" if read[14] != "A" else "C"  # cycle 15
    fwd = "".join(read)
    comp = {"A": "T", "C": "G", "G": "C", "T": "A"}
    # the reverse-strand read is the reverse complement of the window, its cycle 15 at window position 5
    rc_window = "".join(comp[b] for b in reversed(ref[7000:7020]))
    rev = list(rc_window)
    rev[14] = "A" if rev[14] != "A" else "C"
    prof = align_qc.align_reads(aligner, [(fwd, 1), ("".join(rev), 1)], 20)
    assert prof.aligned == 2
    assert prof.mismatches.tolist() == [0] * 14 + [2] + [0] * 5
    assert prof.bases.tolist() == [2] * 20


def test_missing_fastq_or_reference_is_a_permanent_error(analysis_run, fastq_dir, tmp_path):
    with pytest.raises(PermanentJobError, match="run the fastq job"):
        align_qc.run_job({"run": analysis_run.run_id, "fastq": str(tmp_path / "nothing")}, job(tmp_path, "align-qc", analysis_run.root))
    root = tmp_path / "root"
    run_dir = copy_run(analysis_run, root)
    (run_dir / REFERENCE).unlink()
    with pytest.raises(PermanentJobError, match="genome.fa"):
        align_qc.run_job({"run": analysis_run.run_id, "fastq": str(fastq_dir)}, job(tmp_path / "b", "align-qc", root))


def test_only_the_reference_is_verified_of_the_run_folder(analysis_run, fastq_dir, tmp_path):
    """align-qc reads the FASTQs and the reference: a damaged base call (the fastq job's
    concern, already converted) costs it no re-read, a damaged reference is refused."""
    from appliance.runfolder import RunFolder

    root = tmp_path / "root"
    run_dir = copy_run(analysis_run, root)
    bcl = run_dir / RunFolder(run_dir).layout.bcl(1102, 7)
    bcl.write_bytes(bcl.read_bytes()[:-1] + b"\x00")
    assert align_qc.run_job({"run": analysis_run.run_id, "fastq": str(fastq_dir)}, job(tmp_path / "a", "align-qc", root))["pf_reads"] > 0
    ref = run_dir / REFERENCE
    ref.write_text(ref.read_text().replace("A", "C", 1))
    with pytest.raises(PermanentJobError, match=r"genome\.fa: CRC32C .* restore the reference"):
        align_qc.run_job({"run": analysis_run.run_id, "fastq": str(fastq_dir)}, job(tmp_path / "b", "align-qc", root))


def test_align_qc_output_is_deterministic(analysis_run, fastq_dir, tmp_path):
    outs = []
    for i in range(2):
        ctx = job(tmp_path / str(i), "align-qc", analysis_run.root)
        align_qc.run_job({"run": analysis_run.run_id, "fastq": str(fastq_dir)}, ctx)
        outs.append({p.name: p.read_bytes() for p in ctx.staging_dir.iterdir()})
    assert outs[0] == outs[1]
