"""Helpers shared by the analysis job kinds: opening a run folder as a job input (with the
errors the ledger needs), deterministic gzip and JSON output, and parameter checks."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

from appliance.offload.errors import PermanentJobError, TransientJobError

GZIP_LEVEL = 6


def check_params(kind: str, params: dict, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    """PermanentJobError naming the missing or unknown keys of a job's ``params``."""
    if not isinstance(params, dict):
        raise PermanentJobError(f"{kind}: params must be a dict, got {type(params).__name__}")
    missing = [k for k in required if k not in params]
    if missing:
        raise PermanentJobError(f"{kind}: params lack {', '.join(missing)}; required: {', '.join(required)}")
    unknown = sorted(set(params) - set(required) - set(optional))
    if unknown:
        allowed = ", ".join((*required, *optional))
        raise PermanentJobError(f"{kind}: unknown params {', '.join(unknown)}; allowed: {allowed}")


def run_path(data_root: Path, run: Any) -> Path:
    """``data_root/<run>``, refusing ids that would leave the data root."""
    if not isinstance(run, str) or not run or "/" in run or run in (".", "..") or run.startswith("."):
        raise PermanentJobError(f"run={run!r} is not a run id (a folder name under the data root, e.g. 20260101_SIM01_1_FC0001)")
    return Path(data_root) / run


def open_complete_run(data_root: Path, run: Any, *, verify: bool = True):
    """The :class:`~appliance.runfolder.RunFolder` of a completed, intact run, or
    PermanentJobError saying what is wrong and how to fix it."""
    from appliance.runfolder import RunFolder, RunFolderError

    path = run_path(data_root, run)
    if not path.is_dir():
        raise PermanentJobError(f"run folder {path} does not exist; check the run id and the data root")
    try:
        folder = RunFolder(path)
        complete = folder.is_complete
    except RunFolderError as exc:
        raise PermanentJobError(f"{path}: not a readable run folder: {exc}") from None
    except OSError as exc:
        raise TransientJobError(f"{path}: cannot read the run folder ({exc}); retrying") from exc
    if not complete:
        raise PermanentJobError(
            f"{path}: the run is not complete (no CopyComplete.txt / Manifest/run.json); "
            "submit the job once the run has finished, or finish the run folder"
        )
    if verify:
        problems = folder.verify()
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise PermanentJobError(
                f"{path}: the run folder does not match its manifest ({shown}); restore the "
                "damaged files from a copy (or re-run the instrument run) and submit again"
            )
    return folder


def gzip_writer(path: Path, level: int = GZIP_LEVEL):
    """A binary gzip stream with no name and mtime 0 in its header: the same content gives
    the same bytes every time."""
    raw = open(path, "wb")
    return _ClosingGzip(raw, level)


class _ClosingGzip(gzip.GzipFile):
    def __init__(self, raw, level: int) -> None:
        super().__init__(filename="", mode="wb", compresslevel=level, fileobj=raw, mtime=0)
        self._raw = raw

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._raw.close()


def dump_json(path: Path, doc: Any) -> None:
    """Write ``doc`` as sorted, indented JSON with a trailing newline (deterministic bytes)."""
    Path(path).write_text(json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n")


def file_sizes(folder: Path) -> dict[str, int]:
    """{file name: size} of the plain files directly in ``folder``, sorted by name."""
    return {p.name: p.stat().st_size for p in sorted(Path(folder).iterdir()) if p.is_file()}


def fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder`` (outputs reach the disk before the job reports success)."""
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
