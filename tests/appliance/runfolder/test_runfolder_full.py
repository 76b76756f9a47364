"""A full disk: a small tmpfs mounted by the test (as root) fills up; the writer raises
RunFolderFull naming the path, the bytes needed and free, and the fix; nothing partial is
left; after the filesystem grows, the same write succeeds."""

from __future__ import annotations

import errno
import os
import subprocess

import numpy as np
import pytest
from runfolder_helpers import INFO, temp_files

from appliance.runfolder import (
    RunFolder,
    RunFolderError,
    RunFolderFull,
    RunFolderWriter,
)

pytestmark = pytest.mark.rt


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs at tmp_path/small, unmounted afterwards whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"mount of a tmpfs is not permitted here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_full_disk_raises_a_clear_error_and_leaves_nothing_partial(small_fs):
    n = 10_000  # 160 kB of intensities per tile and cycle
    rng = np.random.default_rng(5)
    w = RunFolderWriter(small_fs, INFO)
    written = []
    with pytest.raises(RunFolderFull) as ei:
        for c in range(1, INFO.n_cycles + 1):
            for tile in INFO.tiles:
                a = rng.random((n, 4), dtype=np.float32)
                w.write_intensities(tile, c, a)
                written.append((tile, c, a))
    e = ei.value
    assert isinstance(e, OSError) and isinstance(e, RunFolderError) and e.errno == errno.ENOSPC
    assert 4 <= len(written) < 8  # it really filled up, after a few files
    tile, c = INFO.tiles[len(written) % 2], len(written) // 2 + 1
    target = w.path / f"Data/Intensities/L001/C{c}.1/s_1_{tile}.npy"
    msg = str(e)
    assert str(target) in msg and "disk full" in msg
    assert f"{n * 16 + 128} bytes needed" in msg
    assert f"{e.free} bytes free" in msg and e.free < n * 16 + 128
    assert f"mounted at {small_fs}" in msg and "Fix:" in msg
    assert not target.exists() and temp_files(w.path) == []
    for t, cy, a in written:  # what was written before is whole
        assert (RunFolder(w.path).read_intensities(t, cy) == a).all()
    # the run pauses; once there is room the same write simply succeeds
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_fs)], check=True)
    a = rng.random((n, 4), dtype=np.float32)
    w.write_intensities(tile, c, a)
    assert (RunFolder(w.path).read_intensities(tile, c) == a).all()
    assert temp_files(w.path) == []


def test_full_disk_on_small_files_too(small_fs):
    filler = small_fs / "filler"
    w = RunFolderWriter(small_fs, INFO)
    # fill the filesystem to the last block, then a 304-byte .bcl cannot be written
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    bases = np.zeros(300, np.uint8)
    with pytest.raises(RunFolderFull, match=r"s_1_1101\.bcl \(304 bytes needed, 0 bytes free"):
        w.write_bcl(1101, 1, bases, bases + 30)
    assert temp_files(w.path) == []
    assert not (w.path / "Data/Intensities/BaseCalls/L001/C1.1/s_1_1101.bcl").exists()
