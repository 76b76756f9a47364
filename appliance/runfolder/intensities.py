"""Per-cycle cluster intensities for algorithm developers: one ``.npy`` per tile and cycle.

Format (chosen so NumPy alone reads it, memory-mapped if wanted, with no extra library):

- ``Data/Intensities/L001/C{cycle}.1/s_1_{tile}.npy``: a NumPy ``.npy`` (format 1.0) of
  float32 little-endian, shape ``(clusters, channels)``, C order; row ``i`` is cluster ``i``
  of the tile's ``.locs``/``.filter``/``.bcl``; columns are the channels in the order listed
  by the index. (The place mirrors Illumina's historical per-cycle ``.cif`` intensities.)
- ``Data/Intensities/intensities.json``: the index: format name and version, dtype, the
  path pattern, channel names, lane, tiles and cycles.

Each chunk (tile x cycle) is its own file, so a cycle is readable while later ones are still
being written, and each is listed with its checksum in the cycle's manifest. Reading::

    import json, numpy as np
    idx = json.load(open(run + "/Data/Intensities/intensities.json"))
    a = np.load(run + "/" + idx["path"].format(tile=1101, cycle=1), mmap_mode="r")  # (N, 4)
"""

from __future__ import annotations

import io
import json

import numpy as np

from appliance.runfolder.errors import RunFolderError
from appliance.runfolder.layout import Layout
from appliance.runfolder.runinfo import RunInfo

FORMAT = "appliance-intensities"
VERSION = 1
DTYPE = "<f4"


def encode_intensities(intensities, channels: int) -> tuple[bytes, np.ndarray]:
    """(``.npy`` header, contiguous array) for one tile and cycle; written back to back
    they are the file (no copy of the array is made when it is already float32 and C order)."""
    a = np.asarray(intensities)
    if a.ndim != 2 or a.shape[1] != channels:
        raise ValueError(
            f"intensities: expected shape (N, {channels}) (one row per cluster, one "
            f"column per channel), got {a.shape}"
        )
    if a.dtype.kind != "f":
        raise ValueError(f"intensities: expected float32, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=DTYPE)
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        head, {"descr": DTYPE, "fortran_order": False, "shape": a.shape}
    )
    return head.getvalue(), a


def decode_intensities(data: bytes) -> np.ndarray:
    """float32 (N, channels) from ``.npy`` bytes (see :func:`numpy.load` to read a file)."""
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise RunFolderError(f"intensities .npy: cannot be read ({e})") from e
    if arr.dtype != np.dtype(DTYPE) or arr.ndim != 2:
        raise RunFolderError(
            f"intensities .npy: expected float32 (N, C), got {arr.dtype} {arr.shape}"
        )
    return arr


def encode_index(info: RunInfo, channels: tuple[str, ...]) -> bytes:
    """The JSON index of a run's intensities; same bytes every time for the same run."""
    layout = Layout(info.lane)
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "dtype": DTYPE,
        "shape": ["clusters", len(channels)],
        "channels": list(channels),
        "path": layout.intensities_pattern,
        "lane": info.lane,
        "tiles": list(info.tiles),
        "cycles": info.n_cycles,
    }
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def decode_index(data: bytes) -> dict:
    """The index as a dict (validated: format, version)."""
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise RunFolderError(f"intensities.json: not JSON ({e})") from e
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise RunFolderError(
            f"intensities.json: format {doc.get('format')!r} version "
            f"{doc.get('version')!r} is not {FORMAT!r} version {VERSION}"
        )
    return doc
