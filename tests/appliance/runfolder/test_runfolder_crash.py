"""Crash safety: a writer process SIGKILLed mid-write leaves no partial file under a final
name, and the next open removes its temp file and carries on to a verified run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
from runfolder_helpers import INFO, make_tiles, temp_files, tree_digest, write_cycle

from appliance.runfolder import RunFolder, RunFolderWriter, decode_bcl

# The child holds itself inside os.write (after the first slice of a 64 MiB intensities file
# reached the temp file) and tells the parent, which SIGKILLs it there: a kill mid-write,
# deterministically. Only the OS call is wrapped; the project's code runs unmodified.
_HELD_CHILD = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from appliance.runfolder import RunFolderWriter, RunInfo
    info = RunInfo(run_id=%(run_id)r, instrument="SIM01", flowcell="FC0001", lane=1,
                   tiles=(1101, 1102), n_cycles=26, reads=((26, False),))
    w = RunFolderWriter(sys.argv[1], info)
    big = np.ones((4 << 20, 4), np.float32)           # 64 MiB, written in 8 MiB slices
    real_write = os.write
    def held_write(fd, data):
        n = real_write(fd, data)
        print("mid-write", flush=True)
        time.sleep(60)
        return n
    os.write = held_write
    w.write_intensities(1101, 3, big)
    print("finished", flush=True)
""")

# Writes whole cycles in a loop with no hook at all; the parent kills it at a random moment.
_LOOP_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from appliance.runfolder import RunFolderWriter, RunInfo
    info = RunInfo(run_id=%(run_id)r, instrument="SIM01", flowcell="FC0001", lane=1,
                   tiles=(1101, 1102), n_cycles=26, reads=((26, False),))
    w = RunFolderWriter(sys.argv[1], info, intensities=True)
    n = 200_000
    rng = np.random.default_rng(int(sys.argv[2]))
    print("ready", flush=True)
    while True:
        for c in range(1, 27):
            for t in info.tiles:
                w.write_bcl(t, c, rng.integers(0, 5, n, dtype=np.uint8),
                            rng.integers(2, 40, n, dtype=np.uint8))
                w.write_intensities(t, c, rng.random((n, 4), dtype=np.float32))
""")


def _spawn(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script % {"run_id": INFO.run_id}, *args],
        stdout=subprocess.PIPE,
        text=True,
    )


def _kill(child: subprocess.Popen) -> None:
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL


def test_sigkill_mid_write_leaves_only_a_temp_file_which_reopen_removes(tmp_path):
    tiles = make_tiles(n=300, seed=3)
    w = RunFolderWriter(tmp_path, INFO)
    d = tiles[1102]  # files already there (tile 1101 is the child's, with its own cluster count)
    w.write_locs(1102, d.xy)
    w.write_bcl(1102, 1, d.bases[:, 0], d.quals[:, 0])
    before = tree_digest(w.path)
    child = _spawn(_HELD_CHILD, str(tmp_path))
    try:
        assert child.stdout.readline().strip() == "mid-write"
        final = w.path / "Data/Intensities/L001/C3.1/s_1_1101.npy"
        temps = temp_files(w.path)
        assert len(temps) == 1 and temps[0].startswith(
            "Data/Intensities/L001/C3.1/.s_1_1101.npy.tmp."
        )
        assert 0 < (w.path / temps[0]).stat().st_size < 64 << 20
    finally:
        _kill(child)
    assert not final.exists()
    assert temp_files(w.path) == temps
    assert any("leftover temp file" in p for p in RunFolder(w.path).verify())
    # the next open removes it, and what was complete before is untouched
    w2 = RunFolderWriter(tmp_path, INFO)
    assert temp_files(w.path) == []
    after = tree_digest(w.path)
    assert {k: after[k] for k in before} == before
    assert RunFolder(w.path).verify() == []
    write_cycle(w2, tiles, 3)
    w2.complete_cycle(3)
    assert (RunFolder(w.path).read_intensities(1101, 3) == tiles[1101].intensities[2]).all()


def test_sigkill_at_a_random_moment_never_leaves_a_partial_file(tmp_path):
    child = _spawn(_LOOP_CHILD, str(tmp_path), "7")
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.4 + np.random.default_rng().random() * 0.4)
    finally:
        _kill(child)
    run = tmp_path / INFO.run_id
    finals = [p for p in run.rglob("s_1_*") if ".tmp." not in p.name]
    assert finals, "the child wrote nothing before it was killed; the test proves nothing"
    for p in finals:  # every file under a final name is whole
        if p.suffix == ".bcl":
            assert len(decode_bcl(p.read_bytes())[0]) == 200_000
        else:
            assert np.load(p).shape == (200_000, 4)
    RunFolderWriter(tmp_path, INFO)
    assert temp_files(run) == []
