"""fastq: the same records as picard's IlluminaBasecallsToFastq on the same run folder,
deterministic output, and clear errors for incomplete or corrupt runs."""

from __future__ import annotations

import gzip
import hashlib
import subprocess
from pathlib import Path

import pytest

from appliance.analysis import fastq
from appliance.offload.errors import PermanentJobError
from appliance.runfolder import RunFolder
from tests.appliance.analysis.conftest import copy_run, job

PICARD = "/usr/bin/PicardCommandLine"


def picard_fastq(run_dir: Path, out: Path) -> bytes:
    """picard's FASTQ of a single-read run folder, with our read-name values."""
    info = RunFolder(run_dir).info
    (out / "tmp").mkdir(parents=True)
    cmd = [PICARD, "IlluminaBasecallsToFastq", f"BASECALLS_DIR={run_dir}/Data/Intensities/BaseCalls", f"LANE={info.lane}",
           f"READ_STRUCTURE={info.read_structure}", f"OUTPUT_PREFIX={out}/sample", f"RUN_BARCODE={info.number}",
           f"MACHINE_NAME={info.instrument}", f"FLOWCELL_BARCODE={info.flowcell}", "APPLY_EAMSS_FILTER=false",
           "INCLUDE_NON_PF_READS=true", "NUM_PROCESSORS=2", f"TMP_DIR={out}/tmp"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    return (out / "sample.1.fastq").read_bytes()


def records(data: bytes) -> list[tuple[bytes, ...]]:
    lines = data.split(b"\n")
    return [tuple(lines[i:i + 4]) for i in range(0, len(lines) - 1, 4)]


@pytest.mark.skipif(not Path(PICARD).exists(), reason="picard-tools is not installed (apt-get install picard-tools libcommons-lang-java)")
def test_fastq_matches_picard_record_by_record(analysis_run, tmp_path):
    ctx = job(tmp_path, "fastq", analysis_run.root)
    result = fastq.run_job({"run": analysis_run.run_id}, ctx)
    name = f"{analysis_run.run_id}_L001_R1.fastq.gz"
    ours = gzip.decompress((ctx.staging_dir / name).read_bytes())
    theirs = picard_fastq(analysis_run.path, tmp_path / "picard")
    mine, ref = records(ours), records(theirs)
    assert len(mine) == len(ref) == result["reads"] == result["clusters"]
    for a, b in zip(mine, ref):
        assert a == b
    assert ours == theirs
    assert result["pf_reads"] == sum(1 for r in mine if b":N:0:" in r[0])
    assert result["bases"] == result["reads"] * 20
    assert result["files"][name] == (ctx.staging_dir / name).stat().st_size


@pytest.mark.skipif(not Path(PICARD).exists(), reason="picard-tools is not installed")
def test_no_calls_and_low_qualities_match_picard(analysis_run, tmp_path):
    run_dir = copy_run(analysis_run, tmp_path / "root")
    bcl = run_dir / RunFolder(run_dir).layout.bcl(1101, 3)
    data = bytearray(bcl.read_bytes())
    data[4:24] = bytes(20)  # no-calls
    data[30] = 1  # C with quality 0
    data[31] = (1 << 2) | 2  # G with quality 1
    bcl.write_bytes(bytes(data))
    fastq.write_fastq(run_dir, tmp_path / "ours")
    ours = gzip.decompress((tmp_path / "ours" / f"{analysis_run.run_id}_L001_R1.fastq.gz").read_bytes())
    assert b"N" in b"".join(r[1] for r in records(ours))
    assert ours == picard_fastq(run_dir, tmp_path / "picard")


def test_pf_only_and_determinism(analysis_run, tmp_path):
    a = fastq.write_fastq(analysis_run.path, tmp_path / "a")
    b = fastq.write_fastq(analysis_run.path, tmp_path / "b")
    name = f"{analysis_run.run_id}_L001_R1.fastq.gz"
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert a == b
    pf = fastq.write_fastq(analysis_run.path, tmp_path / "pf", include_non_pf=False)
    recs = records(gzip.decompress((tmp_path / "pf" / name).read_bytes()))
    assert pf["reads"] == len(recs) == a["pf_reads"] < a["reads"]
    assert all(r[0].endswith(b" :N:0:") for r in recs)


def test_job_output_is_byte_identical_when_run_twice(analysis_run, tmp_path):
    digests = []
    for i in range(2):
        ctx = job(tmp_path / str(i), "fastq", analysis_run.root)
        fastq.run_job({"run": analysis_run.run_id}, ctx)
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(ctx.staging_dir.iterdir())})
    assert digests[0] == digests[1] and len(digests[0]) == 2


def test_incomplete_run_is_a_permanent_error(analysis_run, tmp_path):
    run_dir = copy_run(analysis_run, tmp_path / "root")
    (run_dir / "CopyComplete.txt").unlink()
    (run_dir / "Manifest" / "run.json").unlink()
    with pytest.raises(PermanentJobError, match="not complete.*once the run has finished"):
        fastq.run_job({"run": analysis_run.run_id}, job(tmp_path, "fastq", tmp_path / "root"))


def test_corrupt_bcl_is_a_permanent_error_naming_the_file(analysis_run, tmp_path):
    run_dir = copy_run(analysis_run, tmp_path / "root")
    bcl = run_dir / RunFolder(run_dir).layout.bcl(1102, 7)
    data = bytearray(bcl.read_bytes())
    data[100] ^= 0xFF
    bcl.write_bytes(bytes(data))
    with pytest.raises(PermanentJobError, match=r"C7\.1/s_1_1102\.bcl: CRC32C.*restore"):
        fastq.run_job({"run": analysis_run.run_id}, job(tmp_path, "fastq", tmp_path / "root"))


def test_bad_params(analysis_run, tmp_path):
    with pytest.raises(PermanentJobError, match="allowed: run, include_non_pf"):
        fastq.run_job({"run": analysis_run.run_id, "lanes": 2}, job(tmp_path, "fastq", analysis_run.root))
    with pytest.raises(PermanentJobError, match="does not exist"):
        fastq.run_job({"run": "NOPE"}, job(tmp_path / "x", "fastq", analysis_run.root))
    with pytest.raises(PermanentJobError, match="not a run id"):
        fastq.run_job({"run": "../etc"}, job(tmp_path / "y", "fastq", analysis_run.root))
