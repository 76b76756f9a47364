"""RunFolderWriter: layout, read-back, manifest, verify, idempotence, resume, and refusals."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from runfolder_helpers import INFO, make_tiles, tree_digest, write_cycle, write_run

from appliance.runfolder import (
    RunFolder,
    RunFolderError,
    RunFolderWriter,
    RunInfo,
)
from appliance.runfolder import checksum_file


@pytest.fixture(scope="module")
def tiles():
    return make_tiles(n=300, seed=0)


def test_written_run_reads_back(tmp_path, tiles):
    w = write_run(tmp_path, tiles)
    rf = RunFolder(tmp_path / INFO.run_id)
    assert rf.info == INFO and rf.is_complete and w.is_complete
    for tile, d in tiles.items():
        assert (rf.read_locs(tile) == d.xy).all()
        assert (rf.read_filter(tile) == d.passed).all()
        for c in (1, 13, 26):
            bases, quals = rf.read_bcl(tile, c)
            assert (bases == d.bases[:, c - 1]).all()
            called = bases != 4
            assert (quals[called] == d.quals[called, c - 1]).all()
            assert (rf.read_intensities(tile, c) == d.intensities[c - 1]).all()
            assert (rf.read_intensities(tile, c, mmap=True) == d.intensities[c - 1]).all()
    assert rf.read_reference() == b">chr1\nACGTACGTAC\n"
    idx = rf.intensities_index()
    assert (
        np.load(rf.path / idx["path"].format(tile=1102, cycle=5)) == tiles[1102].intensities[4]
    ).all()
    for marker in ("RTAComplete.txt", "CopyComplete.txt", "RTARead1Complete.txt"):
        assert (rf.path / marker).is_file()
    assert (rf.path / "Data/Intensities/BaseCalls/L001/C26.1/s_1_1102.bcl").is_file()
    assert rf.verify() == []


def test_manifest_lists_every_file_with_its_checksum(tmp_path, tiles):
    write_run(tmp_path, tiles)
    rf = RunFolder(tmp_path / INFO.run_id)
    m = rf.manifest()
    assert m.complete and m.complete_cycles == tuple(range(1, 27))
    listed = {e.path: e for e in m.files()}
    on_disk = set(tree_digest(rf.path))
    markers = {"RTAComplete.txt", "CopyComplete.txt", "RTARead1Complete.txt", "Manifest/run.json"}
    assert set(listed) == on_disk - markers
    for e in listed.values():
        assert checksum_file(rf.path / e.path) == (e.size, e.crc32c)
    # each cycle lists both tiles' bcl and intensities
    assert len(m.cycles[7]) == 4


def test_verify_detects_a_flipped_byte_and_a_missing_file(tmp_path, tiles):
    write_run(tmp_path, tiles)
    rf = RunFolder(tmp_path / INFO.run_id)
    bcl = rf.path / "Data/Intensities/BaseCalls/L001/C9.1/s_1_1101.bcl"
    data = bytearray(bcl.read_bytes())
    data[100] ^= 0x04
    bcl.write_bytes(bytes(data))
    (rf.path / "Data/Intensities/L001/s_1_1102.locs").unlink()
    (rf.path / "stray.txt").write_text("x")
    problems = rf.verify()
    assert any("C9.1/s_1_1101.bcl: CRC32C" in p for p in problems), problems
    assert any("s_1_1102.locs: listed in the manifest but missing" in p for p in problems)
    assert any("stray.txt: present but not listed" in p for p in problems)
    assert len(problems) == 3


def test_verify_accepts_the_raw_audit_frames_outside_the_manifest(tmp_path, tiles):
    # Raw/ is written during acquisition (output.keep_raw_every) and never listed
    write_run(tmp_path, tiles)
    rf = RunFolder(tmp_path / INFO.run_id)
    (rf.path / "Raw").mkdir()
    np.save(rf.path / "Raw/s_1101_c1_ch0.npy", np.zeros((4, 4), np.uint16))
    assert rf.verify() == []
    (rf.path / "RawX.txt").write_text("x")  # only the Raw/ folder is exempt
    assert rf.verify() == ["RawX.txt: present but not listed in the manifest"]


def test_verify_reports_a_corrupt_manifest(tmp_path, tiles):
    write_run(tmp_path, tiles)
    rf = RunFolder(tmp_path / INFO.run_id)
    (rf.path / "Manifest/cycle_0003.json").write_text("{not json")
    problems = rf.verify()
    assert len(problems) == 1 and "cycle_0003.json" in problems[0]


def test_same_run_twice_gives_identical_bytes(tmp_path, tiles):
    write_run(tmp_path / "a", tiles)
    write_run(tmp_path / "b", tiles)
    a, b = tree_digest(tmp_path / "a" / INFO.run_id), tree_digest(tmp_path / "b" / INFO.run_id)
    assert a == b and len(a) > 100


def test_writing_a_cycle_twice_gives_identical_bytes(tmp_path, tiles):
    w = RunFolderWriter(tmp_path, INFO)
    write_cycle(w, tiles, 4)
    before = tree_digest(w.path)
    write_cycle(w, tiles, 4)
    assert tree_digest(w.path) == before
    # a different content really changes the file (the comparison above can fail)
    w.write_bcl(1101, 4, tiles[1101].bases[:, 5], tiles[1101].quals[:, 5])
    after = tree_digest(w.path)
    assert (
        after["Data/Intensities/BaseCalls/L001/C4.1/s_1_1101.bcl"]
        != before["Data/Intensities/BaseCalls/L001/C4.1/s_1_1101.bcl"]
    )


def test_complete_cycle_names_the_missing_tile(tmp_path, tiles):
    w = RunFolderWriter(tmp_path, INFO)
    d = tiles[1101]
    w.write_bcl(1101, 1, d.bases[:, 0], d.quals[:, 0])
    w.write_intensities(1101, 1, d.intensities[0])
    with pytest.raises(RunFolderError, match=r"C1\.1/s_1_1102\.bcl"):
        w.complete_cycle(1)
    assert not (w.path / "Manifest/cycle_0001.json").exists()
    with pytest.raises(RunFolderError, match="cycle.s. 1-26 are not complete"):
        w.complete()


def test_complete_cycle_is_listed_and_immutable(tmp_path, tiles):
    w = RunFolderWriter(tmp_path, INFO)
    write_cycle(w, tiles, 2)
    w.complete_cycle(2)
    doc = json.loads((w.path / "Manifest/cycle_0002.json").read_bytes())
    assert doc["cycle"] == 2 and len(doc["files"]) == 4
    assert RunFolder(w.path).manifest().complete_cycles == (2,)
    before = tree_digest(w.path)
    write_cycle(w, tiles, 2)  # same content again: a no-op
    w.complete_cycle(2)
    assert tree_digest(w.path) == before
    d = tiles[1101]
    with pytest.raises(RunFolderError, match="listed complete in the manifest"):
        w.write_bcl(1101, 2, d.bases[:, 0], d.quals[:, 0])
    assert tree_digest(w.path) == before


def test_nothing_is_written_after_complete(tmp_path, tiles):
    w = write_run(tmp_path, tiles, reference=None)
    before = tree_digest(w.path)
    with pytest.raises(RunFolderError, match="nothing is written after complete"):
        w.write_reference(b">other\nA\n")
    with pytest.raises(RunFolderError, match="a complete file never changes"):
        w.write_filter(1101, ~tiles[1101].passed)
    write_cycle(w, tiles, 26)  # identical rewrites are no-ops
    w.complete()
    RunFolderWriter(tmp_path, INFO).complete()  # reopening a complete run changes nothing
    assert tree_digest(w.path) == before


def test_reopen_resumes_and_a_different_run_is_refused(tmp_path, tiles):
    w = RunFolderWriter(tmp_path, INFO)
    for tile, d in tiles.items():
        w.write_locs(tile, d.xy)
        w.write_filter(tile, d.passed)
    for c in range(1, 11):
        write_cycle(w, tiles, c)
        w.complete_cycle(c)
    del w
    w = RunFolderWriter(tmp_path, INFO)  # resume (as after a crash)
    assert w.complete_cycles == tuple(range(1, 11))
    for c in range(10, 27):  # cycle 10 re-delivered: identical, accepted
        write_cycle(w, tiles, c)
        w.complete_cycle(c)
    w.write_reference(b">chr1\nACGTACGTAC\n")
    w.complete()
    assert tree_digest(w.path) == tree_digest(write_run(tmp_path / "ref", tiles).path)
    other = RunInfo(
        run_id=INFO.run_id,
        instrument="SIM01",
        flowcell="FC0001",
        lane=1,
        tiles=(1101,),
        n_cycles=26,
        reads=((26, False),),
    )
    with pytest.raises(
        RunFolderError, match=r"different run \(tiles: \(1101, 1102\) on disk vs \(1101,\)"
    ):
        RunFolderWriter(tmp_path, other)


def test_bad_arguments_are_named(tmp_path, tiles):
    w = RunFolderWriter(tmp_path, INFO)
    d = tiles[1101]
    with pytest.raises(
        ValueError, match=r"tile=1201: not a tile of this run; allowed \[1101, 1102\]"
    ):
        w.write_locs(1201, d.xy)
    with pytest.raises(ValueError, match=r"cycle=27: allowed 1..26"):
        w.write_bcl(1101, 27, d.bases[:, 0], d.quals[:, 0])
    w.write_locs(1101, d.xy)
    with pytest.raises(ValueError, match="has 299 clusters, but the tile's other files have 300"):
        w.write_bcl(1101, 1, d.bases[1:, 0], d.quals[1:, 0])
    # the count is learnt from disk after a reopen, too
    w2 = RunFolderWriter(tmp_path, INFO)
    with pytest.raises(ValueError, match="have 300"):
        w2.write_intensities(1101, 1, d.intensities[0][:10])
    with pytest.raises(ValueError, match="must start with '>'"):
        w.write_reference(b"ACGT")


def test_reference_from_a_path_and_without_intensities(tmp_path, tiles):
    fasta = tmp_path / "ref.fa"
    fasta.write_bytes(b">chr1\n" + b"ACGT" * 5000 + b"\n")
    w = RunFolderWriter(tmp_path / "out", INFO, intensities=False)
    for tile, d in tiles.items():
        w.write_locs(tile, d.xy)
        w.write_filter(tile, d.passed)
    for c in range(1, 27):
        for tile, d in tiles.items():
            w.write_bcl(tile, c, d.bases[:, c - 1], d.quals[:, c - 1])
        w.complete_cycle(c)
    w.write_reference(fasta)
    w.complete()
    rf = RunFolder(w.path)
    assert rf.read_reference() == fasta.read_bytes()
    assert (
        hashlib.sha256(rf.read_reference()).digest() == hashlib.sha256(fasta.read_bytes()).digest()
    )
    assert not (w.path / "Data/Intensities/intensities.json").exists()
    assert rf.verify() == []


def test_markers_lost_in_a_crash_are_restored_on_resume(tmp_path, tiles):
    w = write_run(tmp_path, tiles)
    before = tree_digest(w.path)
    # as if killed after the run manifest was written, before the markers were
    for marker in ("RTAComplete.txt", "CopyComplete.txt", "RTARead1Complete.txt"):
        (w.path / marker).unlink()
    rf = RunFolder(w.path)
    assert not rf.is_complete
    assert any("CopyComplete.txt: missing" in p for p in rf.verify())
    w2 = RunFolderWriter(tmp_path, INFO)
    w2.complete_cycle(26)
    assert (w.path / "RTARead1Complete.txt").is_file()
    w2.complete()
    assert tree_digest(w.path) == before and rf.is_complete and rf.verify() == []
