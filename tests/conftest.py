"""Shared fixtures.

``xp`` parametrises a test body over the array backends: numpy always, cupy only where
CuPy imports and sees a CUDA device (the case is marked ``gpu`` and skipped otherwise).
This is CuPy's own ``numpy_cupy_allclose`` idea without twin test files.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest


def _cupy_or_none():
    try:
        cupy = importlib.import_module("cupy")
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        return cupy
    except Exception:  # ImportError, CUDARuntimeError without a driver, ...
        return None


_CUPY = _cupy_or_none()


@pytest.fixture(
    params=[
        pytest.param("numpy", id="numpy"),
        pytest.param("cupy", id="cupy", marks=pytest.mark.gpu),
    ]
)
def xp(request):
    """The array module under test (``numpy`` or ``cupy``)."""
    if request.param == "numpy":
        return np
    if _CUPY is None:
        pytest.skip("no CuPy with a CUDA device on this machine")
    return _CUPY


@pytest.fixture(scope="session")
def shared_cohort(tmp_path_factory):
    """The session's synthetic cohort manifest (:mod:`tests.cohorts`), synthesized once."""
    from tests.cohorts import shared_cohort as make

    return make(tmp_path_factory)


def to_numpy(array):
    """Bring an array from any backend to host memory for comparison."""
    if hasattr(array, "get"):
        return array.get()
    return np.asarray(array)
