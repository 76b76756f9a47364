"""The run folder: the Illumina-style handoff between the pipeline and everything downstream.

``RunFolderWriter`` writes ``RunInfo.xml``, ``.locs``, ``.filter``, per-cycle ``.bcl``, the
project's per-cycle intensities (``.npy``), the reference FASTA, a manifest with a CRC32C
per file, and completion markers; every file atomically (temp name, fsync, rename); and
InterOp run metrics (``InterOp/*.bin``, appended cycle by cycle, and RunParameters.xml). picard's
``IlluminaBasecallsToFastq`` reads the result. ``RunFolder`` reads it back and verifies it.
See docs/run-folder.md.
"""

from appliance.runfolder._atomic import Written, checksum_file, ensure_dir, fsync_dir, full_error, is_temp_name, pwrite_all, write_atomic
from appliance.runfolder.completion import (
    COMPLETION_STATUS,
    RunCompletion,
    completion_status,
    cycles_completed,
    read_completion,
    write_completion,
)
from appliance.runfolder.errors import RunFolderError, RunFolderFull
from appliance.runfolder.folder import RunFolder
from appliance.runfolder.formats import (
    NO_CALL,
    decode_bcl,
    decode_filter,
    decode_locs,
    decode_runinfo,
    encode_bcl,
    encode_filter,
    encode_locs,
    encode_runinfo,
)
from appliance.runfolder.intensities import decode_intensities, encode_intensities
from appliance.runfolder.interop import InterOpOptions
from appliance.runfolder.layout import Layout
from appliance.runfolder.manifest import FileEntry, Manifest
from appliance.runfolder.runinfo import RunInfo
from appliance.runfolder.writer import RunFolderWriter

__all__ = [
    "COMPLETION_STATUS",
    "NO_CALL",
    "RunCompletion",
    "completion_status",
    "cycles_completed",
    "read_completion",
    "write_completion",
    "FileEntry",
    "InterOpOptions",
    "Layout",
    "Manifest",
    "RunFolder",
    "RunFolderError",
    "RunFolderFull",
    "RunFolderWriter",
    "RunInfo",
    "decode_bcl",
    "decode_filter",
    "decode_intensities",
    "decode_locs",
    "decode_runinfo",
    "encode_bcl",
    "encode_filter",
    "encode_intensities",
    "encode_locs",
    "encode_runinfo",
    "Written",
    "checksum_file",
    "ensure_dir",
    "fsync_dir",
    "full_error",
    "is_temp_name",
    "pwrite_all",
    "write_atomic",
]
