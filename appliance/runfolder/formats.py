"""Encoders and decoders for the Illumina-style files: ``.bcl``, ``.filter``, ``.locs``, RunInfo.xml.

Byte layouts (all little-endian; checked against picard's ``IlluminaBasecallsToFastq``):

- ``.bcl``: uint32 cluster count, then one byte per cluster: bits 0-1 the base
  (A, C, G, T = 0..3), bits 2-7 the Phred quality (clamped to 2..63); the byte 0 is a
  no-call (N). Size is 4 + count.
- ``.filter``: uint32 0, uint32 3 (version), uint32 count, then one byte per cluster
  (1 = passed the filter, 0 = not).
- ``.locs``: int32 1, float32 1.0, uint32 count, then float32 x, y per cluster.

Decoders validate the header and size and raise :class:`RunFolderError` naming the problem.
Encoders validate their arrays and raise :class:`ValueError` naming the argument.
"""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET

import numpy as np

from appliance.runfolder.errors import RunFolderError
from appliance.runfolder.runinfo import RunInfo

NO_CALL = 4
"""The base code for a no-call (N) in the arrays the encoders take and decoders return."""
MIN_QUAL, MAX_QUAL = 2, 63
BASES = "ACGTN"

_BCL_HEAD = struct.Struct("<I")
_FILTER_HEAD = struct.Struct("<III")
_FILTER_VERSION = 3
_LOCS_HEAD = struct.Struct("<ifI")


def _int_vector(name: str, a, n: int | None = None) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(
            f"{name}: expected a 1-D array (one value per cluster), got shape {arr.shape}"
        )
    if arr.dtype.kind not in "ui":
        raise ValueError(f"{name}: expected an integer array (uint8), got dtype {arr.dtype}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name}: has {arr.shape[0]} clusters, expected {n} (as in bases)")
    return arr


# -- .bcl -------------------------------------------------------------------------------------


def encode_bcl(bases, quals) -> bytes:
    """``.bcl`` bytes for one tile and cycle.

    ``bases``: uint8 (N,), 0..3 = A, C, G, T, 4 = no-call; ``quals``: uint8 (N,) Phred
    (clamped to 2..63; ignored for no-calls, which are the byte 0).
    """
    b = _int_vector("bases", bases)
    q = _int_vector("quals", quals, b.shape[0])
    if b.size and (b.min() < 0 or b.max() > NO_CALL):
        bad = b[(b < 0) | (b > NO_CALL)][0]
        raise ValueError(
            f"bases: value {bad} is not a base code; allowed 0..3 (A,C,G,T) and 4 (no-call)"
        )
    qc = np.clip(q, MIN_QUAL, MAX_QUAL).astype(np.uint8)
    payload = (qc << 2) | (b.astype(np.uint8) & 3)
    payload[b == NO_CALL] = 0
    return _BCL_HEAD.pack(b.shape[0]) + payload.tobytes()


