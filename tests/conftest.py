"""Shared fixtures.

``xp`` parametrises a test body over the array backends: numpy always, and a ``gpu``-marked
cupy case. Where CuPy imports and sees a CUDA device, the cupy case is real CuPy. Elsewhere it
is the host execution (tests/cudahost): the shipped ``.cu`` kernels compiled with g++ behind a
numpy-backed stand-in for CuPy, installed as ``sys.modules['cupy']`` for that one test only
(other tests in the process still see no cupy). Without g++ the cupy case skips, saying why.
This is CuPy's own ``numpy_cupy_allclose`` idea without twin test files.
"""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest


def _cupy_or_none():
    try:
        cupy = importlib.import_module("cupy")
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        return cupy
    except Exception:  # noqa: BLE001 - ImportError, CUDARuntimeError without a driver, ...
        return None


_CUPY = _cupy_or_none()


@pytest.fixture(
    params=[
        pytest.param("numpy", id="numpy"),
        pytest.param("cupy", id="cupy", marks=pytest.mark.gpu),
    ]
)
def xp(request, monkeypatch):
    """The array module under test (``numpy``, ``cupy``, or the host-execution stand-in)."""
    if request.param == "numpy":
        yield np
        return
    if _CUPY is not None:
        yield _CUPY
        return
    from tests.cudahost import build, fakecupy

    try:
        build.compiler()
    except build.HostBuildUnavailable as error:
        pytest.skip(f"no CuPy with a CUDA device, and no host execution: {error}")
    # monkeypatch removes sys.modules['cupy'] again after this test. The kernels' caches of
    # compiled modules and device attributes are cleared on the way in and out, so nothing
    # made for the stand-in outlives the test.
    monkeypatch.setitem(sys.modules, "cupy", fakecupy.make_module())
    _clear_kernel_caches()
    yield sys.modules["cupy"]
    _clear_kernel_caches()


def _clear_kernel_caches():
    cuda = sys.modules.get("kernels._cuda")
    if cuda is not None:
        cuda.raw_module.cache_clear()
        cuda._device_attributes.cache_clear()


@pytest.fixture(scope="session")
def shared_cohort(tmp_path_factory):
    """The session's synthetic cohort manifest (:mod:`tests.cohorts`), synthesized once."""
    from tests.cohorts import shared_cohort as make

    return make(tmp_path_factory)


@pytest.fixture(scope="session")
def pacs(tmp_path_factory):
    """A real PACS for the session (:mod:`tests.pacs`): Orthanc on loopback ports, else pynetdicom's qrscp."""
    from tests.pacs import start_pacs

    server = start_pacs(tmp_path_factory.mktemp("pacs"))
    yield server
    server.stop()


def to_numpy(array):
    """Bring an array from any backend to host memory for comparison."""
    if hasattr(array, "get"):
        return array.get()
    return np.asarray(array)
