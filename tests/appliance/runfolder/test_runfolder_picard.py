"""An existing tool reads our run folder: picard's IlluminaBasecallsToFastq turns it into FASTQ
whose reads and qualities are the ones written."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from runfolder_helpers import INFO, make_tiles, write_run

PICARD = shutil.which("PicardCommandLine")


@pytest.mark.skipif(
    PICARD is None,
    reason="picard is not installed (PicardCommandLine absent); "
    "install it with: apt-get install -y picard-tools libcommons-lang-java",
)
def test_picard_converts_the_run_folder_to_the_written_reads(tmp_path):
    tiles = make_tiles(n=300, seed=11)
    run = write_run(tmp_path / "runs", tiles).path
    out = tmp_path / "fastq"
    (out / "tmp").mkdir(parents=True)
    # exactly as in the notes; the launcher splits on spaces, and tmp_path has none
    cmd = [
        PICARD,
        "IlluminaBasecallsToFastq",
        f"BASECALLS_DIR={run}/Data/Intensities/BaseCalls",
        f"LANE={INFO.lane}",
        f"READ_STRUCTURE={INFO.read_structure}",
        f"OUTPUT_PREFIX={out}/sample",
        "RUN_BARCODE=R1",
        "MACHINE_NAME=M",
        "FLOWCELL_BARCODE=FC",
        "APPLY_EAMSS_FILTER=false",
        "INCLUDE_NON_PF_READS=true",
        "NUM_PROCESSORS=2",
        f"TMP_DIR={out}/tmp",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = (out / "sample.1.fastq").read_text().splitlines()
    assert len(lines) % 4 == 0
    got = {}
    for i in range(0, len(lines), 4):
        # @M:R1:FC:<lane>:<tile>:<x>:<y> ...; picard derives x, y as round(10 * pos + 1000)
        f = lines[i].split()[0].split(":")
        got[(int(f[3]), int(f[4]), int(f[5]), int(f[6]))] = (lines[i + 1], lines[i + 3])
    assert len(got) == 2 * 300  # every cluster, non-PF ones included
    for tile, d in tiles.items():
        for k in range(300):
            key = (
                INFO.lane,
                tile,
                round(10 * float(d.xy[k, 0]) + 1000),
                round(10 * float(d.xy[k, 1]) + 1000),
            )
            seq = "".join("ACGTN"[b] for b in d.bases[k])
            # a no-call comes out as N with quality 2 ('#')
            qual = "".join(
                chr(33 + (2 if b == 4 else q)) for b, q in zip(d.bases[k], d.quals[k], strict=True)
            )
            assert got[key] == (seq, qual), f"tile {tile} cluster {k}"
