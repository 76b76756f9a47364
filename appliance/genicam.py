"""A GenICam camera as a frame source, through ``harvesters`` (the optional ``genicam`` extra).

Any camera whose vendor ships a GenTL producer (a ``.cti`` file: GigE Vision, USB3 Vision,
CoaXPress and Camera Link frame grabbers) is driven the same way: load the producer, pick the
device by serial number, set the pixel format, ROI, exposure and frame rate through the
GenICam node map, and pull frames. Each frame is copied out of the GenTL buffer into a 2-D
``uint16`` array before the buffer is queued back to the producer, so the camera never writes
into memory the pipeline still reads.

``harvesters`` and ``genicam`` are imported lazily, inside the functions that need them, so
importing this module costs nothing and works without the extra installed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "GENTL_PATH_ENV",
    "INSTALL_HINT",
    "SUPPORTED_PIXEL_FORMATS",
    "CameraInfo",
    "GenICamCamera",
    "GenICamError",
    "bundled_producer",
    "find_producers",
    "gentl_path_from_env",
    "mono_to_uint16",
]

log = logging.getLogger(__name__)
_HARVESTERS_LOG = logging.getLogger(__name__ + ".harvesters")

#: The GenTL standard's variable: directories (``os.pathsep``-separated) holding ``.cti`` files.
GENTL_PATH_ENV = "GENICAM_GENTL64_PATH"

#: How to get the optional dependencies.
INSTALL_HINT = "pip install -e '.[genicam]'"

#: PFNC monochrome formats delivered unpacked (one pixel per 8- or 16-bit little-endian word),
#: with their bit depth. The values are kept as the camera's ADU counts (not rescaled).
_BITS = {"Mono8": 8, "Mono10": 10, "Mono12": 12, "Mono14": 14, "Mono16": 16}
SUPPORTED_PIXEL_FORMATS: tuple[str, ...] = tuple(_BITS)

_BUNDLED_CTI = "viky.cti"  # the GenTL reference virtual camera shipped in the genicam wheel


class GenICamError(RuntimeError):
    """A GenICam camera problem, with what went wrong and how to fix it."""


@dataclass(frozen=True)
class CameraInfo:
    """What was opened: the device's identity and the image geometry in use."""

    vendor: str
    model: str
    serial: str
    width: int
    height: int
    pixel_format: str
    producer: str  # the .cti the device was found through
    num_buffers: int


# ---------------------------------------------------------------------------------------------
# Finding the GenTL producer


def gentl_path_from_env(environ: Mapping[str, str] | None = None) -> list[Path]:
    """The entries of ``GENICAM_GENTL64_PATH`` (the only place it is read), in order."""
    env = os.environ if environ is None else environ
    raw = env.get(GENTL_PATH_ENV, "")
    return [Path(p) for p in raw.split(os.pathsep) if p.strip()]


def bundled_producer() -> Path | None:
    """The reference virtual camera's producer in the ``genicam`` wheel, or None without it."""
    try:
        import genicam
    except ImportError:
        return None
    path = Path(genicam.__file__).resolve().parent / _BUNDLED_CTI
    return path if path.is_file() else None


def _cti_files_in(entry: Path) -> list[Path]:
    if entry.is_file() and entry.suffix == ".cti":
        return [entry]
    if entry.is_dir():
        return sorted(p for p in entry.iterdir() if p.suffix == ".cti" and p.is_file())
    return []


