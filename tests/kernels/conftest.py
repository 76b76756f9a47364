"""Shared fixture for the kernel tests: the array backend.

``xp`` parametrises a test body over NumPy and CuPy; the CuPy case carries the ``gpu``
marker and skips (with the reason) where CuPy or a CUDA device is missing.
"""

from __future__ import annotations

import numpy as np
import pytest

from kernels.backend import cupy_available


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """The array module under test (numpy, or cupy on a CUDA device)."""
    if request.param == "cupy":
        ok, why = cupy_available()
        if not ok:
            pytest.skip(why)
        import cupy

        return cupy
    return np