def decode_bcl(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(bases, quals) from ``.bcl`` bytes; a no-call decodes as base 4 with quality 0."""
    if len(data) < _BCL_HEAD.size:
        raise RunFolderError(f".bcl: {len(data)} bytes is shorter than its 4-byte header")
    (n,) = _BCL_HEAD.unpack_from(data)
    if len(data) != 4 + n:
        raise RunFolderError(
            f".bcl: header says {n} clusters, so {4 + n} bytes, but the file has {len(data)}"
        )
    raw = np.frombuffer(data, dtype=np.uint8, offset=4)
    bases = (raw & 3).astype(np.uint8)
    quals = (raw >> 2).astype(np.uint8)
    bases[raw == 0] = NO_CALL
    return bases, quals


# -- .filter ----------------------------------------------------------------------------------


def encode_filter(passed) -> bytes:
    """``.filter`` bytes: one pass-filter flag per cluster (bool (N,))."""
    p = np.asarray(passed)
    if p.ndim != 1:
        raise ValueError(
            f"passed: expected a 1-D array (one flag per cluster), got shape {p.shape}"
        )
    if p.dtype != np.bool_:
        if p.dtype.kind not in "ui" or (p.size and not np.isin(p, (0, 1)).all()):
            raise ValueError(
                f"passed: expected a bool array (or 0/1 integers), got dtype {p.dtype}"
            )
    return _FILTER_HEAD.pack(0, _FILTER_VERSION, p.shape[0]) + p.astype(np.uint8).tobytes()


def decode_filter(data: bytes) -> np.ndarray:
    """bool (N,) pass-filter flags from ``.filter`` bytes."""
    if len(data) < _FILTER_HEAD.size:
        raise RunFolderError(f".filter: {len(data)} bytes is shorter than its 12-byte header")
    zero, version, n = _FILTER_HEAD.unpack_from(data)
    if zero != 0 or version != _FILTER_VERSION:
        raise RunFolderError(
            f".filter: header ({zero}, {version}) is not (0, 3); not a version-3 filter file"
        )
    if len(data) != 12 + n:
        raise RunFolderError(
            f".filter: header says {n} clusters, so {12 + n} bytes, but the file has {len(data)}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=12) != 0


# -- .locs ------------------------------------------------------------------------------------


def encode_locs(xy) -> bytes:
    """``.locs`` bytes: cluster positions, float32 (N, 2) of (x, y) in pixels."""
    a = np.asarray(xy)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"xy: expected shape (N, 2) of (x, y) positions, got {a.shape}")
    if a.dtype.kind not in "fiu":
        raise ValueError(f"xy: expected float32 positions, got dtype {a.dtype}")
    return _LOCS_HEAD.pack(1, 1.0, a.shape[0]) + np.ascontiguousarray(a, dtype="<f4").tobytes()


def decode_locs(data: bytes) -> np.ndarray:
    """float32 (N, 2) cluster positions from ``.locs`` bytes."""
    if len(data) < _LOCS_HEAD.size:
        raise RunFolderError(f".locs: {len(data)} bytes is shorter than its 12-byte header")
    one, onef, n = _LOCS_HEAD.unpack_from(data)
    if one != 1 or onef != 1.0:
        raise RunFolderError(f".locs: header ({one}, {onef}) is not (1, 1.0); not a .locs file")
    if len(data) != 12 + 8 * n:
        raise RunFolderError(
            f".locs: header says {n} clusters, so {12 + 8 * n} bytes, but the file has {len(data)}"
        )
    return np.frombuffer(data, dtype="<f4", offset=12).reshape(n, 2).astype(np.float32)


def cluster_count(kind: str, head: bytes) -> int:
    """The cluster count in the first 12 bytes of a ``bcl``, ``filter`` or ``locs`` file."""
    if kind == "bcl":
        return _BCL_HEAD.unpack_from(head)[0]
    if kind == "filter":
        return _FILTER_HEAD.unpack_from(head)[2]
    if kind == "locs":
        return _LOCS_HEAD.unpack_from(head)[2]
    raise ValueError(f"kind={kind!r}: allowed 'bcl', 'filter', 'locs'")


# -- RunInfo.xml ------------------------------------------------------------------------------


def _layout_counts(tiles: tuple[int, ...]) -> tuple[int, int, int, str]:
    """(SurfaceCount, SwathCount, TileCount, naming) for FlowcellLayout.

    Four-digit tiles encode surface, swath and tile (1101 = surface 1, swath 1, tile 01);
    anything else is described as one surface and swath holding all tiles.
    """
    if all(
        1000 <= t <= 9999 and t // 1000 >= 1 and (t // 100) % 10 >= 1 and t % 100 >= 1
        for t in tiles
    ):
        return (
            max(t // 1000 for t in tiles),
            max((t // 100) % 10 for t in tiles),
            max(t % 100 for t in tiles),
            "FourDigit",
        )
    return 1, 1, len(tiles), ""


def encode_runinfo(info: RunInfo, channels: tuple[str, ...] = ()) -> bytes:
    """RunInfo.xml (version 2, as bcl-convert and InterOp read it); same bytes every time.
    ``channels`` (the imaging channels' names) adds ``<ImageChannels>``, as newer RunInfo.xml
    files have it: InterOp needs the names to read the run's metrics."""
    root = ET.Element("RunInfo", Version="2")
    run = ET.SubElement(root, "Run", Id=info.run_id, Number=str(info.number))
    ET.SubElement(run, "Flowcell").text = info.flowcell
    ET.SubElement(run, "Instrument").text = info.instrument
    if info.date:
        ET.SubElement(run, "Date").text = info.date
    reads = ET.SubElement(run, "Reads")
    for i, (cycles, is_index) in enumerate(info.reads, 1):
        ET.SubElement(
            reads,
            "Read",
            Number=str(i),
            NumCycles=str(cycles),
            IsIndexedRead="Y" if is_index else "N",
        )
    surfaces, swaths, tile_count, naming = _layout_counts(info.tiles)
    layout = ET.SubElement(
        run,
        "FlowcellLayout",
        LaneCount=str(info.lane),
        SurfaceCount=str(surfaces),
        SwathCount=str(swaths),
        TileCount=str(tile_count),
    )
    tileset = (
        ET.SubElement(layout, "TileSet", TileNamingConvention=naming)
        if naming
        else ET.SubElement(layout, "TileSet")
    )
    tiles = ET.SubElement(tileset, "Tiles")
    for t in info.tiles:
        ET.SubElement(tiles, "Tile").text = f"{info.lane}_{t}"
    if channels:
        names = ET.SubElement(run, "ImageChannels")
        for ch in channels:
            ET.SubElement(names, "Name").text = ch
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def decode_runinfo(data: bytes) -> RunInfo:
    """A :class:`RunInfo` from RunInfo.xml bytes (as :func:`encode_runinfo` writes them)."""
    try:
        root = ET.fromstring(data)
        run = root.find("Run")
        if root.tag != "RunInfo" or run is None:
            raise RunFolderError("RunInfo.xml: no <RunInfo><Run> element")
        reads = tuple(
            (int(r.get("NumCycles")), r.get("IsIndexedRead", "N").upper() == "Y")
            for r in sorted(run.iterfind("Reads/Read"), key=lambda r: int(r.get("Number")))
        )
        entries = [t.text.strip() for t in run.iterfind("FlowcellLayout/TileSet/Tiles/Tile")]
        lanes = {int(e.split("_")[0]) for e in entries}
        if len(lanes) != 1:
            raise RunFolderError(
                f"RunInfo.xml: tiles {entries} name {len(lanes)} lanes; expected exactly one"
            )
        date = run.findtext("Date", "")
        return RunInfo(
            run_id=run.get("Id"),
            instrument=run.findtext("Instrument", ""),
            flowcell=run.findtext("Flowcell", ""),
            lane=lanes.pop(),
            tiles=tuple(int(e.split("_")[1]) for e in entries),
            n_cycles=sum(c for c, _ in reads),
            reads=reads,
            number=int(run.get("Number", "1")),
            date=date.strip(),
        )
    except RunFolderError:
        raise
    except (ET.ParseError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise RunFolderError(f"RunInfo.xml: cannot be read as a run description ({e})") from e


# -- RunParameters.xml ------------------------------------------------------------------------


def encode_run_parameters(
    info: RunInfo,
    *,
    tile_px: tuple[int, int],
    pixel_um: float,
    channels: tuple[str, ...] = ("A", "C", "G", "T"),
    application: str = "Appliance",
    version: str = "",
) -> bytes:
    """RunParameters.xml beside RunInfo.xml, in the common subset of Illumina's forms that
    InterOp and lab tools read: ``Setup/ApplicationName`` (InterOp matches the instrument by
    it; ours names no Illumina instrument), the run's ids, the planned reads, and our imaging
    geometry (``ImageWidth``/``ImageHeight`` in pixels, ``PixelSizeUm``: the tile area the
    InterOp cluster densities use). No clock is read: the same run gives the same bytes."""
    root = ET.Element("RunParameters")
    ET.SubElement(root, "RunParametersVersion").text = "Appliance_1"
    setup = ET.SubElement(root, "Setup")
    ET.SubElement(setup, "ApplicationName").text = application
    ET.SubElement(setup, "ApplicationVersion").text = version or "0"
    for i, (cycles, _ix) in enumerate(info.reads, 1):
        ET.SubElement(setup, f"Read{i}").text = str(cycles)
    ET.SubElement(root, "RunId").text = info.run_id
    ET.SubElement(root, "RunNumber").text = str(info.number)
    ET.SubElement(root, "InstrumentName").text = info.instrument
    ET.SubElement(root, "FlowCellSerial").text = info.flowcell
    if info.date:
        ET.SubElement(root, "RunStartDate").text = info.date
    planned = ET.SubElement(root, "PlannedReads")
    for i, (cycles, is_index) in enumerate(info.reads, 1):
        ET.SubElement(planned, "Read", ReadName=f"{'Index' if is_index else 'Read'}{i}", Cycles=str(cycles))
    imaging = ET.SubElement(root, "ImagingParameters")
    ET.SubElement(imaging, "ImageWidth").text = str(int(tile_px[0]))
    ET.SubElement(imaging, "ImageHeight").text = str(int(tile_px[1]))
    ET.SubElement(imaging, "PixelSizeUm").text = repr(float(pixel_um))
    names = ET.SubElement(imaging, "ChannelNames")
    for ch in channels:
        ET.SubElement(names, "Name").text = ch
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def decode_image_channels(data: bytes) -> tuple[str, ...]:
    """The channel names of RunInfo.xml's ``<ImageChannels>`` (``()`` when it has none)."""
    try:
        run = ET.fromstring(data).find("Run")
    except ET.ParseError as e:
        raise RunFolderError(f"RunInfo.xml: cannot be read ({e})") from e
    if run is None:
        raise RunFolderError("RunInfo.xml: no <RunInfo><Run> element")
    return tuple((n.text or "").strip() for n in run.iterfind("ImageChannels/Name"))


def decode_run_parameters(data: bytes) -> dict:
    """What :func:`encode_run_parameters` recorded, as its keyword arguments: ``tile_px``,
    ``pixel_um``, ``channels``, ``application`` and ``version`` (RunFolderError when the
    imaging geometry is missing or not numbers)."""
    try:
        root = ET.fromstring(data)
        img = root.find("ImagingParameters")
        if root.tag != "RunParameters" or img is None:
            raise RunFolderError("RunParameters.xml: no <RunParameters><ImagingParameters> element")
        version = root.findtext("Setup/ApplicationVersion", "").strip()
        return {
            "tile_px": (int(img.findtext("ImageWidth")), int(img.findtext("ImageHeight"))),
            "pixel_um": float(img.findtext("PixelSizeUm")),
            "channels": tuple((n.text or "").strip() for n in img.iterfind("ChannelNames/Name")),
            "application": root.findtext("Setup/ApplicationName", "Appliance").strip(),
            "version": "" if version == "0" else version,
        }
    except RunFolderError:
        raise
    except (ET.ParseError, TypeError, ValueError) as e:
        raise RunFolderError(f"RunParameters.xml: cannot be read as the run's imaging parameters ({e})") from e