def find_producers(
    cti: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> list[Path]:
    """The ``.cti`` files to load, by the search order: ``cti`` if given (it must exist),
    else every ``.cti`` in the ``GENICAM_GENTL64_PATH`` directories, else the ``genicam``
    wheel's bundled virtual camera. Raises :class:`GenICamError` when none is found."""
    if cti is not None:
        path = Path(cti).expanduser()
        if not path.is_file():
            raise GenICamError(
                f"GenTL producer {str(path)!r} does not exist or is not a file; pass the path "
                f"of the camera vendor's .cti file (for example /opt/<vendor>/lib/<name>.cti)"
            )
        return [path]
    entries = gentl_path_from_env(environ)
    found = [p for entry in entries for p in _cti_files_in(entry)]
    if found:
        return found
    bundled = bundled_producer()
    if bundled is not None:
        log.warning(
            "no GenTL producer given and none in %s; using the GenICam reference virtual "
            "camera %s (a simulator, not a real camera)", GENTL_PATH_ENV, bundled,
        )
        return [bundled]
    searched = ", ".join(str(e) for e in entries) or "(unset)"
    raise GenICamError(
        f"no GenTL producer (.cti) found: none given, none in {GENTL_PATH_ENV} ({searched}), "
        f"and the genicam wheel's virtual camera is not installed; pass cti=<vendor .cti>, "
        f"set {GENTL_PATH_ENV} to the directory holding it, or {INSTALL_HINT}"
    )


# ---------------------------------------------------------------------------------------------
# Pixel conversion


def mono_to_uint16(data: np.ndarray, width: int, height: int, pixel_format: str) -> np.ndarray:
    """A new C-contiguous ``(height, width)`` uint16 array from a flat unpacked mono buffer.

    ``data`` is the buffer's pixels as 1-D uint8 (Mono8) or uint16 (Mono10..16) words, possibly
    with padding at the end of each row; it is only read, so it may be a view of a GenTL buffer.
    Values are not rescaled: a Mono8 pixel of 200 is 200, a Mono12 pixel keeps 0..4095.
    """
    if pixel_format not in _BITS:
        raise GenICamError(
            f"pixel format {pixel_format!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_PIXEL_FORMATS)} (set the camera to one of them)"
        )
    want = np.uint8 if _BITS[pixel_format] == 8 else np.uint16
    flat = np.asarray(data).reshape(-1)
    if flat.dtype != want:
        if flat.dtype == np.uint8 and want == np.uint16 and flat.size % 2 == 0:
            flat = flat.view("<u2")
        else:
            raise GenICamError(
                f"{pixel_format} buffer has dtype {flat.dtype}, expected {np.dtype(want)}"
            )
    if height <= 0 or width <= 0 or flat.size < width * height or flat.size % height:
        raise GenICamError(
            f"{pixel_format} buffer of {flat.size} pixels does not hold a {width} x {height} image"
        )
    rows = flat.reshape(height, flat.size // height)[:, :width]  # drops row padding, if any
    out = np.empty((height, width), dtype=np.uint16)
    out[...] = rows  # the one copy: widens Mono8, byte order is little-endian per PFNC
    return out


# ---------------------------------------------------------------------------------------------
# The camera


def _import_harvesters():
    """``harvesters.core.Harvester``, imported on first use.

    harvesters calls ``warnings.simplefilter("once")`` when it is imported, which would change
    the whole process's warning filters; the import runs inside ``catch_warnings`` to undo it.
    """
    try:
        with warnings.catch_warnings():
            from harvesters.core import Harvester
    except ImportError as exc:
        raise GenICamError(
            f"the GenICam source needs the optional packages harvesters and genicam "
            f"({exc}); install them with: {INSTALL_HINT}"
        ) from None
    return Harvester


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _attr(obj: Any, name: str, default: str = "?") -> Any:
    """A device-info attribute, or ``default`` where the producer does not provide it."""
    try:
        value = getattr(obj, name)
    except Exception:  # GenTL NotAvailableException and friends
        return default
    return default if value is None else value


def _describe(devices) -> str:
    return "; ".join(
        f"serial {_attr(d, 'serial_number')!r} ({_attr(d, 'vendor')} {_attr(d, 'model')}, "
        f"id {_attr(d, 'id_')})"
        for d in devices
    ) or "none"


class GenICamCamera:
    """One GenICam camera, opened for the duration of a ``with`` block.

    ``cti``: the GenTL producer (see :func:`find_producers` for the search order).
    ``serial``: the device's serial number; None takes the first device found (logged).
    ``pixel_format``: one of :data:`SUPPORTED_PIXEL_FORMATS`. ``width``/``height``: the ROI
    size (None keeps the camera's). ``exposure_us``: sets ``ExposureTime`` (turning
    ``ExposureAuto`` off). ``frame_rate_hz``: sets ``AcquisitionFrameRate`` (enabling it).
    ``num_buffers``: GenTL buffers announced (they absorb bursts while the consumer is busy).
    ``features``: further node-map settings applied last, in order (``{"Gain": 1.0}``).
    """

    def __init__(
        self,
        cti: str | Path | None = None,
        serial: str | None = None,
        pixel_format: str = "Mono16",
        width: int | None = None,
        height: int | None = None,
        exposure_us: float | None = None,
        *,
        frame_rate_hz: float | None = None,
        num_buffers: int | None = None,
        features: Mapping[str, bool | int | float | str] | None = None,
    ) -> None:
        if pixel_format not in _BITS:
            raise GenICamError(
                f"pixel_format={pixel_format!r} is not supported; supported: "
                f"{', '.join(SUPPORTED_PIXEL_FORMATS)}"
            )
        for name, value in (("width", width), ("height", height), ("num_buffers", num_buffers)):
            if value is not None and not (_is_int(value) and value >= 1):
                raise GenICamError(f"{name}={value!r} must be a positive integer or None")
        for name, value in (("exposure_us", exposure_us), ("frame_rate_hz", frame_rate_hz)):
            if value is not None and not _is_positive_number(value):
                raise GenICamError(f"{name}={value!r} must be a positive number or None")
        self.cti = cti
        self.serial = None if serial is None else str(serial)
        self.pixel_format = pixel_format
        self.width = width
        self.height = height
        self.exposure_us = exposure_us
        self.frame_rate_hz = frame_rate_hz
        self.num_buffers = num_buffers
        self.features = dict(features or {})
        self._harvester = None
        self._ia = None
        self._producer: Path | None = None
        self._device = None
        self._acquiring = False
        self._stats = {"frames": 0, "incomplete": 0, "frame_id_gaps": 0}
        self._last_frame_id: int | None = None

    # -- lifetime -------------------------------------------------------------------------

    def __enter__(self) -> GenICamCamera:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        """Load the producer, open the device and apply the settings (prefer ``with``)."""
        if self._ia is not None:
            raise GenICamError("camera is already open")
        Harvester = _import_harvesters()
        producers = find_producers(self.cti)
        for path in producers:
            try:
                ctypes.CDLL(str(path))  # what harvesters' check does, without its logged traceback
            except OSError as exc:
                raise GenICamError(
                    f"GenTL producer {str(path)!r} cannot be loaded ({exc}); it must be the "
                    f"camera vendor's .cti built for this machine ({os.uname().machine})"
                ) from None
        if _HARVESTERS_LOG.level == logging.NOTSET:
            _HARVESTERS_LOG.setLevel(logging.WARNING)  # its INFO is one line per call
        # harvesters otherwise logs through its own stderr handler, outside the appliance's logs.
        harvester = Harvester(logger=_HARVESTERS_LOG)
        self._harvester = harvester
        try:
            for path in producers:
                harvester.add_file(str(path))
            harvester.update()
            device = self._select(harvester.device_info_list, producers)
            try:
                self._ia = harvester.create(device)
            except Exception as exc:
                raise GenICamError(
                    f"cannot open camera serial {_attr(device, 'serial_number')!r} ({exc}); it "
                    f"may be in use by another program (a vendor viewer, another appliance run)"
                ) from None
            self._device = device
            self._producer = self._producer_of(device, producers)
            self._configure()
        except BaseException:
            self.close()
            raise
        info = self.info()
        log.info(
            "opened GenICam camera %s %s serial %s: %d x %d %s via %s",
            info.vendor, info.model, info.serial, info.width, info.height, info.pixel_format,
            info.producer,
        )

    def close(self) -> None:
        """Stop acquisition and release the device and the producer (safe to call twice)."""
        ia, harvester = self._ia, self._harvester
        self._ia = self._harvester = self._device = None
        self._acquiring = False
        try:
            if ia is not None:
                try:
                    if ia.is_acquiring():
                        ia.stop()
                finally:
                    ia.destroy()
        finally:
            if harvester is not None:
                harvester.reset()

    # -- device selection and settings ----------------------------------------------------

    def _select(self, devices, producers):
        where = ", ".join(str(p) for p in producers)
        if not devices:
            raise GenICamError(
                f"no camera found through {where}; check that the camera is powered and "
                f"connected (for GigE Vision: on the NIC's subnet, jumbo frames as the vendor "
                f"says), that this .cti is the camera vendor's producer, and that no other "
                f"program holds the camera"
            )
        if self.serial is None:
            if len(devices) > 1:
                log.info("several cameras found (%s); taking the first (set serial to choose)",
                         _describe(devices))
            return devices[0]
        for device in devices:
            if str(_attr(device, "serial_number", "")) == self.serial:
                return device
        raise GenICamError(
            f"no camera with serial {self.serial!r} through {where}; found: {_describe(devices)}"
        )

    @staticmethod
    def _producer_of(device, producers) -> Path:
        if len(producers) == 1:
            return producers[0]
        # device -> interface -> system -> producer, which knows its .cti path.
        node = device
        for _ in range(3):
            node = _attr(node, "parent", None)
            if node is None:
                return producers[0]
        path = _attr(node, "path_name", None)
        return Path(path) if path else producers[0]

    def _node(self, name: str):
        nm = self._ia.remote_device.node_map
        return getattr(nm, name) if nm.has_node(name) else None

    def _set(self, name: str, value) -> None:
        """Set one feature, or raise a :class:`GenICamError` naming it, the value and the range."""
        from genicam import genapi

        node = self._node(name)
        if node is None:
            raise GenICamError(f"camera has no feature {name!r} (cannot set it to {value!r})")
        try:
            node.value = value
        except genapi.GenericException as exc:
            allowed = ""
            try:
                if hasattr(node, "symbolics"):
                    allowed = f"; allowed: {', '.join(node.symbolics)}"
                elif hasattr(node, "min") and hasattr(node, "max"):
                    step = getattr(node, "inc", None)
                    inc = f" in steps of {step}" if step not in (None, 1) else ""
                    allowed = f"; allowed: {node.min} to {node.max}{inc}"
            except genapi.GenericException:
                pass
            reason = str(exc).split(" : ")[0].strip()
            raise GenICamError(
                f"cannot set camera feature {name}={value!r}: {reason}{allowed}"
            ) from None

    def _configure(self) -> None:
        node = self._node("PixelFormat")
        if node is None:
            raise GenICamError(
                "camera has no PixelFormat feature; it is not a GenICam image source"
            )
        offered = tuple(node.symbolics)
        if self.pixel_format not in offered:
            usable = [pf for pf in offered if pf in _BITS]
            raise GenICamError(
                f"camera does not offer pixel format {self.pixel_format!r}; it offers "
                f"{', '.join(offered)}; the appliance supports {', '.join(SUPPORTED_PIXEL_FORMATS)}"
                + (f"; choose one of {', '.join(usable)}" if usable else "; no format in common")
            )
        if node.value != self.pixel_format:
            self._set("PixelFormat", self.pixel_format)
        if self.width is not None:
            self._set("Width", self.width)
        if self.height is not None:
            self._set("Height", self.height)
        if self.exposure_us is not None:
            auto = self._node("ExposureAuto")
            if auto is not None and "Off" in auto.symbolics and auto.value != "Off":
                self._set("ExposureAuto", "Off")
            name = "ExposureTime" if self._node("ExposureTime") is not None else "ExposureTimeAbs"
            if self._node(name) is None:
                raise GenICamError(
                    "camera has no ExposureTime (or ExposureTimeAbs) feature; leave exposure_us "
                    "unset or set the vendor's exposure feature through features"
                )
            self._set(name, float(self.exposure_us))
        if self.frame_rate_hz is not None:
            enable = self._node("AcquisitionFrameRateEnable")
            if enable is not None:
                self._set("AcquisitionFrameRateEnable", True)
            name = ("AcquisitionFrameRate" if self._node("AcquisitionFrameRate") is not None
                    else "AcquisitionFrameRateAbs")
            self._set(name, float(self.frame_rate_hz))
        for name, value in self.features.items():
            self._set(name, value)
        if self.num_buffers is not None:
            try:
                self._ia.num_buffers = self.num_buffers
            except ValueError as exc:
                raise GenICamError(f"num_buffers={self.num_buffers}: {exc}") from None

    # -- queries ----------------------------------------------------------------------------

    def _require_open(self) -> None:
        if self._ia is None:
            raise GenICamError("camera is not open; use it as `with GenICamCamera(...) as cam:`")

    def info(self) -> CameraInfo:
        """The open camera's identity and current image geometry."""
        self._require_open()
        nm = self._ia.remote_device.node_map
        return CameraInfo(
            vendor=str(_attr(self._device, "vendor")),
            model=str(_attr(self._device, "model")),
            serial=str(_attr(self._device, "serial_number")),
            width=int(nm.Width.value),
            height=int(nm.Height.value),
            pixel_format=str(nm.PixelFormat.value),
            producer=str(self._producer),
            num_buffers=int(self._ia.num_buffers),
        )

    def stats(self) -> dict[str, int | None]:
        """Counters since open: frames delivered, incomplete buffers the producer discarded,
        camera frames missing by frame id, and frames the producer lost for want of a free
        buffer (``underrun``; None where the producer does not report it)."""
        out: dict[str, int | None] = dict(self._stats)
        out["underrun"] = None
        if self._ia is not None:
            try:
                out["underrun"] = int(self._ia.data_streams[0].module.num_underrun)
            except Exception:  # not open yet, or not reported by this producer
                pass
        return out

    # -- acquisition ------------------------------------------------------------------------

    def frames(self, n: int | None = None, timeout_s: float = 5.0) -> Iterator[np.ndarray]:
        """Acquire ``n`` frames (None: until the caller stops iterating) as new 2-D uint16
        arrays. Acquisition starts at the first ``next()`` and stops when the generator ends
        or is closed. Raises :class:`GenICamError` when no frame arrives within ``timeout_s``."""
        self._require_open()
        if n is not None and not (_is_int(n) and n >= 0):
            raise GenICamError(f"n={n!r} must be a non-negative integer or None")
        if not _is_positive_number(timeout_s):
            raise GenICamError(f"timeout_s={timeout_s!r} must be a positive number of seconds")
        if self._acquiring:
            raise GenICamError(
                "camera is already acquiring; finish or close the other frames() first"
            )
        return self._acquire(n, float(timeout_s))

    def _acquire(self, n: int | None, timeout_s: float) -> Iterator[np.ndarray]:
        from genicam import gentl
        from harvesters.core import Callback

        stats = self._stats

        class _CountIncomplete(Callback):  # harvesters calls emit() only on Callback instances
            def emit(self, context=None) -> None:
                stats["incomplete"] += 1  # harvesters discards the buffer and fetches again

        ia = self._ia
        self._acquiring = True
        self._last_frame_id = None  # frame ids may restart with each acquisition
        ia.add_callback(ia.Events.INCOMPLETE_BUFFER, _CountIncomplete())
        ia.start()
        try:
            count = 0
            while n is None or count < n:
                try:
                    buffer = ia.fetch(timeout=timeout_s)
                except gentl.TimeoutException:
                    raise GenICamError(
                        f"no frame from camera serial {_attr(self._device, 'serial_number')!r} "
                        f"within {timeout_s:g} s; check that it is free-running (TriggerMode Off) "
                        f"or being triggered, that the exposure and frame period are shorter "
                        f"than the timeout, and the link (cable, GigE packet size and bandwidth)"
                    ) from None
                with buffer:  # queued back to the producer when the block ends
                    frame_id = _attr(buffer, "frame_id", None)
                    component = buffer.payload.components[0]
                    image = mono_to_uint16(
                        component.data, component.width, component.height, component.data_format
                    )
                self._count(frame_id)
                count += 1
                yield image
        finally:
            self._acquiring = False
            if self._ia is ia and ia.is_acquiring():  # not already released by close()
                ia.stop()

    def _count(self, frame_id) -> None:
        self._stats["frames"] += 1
        if isinstance(frame_id, int):
            last = self._last_frame_id
            if last is not None and frame_id > last + 1:
                self._stats["frame_id_gaps"] += frame_id - last - 1
            self._last_frame_id = frame_id
