"""``appliance bench transfer``: the verified handoff to S3 against boto3/s3transfer (the engine
of ``aws s3 cp``), ``aws s3 cp --recursive`` and ``rclone copy --checksum`` where installed."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

HELP = "verified transfer to S3 (multipart, re-read CRC32C) vs s3transfer / aws s3 cp / rclone on the same data"
DESCRIPTION = """\
Write a synthetic run folder (random bytes, --files files totalling --size MB), then upload it to
an S3 endpoint, in the same run and on the same data, with verification on for every tool:

  appliance   appliance.transfer.push: multipart (--part-mb), each part's MD5 checked against
              the store's ETag, every object re-read and its CRC32C checked, journal records
  s3transfer  boto3's upload_file per file (the engine of `aws s3 cp`: multipart, threads),
              then every object downloaded and CRC32C-checked (what verification costs it)
  aws         `aws s3 cp --recursive` then `aws s3 cp --recursive` back and compared (when the
              `aws` CLI is on PATH; pip install awscli)
  rclone      `rclone copy --checksum` then `rclone check` (when `rclone` is on PATH; Debian rclone)

The endpoint is --endpoint URL, or a private moto server (moto[server]) started on loopback for
the run and stopped after it. Each figure is the best of --repeat passes; the target is the
appliance at least 0.9x the best of the others. Prints a table and writes JSON (--json).

examples:
  appliance bench transfer --quick
  appliance bench transfer --size 512 --files 64
  appliance bench transfer --endpoint http://127.0.0.1:9000     # an existing S3 endpoint
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_moto(folder: Path) -> tuple[subprocess.Popen, str]:
    exe = Path(sys.executable).parent / "moto_server"
    binary = str(exe) if exe.is_file() else shutil.which("moto_server")
    if binary is None:
        raise SystemExit("appliance bench transfer: no --endpoint and no moto_server: pip install 'moto[server]'")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(folder / "moto.log", "wb")
    proc = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/", timeout=2).close()
            return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"moto_server did not start: {(folder / 'moto.log').read_text()[-1000:]}")
            time.sleep(0.1)


