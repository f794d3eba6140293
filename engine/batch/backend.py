"""Backend selection. GPU imports are lazy: a CPU run never imports CuPy, cuML or cuCIM.

``gpu`` without a usable GPU is an error (never a silent CPU fallback); ``auto`` picks the GPU
when CuPy imports and sees a device, and says in the log which one it chose.
"""

from __future__ import annotations

import logging

import numpy as np

from engine.errors import ConfigError

log = logging.getLogger("sarco")


def gpu_status() -> tuple[bool, str]:
    """(available, description) of the CUDA device CuPy sees, without raising."""
    try:
        import cupy  # lazy: CuPy, GPU runs only
    except Exception as exc:  # noqa: BLE001 - ImportError, or a CUDA library mismatch at import time
        return False, f"CuPy not importable ({type(exc).__name__}: {exc})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        if count < 1:
            return False, "CuPy sees no CUDA device"
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return True, f"{name} ({count} device{'s' if count > 1 else ''})"
    except Exception as exc:  # noqa: BLE001 - any failure to query the device means no usable device
        return False, f"no CUDA device ({type(exc).__name__}: {exc})"


def resolve_backend(requested: str) -> str:
    """'cpu' | 'gpu' | 'auto' -> 'cpu' | 'gpu'."""
    if requested == "cpu":
        return "cpu"
    available, description = gpu_status()
    if requested == "gpu":
        if not available:
            raise ConfigError("run.backend", f"'gpu' was requested but {description}; use 'cpu' or 'auto'")
        log.info("backend: gpu (%s)", description)
        return "gpu"
    if requested == "auto":
        chosen = "gpu" if available else "cpu"
        log.info("backend auto -> %s (%s)", chosen, description)
        return chosen
    raise ConfigError("run.backend", f"must be cpu, gpu or auto, got {requested!r}")


def to_device(array: np.ndarray, backend: str):
    """Host array -> the backend's array (one host-to-device copy on the GPU)."""
    if backend == "gpu":
        import cupy  # lazy: CuPy, GPU runs only

        return cupy.asarray(array)
    return array


def to_host(array):
    if hasattr(array, "get"):
        return array.get()  # device sync
    return np.asarray(array)
