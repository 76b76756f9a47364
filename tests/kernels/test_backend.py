"""Backend selection: explicit names, APPLIANCE_BACKEND, automatic choice, clear errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.fft
import scipy.ndimage

from kernels.backend import (
    BACKEND_ENV,
    BackendUnavailableError,
    available_backends,
    cupy_available,
    get_array_module,
    get_backend,
    get_fft,
    get_ndimage,
    to_host,
)

_CUPY_OK, _CUPY_WHY = cupy_available()


def test_numpy_backend_has_scipy_modules(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    b = get_backend("numpy")
    assert b.name == "numpy" and b.xp is np and not b.is_gpu
    assert b.ndimage is scipy.ndimage and b.fft is scipy.fft
    assert b.fft_kwargs["workers"] >= 1
    assert get_ndimage(np) is scipy.ndimage
    assert get_fft(np)[0] is scipy.fft
    b.synchronize()  # a no-op on the host, must not fail


def test_array_module_of_host_arrays():
    assert get_array_module(np.zeros(3)) is np
    assert get_array_module(np.zeros(3), np.ones(2)) is np
    a = np.arange(4)
    assert to_host(a) is a


def test_env_forces_numpy(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "numpy")
    assert get_backend().name == "numpy"
    monkeypatch.setenv(BACKEND_ENV, " NumPy ")
    assert get_backend().name == "numpy"


def test_env_bad_value_names_the_variable_and_choices(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "tpu")
    with pytest.raises(ValueError) as err:
        get_backend()
    msg = str(err.value)
    assert BACKEND_ENV in msg and "'tpu'" in msg and "numpy" in msg and "cupy" in msg


def test_bad_name_argument():
    with pytest.raises(ValueError, match="allowed values"):
        get_backend("jax")


@pytest.mark.skipif(_CUPY_OK, reason="CuPy with a device is present here")
def test_forcing_cupy_without_it_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "cupy")
    with pytest.raises(BackendUnavailableError) as err:
        get_backend()
    msg = str(err.value)
    assert BACKEND_ENV in msg  # says where the request came from
    assert "cupy-cuda12x" in msg and f"{BACKEND_ENV}=numpy" in msg  # and how to fix it
    with pytest.raises(BackendUnavailableError):
        get_backend("cupy")


@pytest.mark.skipif(_CUPY_OK, reason="CuPy with a device is present here")
def test_automatic_choice_falls_back_to_numpy(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    assert get_backend().name == "numpy"
    monkeypatch.setenv(BACKEND_ENV, "auto")
    assert get_backend().name == "numpy"
    assert available_backends() == ["numpy"]


@pytest.mark.gpu
def test_cupy_backend_on_a_device(monkeypatch):
    if not _CUPY_OK:
        pytest.skip(_CUPY_WHY)
    import cupy
    import cupyx.scipy.fft
    import cupyx.scipy.ndimage

    monkeypatch.delenv(BACKEND_ENV, raising=False)
    b = get_backend()  # automatic choice prefers the device
    assert b.name == "cupy" and b.is_gpu and b.xp is cupy
    assert b.ndimage is cupyx.scipy.ndimage and b.fft is cupyx.scipy.fft
    a = cupy.arange(3)
    assert get_array_module(a) is cupy
    assert get_array_module(np.zeros(2)) is np
    assert isinstance(to_host(a), np.ndarray)
    monkeypatch.setenv(BACKEND_ENV, "numpy")
    assert get_backend().name == "numpy"


def test_importing_kernels_has_no_device_side_effects():
    # importing the package must not import CuPy (that would initialise CUDA state)
    code = "import sys, kernels, kernels.chain, kernels.backend; print('cupy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
