"""Array-backend selection: NumPy + SciPy on the host, CuPy + cupyx.scipy on a CUDA device.

Every kernel asks ``get_array_module(x)`` for the module of the array it was given, so the
caller decides where data lives and no kernel copies between host and device on its own.
``get_backend()`` is for code that *creates* arrays (the chain, the benchmark): it honours
``APPLIANCE_BACKEND=numpy|cupy`` (read here and nowhere else), and otherwise picks CuPy when
it imports and a device is present. Nothing here touches a device at import time.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "BACKEND_ENV",
    "available_backends",
    "cupy_available",
    "fft_workers",
    "get_array_module",
    "get_backend",
    "get_fft",
    "get_ndimage",
    "to_host",
]

#: the one environment variable that forces a backend
BACKEND_ENV = "APPLIANCE_BACKEND"
_NAMES = ("numpy", "cupy")


class BackendUnavailableError(RuntimeError):
    """A backend was asked for (by name or by ``APPLIANCE_BACKEND``) but cannot run here."""


@dataclass(frozen=True)
class Backend:
    """An array module with its matching ndimage and FFT modules.

    ``fft_kwargs`` are extra keyword arguments for the FFT calls (``workers`` for SciPy's
    pocketfft, nothing for CuPy's cuFFT).
    """

    name: str
    xp: ModuleType
    ndimage: ModuleType
    fft: ModuleType
    fft_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def is_gpu(self) -> bool:
        return self.name == "cupy"

    def asarray(self, a: Any, dtype: Any = None) -> Any:
        """Move ``a`` onto this backend (an explicit, caller-requested transfer)."""
        return self.xp.asarray(a, dtype=dtype)

    def synchronize(self) -> None:
        """Wait for queued device work (no-op on the host); benchmarks call this before timing."""
        if self.is_gpu:
            self.xp.cuda.get_current_stream().synchronize()


def fft_workers() -> int:
    """Threads for SciPy's FFT: the CPUs this process may run on (a pinned stage gets its own)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def _cupy_or_none() -> ModuleType | None:
    """CuPy if it is already imported; never imports it (that would initialise CUDA state)."""
    return sys.modules.get("cupy")


def get_array_module(*arrays: Any) -> ModuleType:
    """The array module (numpy or cupy) of the given arrays, like ``cupy.get_array_module``."""
    cp = _cupy_or_none()
    if cp is not None:
        return cp.get_array_module(*arrays)
    import numpy

    return numpy


def _is_cupy_module(xp: ModuleType) -> bool:
    return xp.__name__.split(".")[0] == "cupy"


def get_ndimage(xp: ModuleType) -> ModuleType:
    """``scipy.ndimage`` for NumPy, ``cupyx.scipy.ndimage`` for CuPy."""
    if _is_cupy_module(xp):
        import cupyx.scipy.ndimage as ndi

        return ndi
    import scipy.ndimage as ndi

    return ndi


def get_fft(xp: ModuleType) -> tuple[ModuleType, dict[str, Any]]:
    """The FFT module for ``xp`` and the keyword arguments to pass to its calls.

    SciPy's ``scipy.fft`` (pocketfft) keeps float32 in single precision and runs on several
    threads with ``workers``; CuPy uses ``cupyx.scipy.fft`` (cuFFT, plan cache).
    """
    if _is_cupy_module(xp):
        import cupyx.scipy.fft as cfft

        return cfft, {}
    import scipy.fft as sfft

    return sfft, {"workers": fft_workers()}


def cupy_available() -> tuple[bool, str]:
    """Whether CuPy imports and sees a CUDA device, and if not, why (for the error message)."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install raising at import
        return False, f"CuPy does not import ({type(exc).__name__}: {exc})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return False, f"CuPy imports but finds no CUDA device ({type(exc).__name__}: {exc})"
    if n < 1:
        return False, "CuPy imports but finds no CUDA device"
    return True, f"{n} CUDA device(s)"


def available_backends() -> list[str]:
    """Backends that can run here, ``numpy`` first."""
    names = ["numpy"]
    if cupy_available()[0]:
        names.append("cupy")
    return names


def _requested_name() -> str | None:
    """The backend named in ``APPLIANCE_BACKEND`` (the only place it is read), or None."""
    raw = os.environ.get(BACKEND_ENV, "").strip().lower()
    if not raw or raw == "auto":
        return None
    if raw not in _NAMES:
        raise ValueError(
            f"{BACKEND_ENV}={os.environ[BACKEND_ENV]!r} is not a backend; "
            f"allowed values: {', '.join(_NAMES)} (or unset/auto to choose automatically)"
        )
    return raw


def _make(name: str) -> Backend:
    if name == "numpy":
        import numpy

        fft, kw = get_fft(numpy)
        return Backend("numpy", numpy, get_ndimage(numpy), fft, kw)
    import cupy

    fft, kw = get_fft(cupy)
    return Backend("cupy", cupy, get_ndimage(cupy), fft, kw)


def get_backend(name: str | None = None) -> Backend:
    """Choose the backend: ``name``, else ``APPLIANCE_BACKEND``, else CuPy if usable, else NumPy.

    Asking for ``cupy`` (by argument or environment) where it cannot run raises
    :class:`BackendUnavailableError` that says why and how to fix it; automatic selection
    falls back to NumPy silently.
    """
    source = "argument"
    if name is None:
        name = _requested_name()
        source = f"{BACKEND_ENV}"
    else:
        name = name.strip().lower()
        if name == "auto":
            name = None
        elif name not in _NAMES:
            raise ValueError(
                f"backend {name!r} is not known; allowed values: {', '.join(_NAMES)}, auto"
            )
    if name is None:
        ok, _ = cupy_available()
        return _make("cupy" if ok else "numpy")
    if name == "cupy":
        ok, why = cupy_available()
        if not ok:
            raise BackendUnavailableError(
                f"the cupy backend was requested ({source}) but cannot run: {why}. "
                f"Fix: install CuPy for your CUDA version (pip install 'flowcell-appliance[gpu]' "
                f"or cupy-cuda12x) on a machine with an NVIDIA GPU, or set {BACKEND_ENV}=numpy."
            )
    return _make(name)


def to_host(a: Any) -> Any:
    """An explicit device-to-host copy (``cupy.asnumpy``); NumPy arrays pass through."""
    xp = get_array_module(a)
    if _is_cupy_module(xp):
        return xp.asnumpy(a)
    import numpy

    return numpy.asarray(a)
