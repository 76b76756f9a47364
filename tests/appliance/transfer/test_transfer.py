"""The verified handoff against a real S3 API (moto's server on loopback) and real paths:
resumable per part after a SIGKILL, corruption at the destination found and re-sent, a full
destination makes the job wait with an alert, outputs pulled back and committed once."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from appliance.offload import is_transient, read_marker
from appliance.runfolder import FileEntry
from appliance.offload.cloud import pull_outputs
from appliance.transfer import (
    COMPLETE_MARKER,
    Destination,
    DestinationRefused,
    Journal,
    TransferVerifyFailed,
    entries_of_dir,
    inputs_verified,
    publish_outputs,
    push,
    run_entries,
)
from tests.s3 import s3_bucket, s3_server  # noqa: F401 - fixtures

RUN = "RUN1"
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def run_root(tmp_path_factory) -> Path:
    """A data root with one complete run written by the real pipeline (2 tiles, 5 cycles)."""
    from appliance.pipeline import Supervisor
    from tests.runs import small_run_config

    root = tmp_path_factory.mktemp("runs")
    Supervisor(small_run_config(root, "run.cycles=5", "control.enabled=false"), run_id=RUN).run()
    return root


def digest(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in skip}


def s3_digest(server, bucket: str, prefix: str) -> dict[str, str]:
    c = server.client()
    out = {}
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for o in page.get("Contents", []):
            body = c.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            out[o["Key"][len(prefix) + 1:]] = hashlib.sha256(body).hexdigest()
    c.close()
    return out


def big_source(folder: Path, mib: int = 23) -> tuple[Path, list[FileEntry]]:
    """A folder with one file of ``mib`` MiB (several 5 MiB parts) and a small one."""
    import crc32c

    folder.mkdir()
    data = os.urandom(mib << 20)
    (folder / "big.bin").write_bytes(data)
    (folder / "small.txt").write_bytes(b"hello\n")
    return folder, [FileEntry("big.bin", len(data), f"{crc32c.crc32c(data):08x}"),
                    FileEntry("small.txt", 6, f"{crc32c.crc32c(b'hello' + bytes([10])):08x}")]


def test_a_run_goes_to_s3_verified_and_is_not_sent_twice(run_root, s3_server, s3_bucket, tmp_path):
    run = run_root / RUN
    entries = run_entries(run)
    before = digest(run)
    dest = Destination(f"s3://{s3_bucket}/inputs", s3_server.storage_options)
    with Journal(tmp_path / "transfers.sqlite") as j:
        rep = push(run, entries, dest, j, job_id=7)
        assert rep.files == len(entries) and not rep.skipped
        assert rep.bytes_sent == sum(e.size for e in entries)
        assert rep.egress_bytes == rep.bytes_reread == rep.bytes_sent  # every byte re-read from the store
        got = s3_digest(s3_server, s3_bucket, f"inputs/{RUN}")
        marker = json.loads(s3_server.client().get_object(Bucket=s3_bucket, Key=f"inputs/{RUN}/{COMPLETE_MARKER}")["Body"].read())
        assert marker["files"] == len(entries)
        got.pop(COMPLETE_MARKER)
        assert got == {e.path: before[e.path] for e in entries}
        assert inputs_verified(dest, RUN, entries)
        assert not inputs_verified(dest, RUN, entries[:-1])
        row = j.transfers(job_id=7)[0]
        assert row["state"] == "verified" and row["attempts"] == 1 and row["bytes_sent"] == rep.bytes_sent
        assert row["egress_bytes"] == rep.egress_bytes and "re-read" in row["verification"]

        again = push(run, entries, dest, j, job_id=7)
        assert again.skipped == len(entries) and again.bytes_sent == 0 and again.parts_sent == 0
        assert j.transfers(job_id=7)[0]["attempts"] == 2
    assert digest(run) == before  # the source folder got no marker and no change


def test_two_destinations_each_have_their_own_marker(run_root, s3_server, s3_bucket, tmp_path):
    run = run_root / RUN
    entries = run_entries(run)
    shared = Destination(str(tmp_path / "warm"))
    cloud = Destination(f"s3://{s3_bucket}", s3_server.storage_options)
    with Journal(tmp_path / "transfers.sqlite") as j:
        push(run, entries, shared, j)
        assert (tmp_path / "warm" / RUN / COMPLETE_MARKER).is_file()
        rep = push(run, entries, cloud, j)  # not blocked by the first destination's marker
        assert rep.skipped == 0 and rep.bytes_sent == sum(e.size for e in entries)
        assert inputs_verified(shared, RUN, entries) and inputs_verified(cloud, RUN, entries)
        assert len(j.transfers()) == 2
    got = digest(tmp_path / "warm" / RUN, skip=(COMPLETE_MARKER,))
    assert got == {e.path: digest(run)[e.path] for e in entries}
    assert not list((tmp_path / "warm").rglob("*.partial"))


_KILLED = """
import sys
from appliance.runfolder import FileEntry
from appliance.storage import TokenBucket
from appliance.transfer import Destination, Journal, push
src, url, journal, endpoint = sys.argv[1:5]
entries = [FileEntry(p, int(s), c) for p, s, c in (x.split(":") for x in sys.argv[5:])]
opts = {"client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}} if url.startswith("s3://") else None
with Journal(journal) as j:
    push(src, entries, Destination(url, opts), j, subject="job", part_size=5 << 20,
         bucket=TokenBucket(8e6), on_part=lambda rel, n: print(rel, n, flush=True))
"""


@pytest.mark.parametrize("where", ["s3", "path"])
def test_a_transfer_killed_mid_file_resumes_without_resending_verified_parts(where, s3_server, s3_bucket, tmp_path):
    src, entries = big_source(tmp_path / "src")
    url = f"s3://{s3_bucket}/x" if where == "s3" else str(tmp_path / "dst")
    jpath = tmp_path / "transfers.sqlite"
    argv = [sys.executable, "-c", textwrap.dedent(_KILLED), str(src), url, str(jpath), s3_server.endpoint,
            *(f"{e.path}:{e.size}:{e.crc32c}" for e in entries)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        seen = []
        deadline = time.monotonic() + 120
        while len(seen) < 2:  # two parts of big.bin acknowledged and recorded: kill it mid-file
            line = proc.stdout.readline()
            assert line, f"the transfer ended early: {proc.stderr.read()}"
            if line.split()[0] == "big.bin":
                seen.append(line.split())
            assert time.monotonic() < deadline
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    dest = Destination(url, s3_server.storage_options if where == "s3" else None)
    assert not inputs_verified(dest, "job", entries)
    sent_again = []
    with Journal(jpath) as j:
        tid = j.transfer(f"push:{dest.url}:job")["id"]
        recorded = j.all_parts(tid, "big.bin")
        first = {p.number for p in recorded}  # parts go in parallel: any of them, not only the first ones
        assert 2 <= len(first) < 5
        rep = push(src, entries, dest, j, subject="job", part_size=5 << 20,
                   on_part=lambda rel, n: sent_again.append((rel, n)))
        assert j.transfer(f"push:{dest.url}:job")["attempts"] == 2
    n_parts = -(-entries[0].size // (5 << 20))
    assert {n for rel, n in sent_again if rel == "big.bin"} == set(range(1, n_parts + 1)) - first
    assert rep.parts_reused == len(first)
    big_resent = rep.bytes_sent - (entries[1].size if "small.txt" in rep.sent else 0)
    assert big_resent == entries[0].size - sum(p.size for p in recorded)
    assert inputs_verified(dest, "job", entries)
    want = hashlib.sha256((src / "big.bin").read_bytes()).hexdigest()
    if where == "s3":
        assert s3_digest(s3_server, s3_bucket, "x/job")["big.bin"] == want
        assert not s3_server.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    else:
        assert hashlib.sha256((tmp_path / "dst" / "job" / "big.bin").read_bytes()).hexdigest() == want
        assert not list((tmp_path / "dst").rglob("*.partial"))


def test_an_object_corrupted_at_the_destination_is_found_and_resent(run_root, s3_server, s3_bucket, tmp_path):
    run = run_root / RUN
    entries = run_entries(run)
    dest = Destination(f"s3://{s3_bucket}", s3_server.storage_options)
    victim = next(e for e in entries if e.path.endswith(".bcl"))
    c = s3_server.client()
    with Journal(tmp_path / "transfers.sqlite") as j:
        push(run, entries, dest, j)
        key = f"{RUN}/{victim.path}"
        body = bytearray(c.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
        body[0] ^= 0xFF  # same size, one byte flipped: bit rot or a bad writer
        c.put_object(Bucket=s3_bucket, Key=key, Body=bytes(body))
        rep = push(run, entries, dest, j)
        assert rep.resent == 1 and rep.sent == [victim.path] and rep.bytes_sent == victim.size
        assert rep.skipped == len(entries) - 1
    fixed = c.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    assert fixed == (run / victim.path).read_bytes()
    c.close()


def test_reverify_rereads_a_shared_path_copy_whose_size_and_mtime_did_not_change(run_root, tmp_path):
    run = run_root / RUN
    entries = run_entries(run)
    dest = Destination(str(tmp_path / "warm"))
    victim = next(e for e in entries if e.path.endswith(".npy"))
    with Journal(tmp_path / "transfers.sqlite") as j:
        push(run, entries, dest, j)
        p = tmp_path / "warm" / RUN / victim.path
        st = p.stat()
        with open(p, "r+b") as f:
            f.seek(victim.size // 2)
            b = f.read(1)
            f.seek(victim.size // 2)
            f.write(bytes([b[0] ^ 0x01]))
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert push(run, entries, dest, j).resent == 0  # the cheap check cannot see it ...
        rep = push(run, entries, dest, j, reverify=True)  # ... the re-read does
        assert rep.resent == 1 and rep.sent == [victim.path]
    assert p.read_bytes() == (run / victim.path).read_bytes()


@pytest.fixture
def full_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'mount failed'}): needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_destination_makes_the_job_wait_with_an_alert_and_loses_nothing(run_root, full_tmpfs, tmp_path):
    run = run_root / RUN
    entries = run_entries(run)
    before = digest(run)
    st = os.statvfs(full_tmpfs)
    ballast = full_tmpfs / "ballast"
    # leave room for about half of the run
    ballast.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - sum(e.size for e in entries) // 2))
    alerts = []
    dest = Destination(str(full_tmpfs))
    with Journal(tmp_path / "transfers.sqlite") as j:
        with pytest.raises(DestinationRefused) as exc:
            push(run, entries, dest, j, on_alert=alerts.append)
        assert is_transient(exc.value)  # the ledger retries the job with backoff: it waits
        assert "free space" in str(exc.value)
        assert [a["action"] for a in alerts] == ["raised"] and alerts[0]["rule"] == "transfer_refused"
        row = j.transfers()[0]
        assert row["state"] == "waiting" and "refused" in row["error"]
        assert digest(run) == before  # nothing lost at the source
        assert not inputs_verified(dest, RUN, entries)
        verified_before = sum(1 for e in entries if j.file(row["id"], e.path)["state"] == "verified")
        assert verified_before > 0
        ballast.unlink()  # the operator frees space: the next attempt resumes
        rep = push(run, entries, dest, j, on_alert=alerts.append)
        assert rep.skipped == verified_before  # what verified before is not sent again
        assert alerts[-1]["action"] == "cleared"
    assert inputs_verified(dest, RUN, entries)
    assert digest(full_tmpfs / RUN, skip=(COMPLETE_MARKER,)) == {e.path: before[e.path] for e in entries}


def test_outputs_come_back_verified_and_commit_once(s3_server, s3_bucket, tmp_path):
    work = tmp_path / "remote-job"
    (work / "qc").mkdir(parents=True)
    (work / "qc" / "qc.json").write_text(json.dumps({"aligned_fraction": 0.97}))
    (work / "reads.fastq").write_bytes(os.urandom(300_000))
    url = f"s3://{s3_bucket}/outputs"
    dest = Destination(url, s3_server.storage_options)
    out = tmp_path / "Analysis" / RUN / "align-qc"
    with Journal(tmp_path / "transfers.sqlite") as j:
        publish_outputs(work, dest, j, subject="job-9")
        done = pull_outputs(url, "job-9", job_id=9, key="k-9", output_dir=out, data_root=tmp_path,
                            storage_options=s3_server.storage_options, journal=j)
        assert not done["reused"] and done["result"]["pulled_files"] == 2
        assert digest(out, skip=("_SUCCESS.json",)) == digest(work)
        assert read_marker(out, "k-9")["result"]["pulled_bytes"] == sum(e.size for e in entries_of_dir(work))
        pulls = [t for t in j.transfers() if t["direction"] == "pull"]
        assert pulls[0]["egress_bytes"] == done["result"]["pulled_bytes"]  # counted apart from uploads
        # the job ran twice (or the pull is repeated): one output, nothing pulled again
        again = pull_outputs(url, "job-9", job_id=9, key="k-9", output_dir=out, data_root=tmp_path,
                             storage_options=s3_server.storage_options, journal=j, attempt=2)
        assert again["reused"]
    # an output corrupted in the store is refused and the committed output is left as it was
    c = s3_server.client()
    c.put_object(Bucket=s3_bucket, Key="outputs/job-9/reads.fastq", Body=b"garbage")
    c.close()
    with pytest.raises(TransferVerifyFailed):
        pull_outputs(url, "job-9", job_id=9, key="k-9-new-inputs", output_dir=out, data_root=tmp_path,
                     storage_options=s3_server.storage_options)
    assert digest(out, skip=("_SUCCESS.json",)) == digest(work)
    assert not [p for p in out.parent.iterdir() if ".staging-" in p.name]

