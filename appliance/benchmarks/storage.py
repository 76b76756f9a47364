"""``appliance bench storage``: the mover (copy + verify) against ``cp``, and CRC32C vs the disk."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HELP = "storage mover throughput (copy + verify) vs cp, and the checksum rate vs the disk's read bandwidth"
DESCRIPTION = """\
Write a synthetic run (random bytes, --files files totalling --size MB) in a scratch folder on
the disk under test (--dir), then, in the same run and on the same data:

  cp          `cp -r` of the run to a second folder (what an operator would do by hand), and
              `cp -r` followed by `sync` (the bytes durable, as the mover leaves them)
  mover       the storage mover's verified copy of every file: chunked copy with CRC32C,
              fsync, page cache dropped, re-read at the destination and CRC32C checked,
              rename, catalog record (bandwidth limit off; --streams files at once, as
              the tierer does with the policy's mover.streams)
  read        plain sequential reads of the run (the disk's read bandwidth)
  checksum    CRC32C of the run read from the disk (appliance.runfolder checksum_file)

Before each timed pass the page cache is dropped (echo 3 > /proc/sys/vm/drop_caches, root
only), so reads come from the disk; where that is not permitted the figures are marked
"cached" and say so. Each figure is the best of --repeat passes. The target is mover
throughput at least 0.7x cp's. Prints a table and writes JSON (--json).

examples:
  appliance bench storage                           # or: scripts/bench storage
  appliance bench storage --dir /data/scratch --size 4096
  appliance bench storage --quick                   # a smoke run (seconds)
"""


def _drop_caches() -> bool:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def _make_run(root: Path, n_files: int, total: int) -> list[Path]:
    import numpy as np

    rng = np.random.default_rng(1)
    size = max(1, total // n_files)
    paths = []
    for i in range(n_files):
        p = root / "BENCH" / "Data" / f"C{i // 16 + 1}.1" / f"s_1_{1101 + i % 16}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        paths.append(p)
    os.sync()
    return paths


def _best(fn, repeat: int, before=None) -> float:
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def run_benchmark(work: Path, total_mb: int, n_files: int, repeat: int, streams: int = 4, progress=lambda m: None) -> dict[str, Any]:
    from appliance.benchmarks._machine import machine_description
    from appliance.runfolder import checksum_file
    from appliance.storage import Store
    from appliance.storage.catalog import Catalog
    from appliance.storage.mover import Mover

    work.mkdir(parents=True, exist_ok=True)
    src = work / "hot"
    total = total_mb * 1_000_000
    progress(f"writing {total_mb} MB in {n_files} files under {src}")
    paths = _make_run(src, n_files, total)
    nbytes = sum(p.stat().st_size for p in paths)
    dropped = _drop_caches()
    reset = _drop_caches if dropped else None

    def cp_dst() -> Path:
        d = work / "cp"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        return d

    def cp():
        subprocess.run(["cp", "-r", str(src / "BENCH"), str(cp_dst())], check=True)

    def cp_sync():
        cp()
        os.sync()

    progress("cp")
    t_cp = _best(cp, repeat, reset)
    progress("cp + sync")
    t_cp_sync = _best(cp_sync, repeat, reset)
    shutil.rmtree(work / "cp", ignore_errors=True)

    catalog = Catalog(work / "catalog.sqlite")
    catalog.upsert_run("BENCH", complete=True, analysed=False, completed_at=time.time())
    rows = []
    for p in paths:
        size, crc = checksum_file(p)
        rel = p.relative_to(src).as_posix()
        rows.append(catalog.file_by_id(catalog.add_file("BENCH", rel, "raw", size, crc, p.stat().st_mtime, "scan", rel)))

    def mover():
        dst = work / "warm"
        shutil.rmtree(dst, ignore_errors=True)
        with catalog.tx() as db:
            db.execute("DELETE FROM copies WHERE tier='warm'")
        m = Mover(catalog, {"hot": Store(str(src)), "warm": Store(str(dst))}, bandwidth_mb_s=0)
        failed = [exc for _, exc in m.copy_many([(f, "hot", "warm") for f in rows], streams) if exc is not None]
        if failed:
            raise RuntimeError(f"the mover failed during the benchmark: {failed[0]}")

    progress("mover (copy + verify)")
    t_mover = _best(mover, repeat, reset)
    catalog.close()
    shutil.rmtree(work / "warm", ignore_errors=True)

    def read():
        buf = bytearray(8 << 20)
        for p in paths:
            with open(p, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass

    def checksum():
        for p in paths:
            checksum_file(p)

    progress("read")
    t_read = _best(read, repeat, reset)
    progress("checksum")
    t_crc = _best(checksum, repeat, reset)
    read()  # warm the cache: the CRC32C rate on its own, without the disk
    t_crc_cached = _best(checksum, repeat)
    mb = nbytes / 1e6
    return {
        "machine": machine_description(),
        "dir": str(work),
        "bytes": nbytes,
        "files": n_files,
        "repeat": repeat,
        "streams": streams,
        "page_cache_dropped": dropped,
        "cp_mb_s": mb / t_cp,
        "cp_sync_mb_s": mb / t_cp_sync,
        "mover_mb_s": mb / t_mover,
        "mover_vs_cp": t_cp / t_mover,
        "mover_vs_cp_sync": t_cp_sync / t_mover,
        "read_mb_s": mb / t_read,
        "checksum_mb_s": mb / t_crc,
        "checksum_vs_read": t_read / t_crc,
        "checksum_cached_mb_s": mb / t_crc_cached,
    }


def format_table(r: dict) -> str:
    m = r["machine"]
    src = "from disk (page cache dropped)" if r["page_cache_dropped"] else "CACHED (no permission to drop the page cache: figures are from memory)"
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}",
        f"data: {r['bytes'] / 1e6:.0f} MB in {r['files']} files under {r['dir']}, best of {r['repeat']}; reads {src}",
        "",
        f"{'':<24} {'MB/s':>9} {'ratio':>8}",
        f"{'cp -r':<24} {r['cp_mb_s']:>9.0f}",
        f"{'cp -r + sync':<24} {r['cp_sync_mb_s']:>9.0f}",
        f"{'mover (' + str(r['streams']) + ' streams)':<24} {r['mover_mb_s']:>9.0f} {r['mover_vs_cp']:>7.2f}x cp   {r['mover_vs_cp_sync']:.2f}x cp+sync (target >= 0.7x)",
        f"{'disk read':<24} {r['read_mb_s']:>9.0f}",
        f"{'CRC32C from disk':<24} {r['checksum_mb_s']:>9.0f} {r['checksum_vs_read']:>7.2f}x disk read",
        f"{'CRC32C cached':<24} {r['checksum_cached_mb_s']:>9.0f}",
    ]
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=Path("out/bench-storage"), help="scratch folder on the disk under test (default out/bench-storage; removed afterwards)")
    parser.add_argument("--size", type=int, default=1024, metavar="MB", help="total data in MB (default 1024)")
    parser.add_argument("--files", type=int, default=64, help="number of files (default 64)")
    parser.add_argument("--repeat", type=int, default=2, help="passes per figure; the best is kept (default 2)")
    parser.add_argument("--streams", type=int, default=4, help="files the mover copies at once (default 4, the default policy's mover.streams)")
    parser.add_argument("--quick", action="store_true", help="16 MB in 8 files, one pass: a smoke run")
    parser.add_argument("--json", type=Path, default=Path("out/bench-storage.json"), help="where to write the JSON (default out/bench-storage.json)")


def run(args: argparse.Namespace) -> int:
    size, files, repeat = (16, 8, 1) if args.quick else (args.size, args.files, args.repeat)
    if size < 1 or files < 1 or repeat < 1:
        print("appliance bench storage: --size, --files and --repeat must be at least 1", file=sys.stderr)
        return 2
    work = args.dir / f"run-{os.getpid()}"
    try:
        result = run_benchmark(work, size, files, repeat, args.streams, progress=lambda m: print(f"... {m}", file=sys.stderr, flush=True))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(format_table(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nJSON written to {args.json}")
    return 0
