"""A ring on real hugepages (needs root: reserves 2 MiB pages and mounts hugetlbfs; restores both)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import rt

NR = Path("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")


@pytest.fixture
def hugetlbfs_2m(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to reserve hugepages and mount hugetlbfs")
    if not NR.exists():
        pytest.skip("kernel has no 2 MiB hugepage pool")
    before = NR.read_text()
    mount = tmp_path / "huge2m"
    mount.mkdir()
    try:
        NR.write_text(str(int(before) + 4))
    except OSError as exc:
        pytest.skip(f"cannot reserve hugepages here: {exc}")
    try:
        if int(NR.read_text()) < int(before) + 4:
            pytest.skip("kernel could not find 4 free 2 MiB pages (memory fragmented)")
        res = subprocess.run(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "none", str(mount)], capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount hugetlbfs: {res.stderr.strip()}")
        try:
            yield mount
        finally:
            subprocess.run(["umount", str(mount)], check=True)
    finally:
        NR.write_text(before)
        assert NR.read_text() == before


@pytest.mark.rt
def test_ring_on_2m_hugepages(hugetlbfs_2m, ring_name):
    with rt.Ring.create(ring_name, payload_bytes=1 << 20, n_slots=4, hugepages="2M") as ring:
        assert ring.statistics().page_size == 2 << 20
        assert (hugetlbfs_2m / ring_name).exists()
        assert not Path("/dev/shm", ring_name).exists()
        with ring.producer() as p, ring.consumer() as c:
            p.reserve().write(np.arange(1000, dtype=np.uint32), with_checksum=True)
            p.commit()
            slot = c.acquire(timeout=1)
            assert slot.verify() and slot.array()[-1] == 999
            c.release()
        assert ring_name in [n for n, _ in rt.list_rings()]
    assert not (hugetlbfs_2m / ring_name).exists()


@pytest.mark.rt
def test_auto_falls_back_when_pool_too_small(hugetlbfs_2m, ring_name, caplog):
    with rt.Ring.create(ring_name, payload_bytes=64 << 20, n_slots=2, hugepages="auto") as ring:
        assert ring.statistics().page_size == 4096
    assert "falling back to 4K" in caplog.text
