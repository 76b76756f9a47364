"""Storage benchmarks under pytest-benchmark and a smoke run of ``appliance bench storage``.

With the suite's default ``--benchmark-disable`` each benchmark body runs once, as a test;
``appliance bench storage`` is the side-by-side comparison with cp and the disk.
"""

from __future__ import annotations

import argparse
import json
import os

import pytest

from appliance.runfolder import checksum_file
from appliance.storage import Store
from appliance.storage.catalog import Catalog
from appliance.storage.mover import Mover


@pytest.fixture
def one_file(tmp_path):
    src = tmp_path / "hot"
    (src / "R").mkdir(parents=True)
    p = src / "R" / "data.bin"
    p.write_bytes(os.urandom(8 << 20))
    size, crc = checksum_file(p)
    cat = Catalog(tmp_path / "c.sqlite")
    cat.upsert_run("R", complete=True, analysed=False, completed_at=1.0)
    f = cat.file_by_id(cat.add_file("R", "R/data.bin", "raw", size, crc, 1.0, "scan", "R/data.bin"))
    yield cat, f, src, tmp_path / "warm"
    cat.close()


@pytest.mark.benchmark(group="storage: verified copy of 8 MiB")
def test_bench_verified_copy(benchmark, one_file):
    cat, f, src, warm = one_file
    mover = Mover(cat, {"hot": Store(str(src)), "warm": Store(str(warm))})
    benchmark(mover.copy, f, "hot", "warm")
    assert cat.copies(f.id)["warm"].state == "verified"
    assert (warm / "R" / "data.bin").read_bytes() == (src / "R" / "data.bin").read_bytes()


@pytest.mark.benchmark(group="storage: CRC32C of 8 MiB")
def test_bench_checksum(benchmark, one_file):
    cat, f, src, _ = one_file
    assert benchmark(checksum_file, src / "R" / "data.bin") == (f.size, f.crc32c)


def test_bench_storage_suite_smoke(tmp_path):
    """``appliance bench storage --quick``: every figure measured, ratios, table, JSON."""
    from appliance.benchmarks import storage as suite

    parser = argparse.ArgumentParser()
    suite.configure(parser)
    out = tmp_path / "s.json"
    assert suite.run(parser.parse_args(["--quick", "--dir", str(tmp_path / "scratch"), "--json", str(out)])) == 0
    r = json.loads(out.read_text())
    for key in ("cp_mb_s", "cp_sync_mb_s", "mover_mb_s", "read_mb_s", "checksum_mb_s", "checksum_cached_mb_s", "mover_vs_cp", "mover_vs_cp_sync", "checksum_vs_read"):
        assert r[key] > 0, key
    assert r["bytes"] == 16_000_000 and r["files"] == 8 and isinstance(r["page_cache_dropped"], bool)
    assert "x cp" in suite.format_table(r)
    assert not any((tmp_path / "scratch").iterdir())  # the scratch data is removed
    assert suite.run(parser.parse_args(["--size", "0", "--json", str(out)])) == 2