def _make_run(root: Path, n_files: int, total: int) -> None:
    size = max(1, total // n_files)
    for i in range(n_files):
        p = root / "Data" / f"C{i // 16 + 1}.1" / f"s_1_{1101 + i % 16}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(size))


def _crc_bytes(data: bytes) -> str:
    import crc32c

    return f"{crc32c.crc32c(data):08x}"


def run_benchmark(work: Path, endpoint: str, total_mb: int, n_files: int, repeat: int, part_mb: int,
                  progress=lambda m: None) -> dict[str, Any]:
    import boto3

    from appliance.transfer import Destination, Journal, entries_of_dir, push

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    src = work / "RUN"
    _make_run(src, n_files, total_mb * 1_000_000)
    entries = entries_of_dir(src)
    nbytes = sum(e.size for e in entries)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    opts = {"client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}, "skip_instance_cache": True}
    results: dict[str, Any] = {"bytes": nbytes, "files": len(entries), "endpoint": endpoint, "part_mb": part_mb, "tools": {}}

    def fresh_bucket() -> str:
        name = f"bench-{uuid.uuid4().hex[:10]}"
        client.create_bucket(Bucket=name)
        return name

    def drop(bucket: str) -> None:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            objs = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if objs:
                client.delete_objects(Bucket=bucket, Delete={"Objects": objs})
        client.delete_bucket(Bucket=bucket)

    tools: dict[str, Any] = {}

    def timed(name: str, fn) -> None:
        tools[name] = fn

    def measure() -> None:
        """Every tool once per pass, the order rotated from pass to pass, so that none always
        runs first on a fresh server (or last, after the others filled its memory)."""
        names = list(tools)
        best: dict[str, float] = {}
        for i in range(repeat):
            for name in names[i % len(names):] + names[:i % len(names)]:
                bucket = fresh_bucket()
                try:
                    t0 = time.perf_counter()
                    tools[name](bucket, i)
                    dt = time.perf_counter() - t0
                finally:
                    drop(bucket)
                best[name] = min(dt, best.get(name, dt))
        skipped = dict(results["tools"])
        results["tools"] = {name: {"seconds": best[name], "mb_s": nbytes / best[name] / 1e6} for name in names}
        results["tools"].update(skipped)
        for name in names:
            progress(f"{name}: {nbytes / best[name] / 1e6:.1f} MB/s")

    def appliance(bucket: str, i: int) -> None:
        with Journal(work / f"journal-{uuid.uuid4().hex[:6]}.sqlite") as j:
            push(src, entries, Destination(f"s3://{bucket}", opts), j, subject="RUN", part_size=part_mb << 20)

    def s3transfer(bucket: str, i: int) -> None:
        from boto3.s3.transfer import TransferConfig

        cfg = TransferConfig(multipart_chunksize=part_mb << 20, multipart_threshold=part_mb << 20)
        for e in entries:
            client.upload_file(str(src / e.path), bucket, f"RUN/{e.path}", Config=cfg)
        for e in entries:
            body = client.get_object(Bucket=bucket, Key=f"RUN/{e.path}")["Body"].read()
            if _crc_bytes(body) != e.crc32c:
                raise RuntimeError(f"s3transfer: {e.path} does not verify")

    Destination("s3://warm-up", opts)  # import s3fs and its event loop before the clock starts, as boto3 is
    timed("appliance", appliance)
    timed("s3transfer", s3transfer)
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint}
    if shutil.which("aws"):
        def aws(bucket: str, i: int) -> None:
            back = work / f"aws-back-{i}"
            subprocess.run(["aws", "s3", "cp", "--recursive", "--only-show-errors", str(src), f"s3://{bucket}/RUN"], check=True, env=env)
            subprocess.run(["aws", "s3", "cp", "--recursive", "--only-show-errors", f"s3://{bucket}/RUN", str(back)], check=True, env=env)
            subprocess.run(["diff", "-rq", str(src), str(back)], check=True)
            shutil.rmtree(back)
        timed("aws s3 cp", aws)
    else:
        results["tools"]["aws s3 cp"] = {"skipped": "aws CLI not on PATH (pip install awscli)"}
    if shutil.which("rclone"):
        renv = {**os.environ, "RCLONE_CONFIG_BENCH_TYPE": "s3", "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
                "RCLONE_CONFIG_BENCH_ENDPOINT": endpoint, "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
                "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"]}

        def rclone(bucket: str, i: int) -> None:
            subprocess.run(["rclone", "copy", "--checksum", str(src), f"bench:{bucket}/RUN"], check=True, env=renv)
            subprocess.run(["rclone", "check", "--download", str(src), f"bench:{bucket}/RUN"], check=True, env=renv,
                           capture_output=True)
        timed("rclone", rclone)
    else:
        results["tools"]["rclone"] = {"skipped": "rclone not on PATH (Debian package rclone)"}
    measure()
    client.close()
    others = [v["mb_s"] for k, v in results["tools"].items() if k != "appliance" and "mb_s" in v]
    results["ratio_to_best"] = results["tools"]["appliance"]["mb_s"] / max(others) if others else None
    return results


def format_table(r: dict) -> str:
    lines = [f"{r['files']} files, {r['bytes'] / 1e6:.0f} MB to {r['endpoint']}, verification on for every tool",
             f"{'tool':<12} {'MB/s':>8} {'seconds':>8}"]
    for name, v in r["tools"].items():
        lines.append(f"{name:<12} {v['mb_s']:>8.1f} {v['seconds']:>8.2f}" if "mb_s" in v else f"{name:<12} skipped: {v['skipped']}")
    if r["ratio_to_best"] is not None:
        lines.append(f"appliance / best other: {r['ratio_to_best']:.2f}x (target >= 0.9x)")
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", help="an S3 endpoint URL (default: a private moto server on loopback)")
    parser.add_argument("--size", type=int, default=256, help="MB of data (default 256)")
    parser.add_argument("--files", type=int, default=32, help="number of files (default 32)")
    parser.add_argument("--part-mb", type=int, default=8, help="multipart part size in MiB, at least 5 (default 8)")
    parser.add_argument("--repeat", type=int, default=3, help="passes per tool, the best is kept (default 3)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 48 MB, 6 files, two passes")
    parser.add_argument("--dir", type=Path, help="scratch folder (default: a temp folder)")
    parser.add_argument("--json", type=Path, default=Path("out/bench-transfer.json"), help="where to write the JSON (default out/bench-transfer.json)")


def run(args: argparse.Namespace) -> int:
    if args.quick:
        args.size, args.files, args.repeat = 48, 6, 2
    if args.part_mb < 5:
        print("appliance bench transfer: --part-mb must be at least 5 (S3's smallest part)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-transfer-", dir=args.dir))
    proc = None
    try:
        endpoint = args.endpoint
        if not endpoint:
            proc, endpoint = _start_moto(work)
        r = run_benchmark(work, endpoint, args.size, args.files, args.repeat, args.part_mb,
                          progress=lambda m: print(m, file=sys.stderr, flush=True))
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    print(format_table(r))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m appliance.benchmarks.transfer", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(p)
    sys.exit(run(p.parse_args()))
