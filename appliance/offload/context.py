"""What a job function is given: :class:`JobContext`.

A job kind is a function ``run_job(params: dict, ctx: JobContext) -> dict``. It reads its inputs
(run folders, earlier jobs' outputs) and writes every output file under ``ctx.staging_dir``,
never under ``ctx.output_dir``: the executor renames the staging folder onto ``output_dir`` only
after the function returned, so a job killed half way leaves no partial output, and a job that
runs twice leaves one correct output. The returned dict (JSON-serialisable, small: figures, not
data) is stored in the ledger as the job's result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["JobContext"]


@dataclass(frozen=True)
class JobContext:
    """One attempt of one job, as its function sees it."""

    job_id: int
    kind: str
    attempt: int  #: 1 for the first attempt
    data_root: Path  #: the hot tier's data root (run folders live at data_root/<run_id>)
    staging_dir: Path  #: an empty folder on the output's file system: write outputs here
    output_dir: Path  #: where the outputs land once the job succeeded (read-only for the job)
    algorithm: str | None = None  #: algorithm name for jobs that run one (reprocess)
    algorithm_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  #: executor facts (worker, host) for logs
    #: the ledger the job came from (a file, or the lab's PostgreSQL URL, where the lab's
    #: algorithm registry lives too: ``AlgorithmRegistry.open(ctx.data_root, ctx.ledger)``)
    ledger: str = ""
