"""The frame header: a fixed 256-byte NumPy structured dtype at the start of every ring slot.

It is read and written in place through views on shared memory (no pickling, no copies).
Field order keeps every field naturally aligned; the layout is part of the on-wire contract
(DESIGN.md, "Frame contract"), so changing it means bumping :data:`FRAME_VERSION`.
"""

from __future__ import annotations

import enum
import time

import crc32c
import numpy as np

__all__ = [
    "FRAME_MAGIC",
    "FRAME_VERSION",
    "FRAME_HEADER_DTYPE",
    "FRAME_HEADER_SIZE",
    "MAX_NDIM",
    "MAX_TRACE",
    "FrameFlags",
    "FrameKind",
    "DTYPE_CODES",
    "dtype_from_code",
    "code_from_dtype",
    "checksum",
    "stamp_acquisition",
    "stamp_trace",
]

FRAME_MAGIC = 0x46524D31  # "FRM1" read as a big-endian integer
FRAME_VERSION = 1
MAX_NDIM = 4
#: One trace timestamp per pipeline stage: source, preprocess, kernel, basecall, writer, spare.
MAX_TRACE = 8


class FrameKind(enum.IntEnum):
    """What a frame's payload is (the header's ``kind`` field)."""

    IMAGE = 0  #: a camera frame (tile, cycle, channel)
    POSITIONS = 1  #: cluster positions of a tile, float32 (N, 2)
    INTENSITIES = 2  #: per-cluster intensities of a tile and cycle, float32 (N, 4)
    CALLS = 3  #: base calls and qualities of a tile and cycle, uint8 (2, N)
    FILTER = 4  #: pass-filter flags of a tile, uint8 (N,)
    END = 5  #: end of the run (no payload)


class FrameFlags(enum.IntFlag):
    """Bits of the header's ``flags`` field."""

    NONE = 0
    END_OF_RUN = 1 << 0
    END_OF_CYCLE = 1 << 1
    SYNTHETIC = 1 << 2
    CHECKSUMMED = 1 << 3  #: ``checksum`` holds the CRC32C of the payload
    RAW_KEPT = 1 << 4  #: the raw frame is kept for audit downstream
    QUARANTINED = 1 << 5
    INCOMPLETE = 1 << 6  #: a cycle with dropped frames: its intensities are zeros, its calls no-calls


FRAME_HEADER_DTYPE = np.dtype(
    [
        ("magic", "<u4"),
        ("version", "<u2"),
        ("header_size", "<u2"),
        ("seq", "<u8"),  # per-edge, monotonically increasing
        ("t_mono_ns", "<u8"),  # CLOCK_MONOTONIC at acquisition
        ("t_wall_ns", "<u8"),  # CLOCK_REALTIME at acquisition
        ("run_id", "S32"),
        ("instrument_id", "S16"),
        ("tile", "<u4"),
        ("cycle", "<u2"),
        ("channel", "<u1"),
        ("dtype_code", "<u1"),  # see DTYPE_CODES
        ("ndim", "<u1"),
        ("n_trace", "<u1"),
        ("kind", "<u2"),  # FrameKind: what the payload is
        ("checksum", "<u4"),  # CRC32C of the payload bytes when flags has CHECKSUMMED
        ("shape", "<u4", (MAX_NDIM,)),
        ("payload_bytes", "<u8"),
        ("flags", "<u4"),
        ("_pad1", "<u4"),
        ("trace_ns", "<u8", (MAX_TRACE,)),  # CLOCK_MONOTONIC as the frame leaves each stage
        ("_reserved", "V64"),
    ],
    align=True,
)
FRAME_HEADER_SIZE = FRAME_HEADER_DTYPE.itemsize
assert FRAME_HEADER_SIZE == 256, FRAME_HEADER_SIZE

#: Payload element types a frame may carry, by stable one-byte code.
DTYPE_CODES: dict[int, np.dtype] = {
    0: np.dtype("u1"),
    1: np.dtype("<u2"),
    2: np.dtype("<u4"),
    3: np.dtype("<i2"),
    4: np.dtype("<i4"),
    5: np.dtype("<f2"),
    6: np.dtype("<f4"),
    7: np.dtype("<f8"),
    8: np.dtype("<u8"),
}
_CODE_OF = {dt: code for code, dt in DTYPE_CODES.items()}


def dtype_from_code(code: int) -> np.dtype:
    """The payload dtype for a header's ``dtype_code``; ValueError names the bad code."""
    try:
        return DTYPE_CODES[int(code)]
    except KeyError:
        raise ValueError(
            f"frame dtype_code {code} is not one of {sorted(DTYPE_CODES)}: corrupt header?"
        ) from None


def code_from_dtype(dtype: np.dtype | type | str) -> int:
    """The header code for a payload dtype; ValueError lists the supported dtypes."""
    dt = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).byteorder == ">" else np.dtype(dtype)
    try:
        return _CODE_OF[dt]
    except KeyError:
        allowed = ", ".join(str(d) for d in DTYPE_CODES.values())
        raise ValueError(f"frame payload dtype {dt} is not supported; use one of {allowed}") from None


def checksum(payload) -> int:
    """CRC32C of a buffer (SSE4.2 where the CPU has it): the frame payload checksum."""
    return crc32c.crc32c(payload)


def stamp_acquisition(header: np.ndarray) -> None:
    """Write acquisition time (monotonic and wall clock) into a header view."""
    header["t_mono_ns"] = time.monotonic_ns()
    header["t_wall_ns"] = time.time_ns()


def stamp_trace(header: np.ndarray, stage_index: int) -> None:
    """Record the time the frame leaves stage ``stage_index`` (0 = source)."""
    if not 0 <= stage_index < MAX_TRACE:
        raise ValueError(f"stage_index {stage_index} outside 0..{MAX_TRACE - 1}")
    header["trace_ns"][stage_index] = time.monotonic_ns()
    if header["n_trace"] <= stage_index:
        header["n_trace"] = stage_index + 1
