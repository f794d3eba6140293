"""Which array module an argument list lives in.

Every kernel follows its input: numpy in, numpy out; cupy in, cupy out. Kernels never move
data between host and device on their own; the engine decides where arrays live.

CuPy's ``cupy.get_array_module`` silently answers ``numpy`` for anything it does not know
(lists, a torch tensor, a dask array), which turns a wiring bug into a slow host fallback or a
silent device-to-host copy. :func:`array_namespace` refuses instead.
"""

from __future__ import annotations

import importlib
import numbers
import sys
from types import ModuleType

import numpy

__all__ = ["array_namespace", "is_cupy_namespace"]


def _is_scalar(obj) -> bool:
    # Host scalars (Python or numpy) and None ride along with arrays of either backend:
    # a threshold given as np.float64 must not pin a cupy call to numpy.
    return obj is None or isinstance(obj, (numbers.Number, numpy.generic))


def _cupy_if_cupy_array(obj) -> ModuleType | None:
    # Decide from the type's module first so that a CPU-only process never imports cupy.
    module_name = type(obj).__module__ or ""
    if not module_name.startswith("cupy"):
        return None
    cupy = sys.modules.get("cupy")
    if cupy is None:  # a cupy-looking type without cupy imported: import to check for real
        cupy = importlib.import_module("cupy")
    return cupy if isinstance(obj, cupy.ndarray) else None


def array_namespace(*arrays) -> ModuleType:
    """Return the array module (``numpy`` or ``cupy``) that all array arguments share.

    Parameters
    ----------
    *arrays : numpy.ndarray, cupy.ndarray, Python or numpy scalars, or None
        Scalars and None are skipped; every remaining argument must be an array of the same
        backend.

    Returns
    -------
    module
        ``numpy`` or ``cupy``. ``numpy`` when no argument is an array (host scalars only).

    Raises
    ------
    TypeError
        If an argument is neither a scalar nor a numpy/cupy array (for example a list), or if
        numpy and cupy arrays are mixed. The message names the offending types.

    Notes
    -----
    Unlike ``cupy.get_array_module`` this never falls back to numpy for an unknown type.
    CuPy is imported only when a CuPy array is actually passed.
    """
    found: dict[str, ModuleType] = {}
    type_names: dict[str, str] = {}
    for obj in arrays:
        if _is_scalar(obj):
            continue
        if isinstance(obj, numpy.ndarray):
            found["numpy"] = numpy
            type_names["numpy"] = type(obj).__qualname__
            continue
        cupy = _cupy_if_cupy_array(obj)
        if cupy is not None:
            found["cupy"] = cupy
            type_names["cupy"] = f"cupy.{type(obj).__qualname__}"
            continue
        raise TypeError(
            f"expected a numpy.ndarray or cupy.ndarray, got {type(obj).__module__}."
            f"{type(obj).__qualname__}; convert it with numpy.asarray or cupy.asarray first"
        )
    if len(found) > 1:
        raise TypeError(
            "mixed array types: "
            + " and ".join(f"numpy.{type_names['numpy']}" if k == "numpy" else type_names[k]
                           for k in sorted(found))
            + "; move every array to the same device first"
        )
    if not found:
        return numpy
    return next(iter(found.values()))


def is_cupy_namespace(xp: ModuleType) -> bool:
    """True when ``xp`` is the cupy module (checked by name, never importing cupy)."""
    return getattr(xp, "__name__", "") == "cupy"
