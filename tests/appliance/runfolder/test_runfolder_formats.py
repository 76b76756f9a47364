"""Every run folder format round-trips (encode -> decode), and bad bytes or arrays are named."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from runfolder_helpers import INFO

from appliance.runfolder import (
    NO_CALL,
    RunFolderError,
    RunInfo,
    decode_bcl,
    decode_filter,
    decode_intensities,
    decode_locs,
    decode_runinfo,
    encode_bcl,
    encode_filter,
    encode_intensities,
    encode_locs,
    encode_runinfo,
)
from appliance.runfolder.intensities import decode_index, encode_index

rng = np.random.default_rng(1)


def test_bcl_round_trip_with_no_calls_and_clamped_qualities():
    n = 1000
    bases = rng.integers(0, 5, n, dtype=np.uint8)
    quals = rng.integers(0, 80, n, dtype=np.uint8)
    data = encode_bcl(bases, quals)
    assert len(data) == 4 + n and struct.unpack_from("<I", data)[0] == n
    raw = np.frombuffer(data, np.uint8, offset=4)
    assert (raw[bases == NO_CALL] == 0).all() and (raw[bases != NO_CALL] != 0).all()
    b, q = decode_bcl(data)
    assert (b == bases).all()
    called = bases != NO_CALL
    assert (q[called] == np.clip(quals, 2, 63)[called]).all()
    assert (q[~called] == 0).all()


def test_bcl_byte_layout_matches_the_spec():
    # A with Q30 -> (30 << 2) | 0; T with Q2 -> (2 << 2) | 3; no-call -> 0
    data = encode_bcl(np.array([0, 3, 4], np.uint8), np.array([30, 0, 40], np.uint8))
    assert data == struct.pack("<I", 3) + bytes([120, 11, 0])


def test_bcl_rejects_bad_input():
    with pytest.raises(ValueError, match="bases: value 5"):
        encode_bcl(np.array([5], np.uint8), np.array([30], np.uint8))
    with pytest.raises(ValueError, match="quals: has 2 clusters, expected 1"):
        encode_bcl(np.array([1], np.uint8), np.array([30, 30], np.uint8))
    with pytest.raises(ValueError, match="integer array"):
        encode_bcl(np.array([1.0]), np.array([30], np.uint8))
    with pytest.raises(RunFolderError, match="header says 10 clusters"):
        decode_bcl(struct.pack("<I", 10) + b"\x08" * 9)


def test_filter_round_trip_and_header():
    passed = rng.random(777) > 0.3
    data = encode_filter(passed)
    assert data[:12] == struct.pack("<III", 0, 3, 777) and len(data) == 12 + 777
    assert (decode_filter(data) == passed).all()
    with pytest.raises(RunFolderError, match="not a version-3 filter"):
        decode_filter(struct.pack("<III", 0, 2, 0))
    with pytest.raises(ValueError, match="bool array"):
        encode_filter(np.array([0, 2]))


def test_locs_round_trip_and_header():
    xy = (rng.random((555, 2)) * 2048).astype(np.float32)
    data = encode_locs(xy)
    assert data[:12] == struct.pack("<ifI", 1, 1.0, 555) and len(data) == 12 + 8 * 555
    assert (decode_locs(data) == xy).all()
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        encode_locs(np.zeros((3, 3), np.float32))
    with pytest.raises(RunFolderError, match="header says 2 clusters"):
        decode_locs(struct.pack("<ifI", 1, 1.0, 2) + b"\0" * 8)


def test_intensities_round_trip_is_a_plain_npy(tmp_path):
    a = rng.random((321, 4), dtype=np.float32)
    head, arr = encode_intensities(a, 4)
    data = head + arr.tobytes()
    assert len(head) % 64 == 0  # aligned, so np.load can memory-map it
    assert (decode_intensities(data) == a).all()
    (tmp_path / "x.npy").write_bytes(data)
    assert (np.load(tmp_path / "x.npy", mmap_mode="r") == a).all()
    with pytest.raises(ValueError, match=r"expected shape \(N, 4\)"):
        encode_intensities(a[:, :3], 4)


def test_runinfo_xml_round_trip_and_is_deterministic():
    assert decode_runinfo(encode_runinfo(INFO)) == INFO
    assert encode_runinfo(INFO) == encode_runinfo(INFO)
    paired = RunInfo(
        run_id="R_2",
        instrument="I",
        flowcell="F",
        lane=3,
        tiles=(2101, 1101, 1213),
        n_cycles=310,
        reads=((151, False), (8, True), (151, False)),
        number=7,
        date="261125",
    )
    xml = encode_runinfo(paired)
    assert decode_runinfo(xml) == paired
    assert b'IsIndexedRead="Y"' in xml and b"<Tile>3_1213</Tile>" in xml
    assert b'SurfaceCount="2" SwathCount="2" TileCount="13"' in xml
    assert paired.read_structure == "151T8B151T"
    with pytest.raises(RunFolderError, match="RunInfo.xml"):
        decode_runinfo(b"<RunInfo><Nope/></RunInfo>")


def test_intensities_index_round_trip():
    idx = decode_index(encode_index(INFO, ("A", "C", "G", "T")))
    assert idx["path"].format(tile=1101, cycle=3) == "Data/Intensities/L001/C3.1/s_1_1101.npy"
    assert idx["channels"] == ["A", "C", "G", "T"] and idx["tiles"] == [1101, 1102]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(run_id="a b"), "run_id"),
        (dict(tiles=()), "tiles"),
        (dict(tiles=(1101, 1101)), "unique"),
        (dict(lane=0), "lane"),
        (dict(n_cycles=25), "add up to 26"),
        (dict(reads=()), "at least one read"),
        (dict(date="2026-11-25"), "YYMMDD"),
    ],
)
def test_runinfo_validation_names_the_field(kwargs, match):
    base = dict(
        run_id="R",
        instrument="I",
        flowcell="F",
        lane=1,
        tiles=(1101,),
        n_cycles=26,
        reads=((26, False),),
    )
    with pytest.raises(ValueError, match=match):
        RunInfo(**{**base, **kwargs})
