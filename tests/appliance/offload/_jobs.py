"""Test-only job kinds (a plug-in: importing this module registers them).

``test-hash`` does real work: it hashes a file and writes the digest; it appends one line per
finished run of the function to an append-only completions file, so tests count how often a job
ran to completion. With ``block_on`` it first writes ``<block_on>.started.<job>`` and waits for
the flag file ``block_on`` (so a test can kill its worker mid-job). ``test-poison`` always fails.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from appliance.offload import JobContext, JobKind, PermanentJobError, TransientJobError, register_kind

__all__ = ["hash_file", "poison"]


def hash_file(params: dict, ctx: JobContext) -> dict:
    block = params.get("block_on")
    if block:
        Path(f"{block}.started.{ctx.job_id}.{ctx.attempt}").write_text(str(os.getpid()))
        deadline = time.monotonic() + 60
        while not Path(block).exists():
            if time.monotonic() > deadline:
                raise TransientJobError(f"flag {block} never appeared")
            time.sleep(0.02)
    if params.get("sleep"):
        time.sleep(float(params["sleep"]))
    data = Path(params["path"]).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    (ctx.staging_dir / "digest.txt").write_text(digest + "\n")
    (ctx.staging_dir / "copy.bin").write_bytes(data)
    if params.get("log"):
        # O_APPEND: one short line per write, atomic for concurrent writers
        fd = os.open(params["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{ctx.job_id} {ctx.attempt} {os.getpid()}\n".encode())
        finally:
            os.close(fd)
    return {"sha256": digest, "bytes": len(data), "attempt": ctx.attempt}


def poison(params: dict, ctx: JobContext) -> dict:
    if params.get("permanent"):
        raise PermanentJobError("poison (permanent): this input can never be processed")
    raise TransientJobError(f"poison: attempt {ctx.attempt} failed")


FAST = dict(backoff_s=0.05, backoff_cap_s=0.2, timeout_s=60.0)
register_kind(JobKind("test-hash", f"{__name__}:hash_file", "batch", max_attempts=4, **FAST), replace=True)
register_kind(JobKind("test-hash-rt", f"{__name__}:hash_file", "realtime", max_attempts=4, **FAST), replace=True)
register_kind(JobKind("test-poison", f"{__name__}:poison", "batch", max_attempts=3, **FAST), replace=True)


def record(params: dict, ctx: JobContext) -> dict:
    """Stands in for the analysis kinds in trigger tests: writes its params and context."""
    doc = {"params": params, "kind": ctx.kind, "algorithm": ctx.algorithm, "version": ctx.algorithm_version}
    (ctx.staging_dir / "params.json").write_text(__import__("json").dumps(doc, sort_keys=True))
    return {"kind": ctx.kind}


def sleep_job(params: dict, ctx: JobContext) -> dict:
    """Stands in for compute-bound work in burst tests: sleeps ``seconds``, writes who ran it."""
    time.sleep(float(params.get("seconds", 1.0)))
    (ctx.staging_dir / "done.txt").write_text(f"{params.get('n', 0)}\n")
    return {"n": params.get("n", 0), "worker": str(ctx.extra.get("worker", "local"))}


# inputs hot or object: a cloud pool may take it (it reads nothing; nothing is staged)
register_kind(JobKind("test-sleep", f"{__name__}:sleep_job", "batch", max_attempts=3, inputs=("hot", "object"), expected_s=4.0,
                      **FAST), replace=True)
