"""``appliance simulate``: the files it writes, their contents, and determinism."""

from __future__ import annotations

import argparse
import hashlib
import json

import numpy as np
import pytest

from appliance.commands import simulate
from kernels.synthetic import InstrumentParams, SyntheticInstrument


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    simulate.configure(parser)
    return simulate.run(parser.parse_args(argv))


def _digest(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_simulate_writes_frames_truth_and_fasta(tmp_path):
    out = tmp_path / "run"
    argv = [str(out), "--tiles", "1101,1102", "--cycles", "3", "--tile-size", "64", "--seed", "5", "--intensities"]
    assert _run(argv) == 0
    meta = json.loads((out / "params.json").read_text())
    assert meta["tiles"] == [1101, 1102] and meta["params"]["n_cycles"] == 3
    inst = SyntheticInstrument(InstrumentParams(tile_shape=(64, 64), n_cycles=3), seed=5)
    for tile in (1101, 1102):
        truth = np.load(out / "truth" / f"{tile}.npz")
        np.testing.assert_array_equal(truth["sequences"], inst.truth(tile).sequences)
        np.testing.assert_array_equal(truth["positions"], inst.truth(tile).positions)
        for cycle in (1, 3):
            for k in range(4):
                frame = np.load(out / "frames" / str(tile) / f"C{cycle:03d}" / f"{k}.npy")
                np.testing.assert_array_equal(frame, inst.render(tile, cycle, k))
        ints = np.load(out / "intensities" / f"{tile}.npy")
        assert ints.shape == (inst.truth(tile).n_clusters, 3, 4) and ints.dtype == np.float32
    assert (out / "reference.fa").read_text().startswith(">")
    assert not list(out.rglob("*.tmp"))


def test_simulate_is_deterministic_and_raw_frames_match(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    argv = ["--cycles", "2", "--tile-size", "32", "--format", "raw", "--layout", "patterned"]
    assert _run([str(a), *argv]) == 0
    assert _run([str(b), *argv]) == 0
    assert _digest(a) == _digest(b)
    raw = np.fromfile(a / "frames" / "1101" / "C002" / "3.raw", dtype="<u2").reshape(32, 32)
    inst = SyntheticInstrument(InstrumentParams(tile_shape=(32, 32), n_cycles=2, layout="patterned"), seed=0)
    np.testing.assert_array_equal(raw, inst.render(1101, 2, 3))


def test_simulate_refuses_a_non_empty_folder_and_bad_params(tmp_path, capsys):
    (tmp_path / "x").write_text("keep me")
    assert _run([str(tmp_path), "--cycles", "1", "--tile-size", "32", "--no-frames"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "x").read_text() == "keep me"
    assert _run([str(tmp_path / "new"), "--tile-size", "4"]) == 2
    assert "tile_shape" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _run([str(tmp_path / "new"), "--tiles", "a,b"])
