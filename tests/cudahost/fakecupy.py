"""A numpy-backed stand-in for the part of CuPy that ``kernels/`` uses.

Arrays live in host memory but behave like CuPy's where it matters for catching wiring bugs:
they are *not* numpy arrays (``isinstance(a, numpy.ndarray)`` is False, implicit conversion
with ``numpy.asarray`` raises TypeError as CuPy does), reductions return 0-d arrays, mixing
with numpy arrays raises, ``empty`` returns garbage, allocations are 256-byte aligned.
``RawModule`` compiles the CUDA source for the host (``build.py``) and launches run the real
kernels on OS threads, after checking every argument against the kernel's parameters.

Installed as ``sys.modules['cupy']`` only by the ``xp`` fixture, and only for the duration of
a test (``make_module`` builds the module object; nothing here registers itself).
"""

from __future__ import annotations

import numbers
import threading
import types

import numpy
from numpy.lib.mixins import NDArrayOperatorsMixin

from tests.cudahost import build

#: The modelled device: few SMs (host threads are costly), an H100/H200's shared memory.
DEVICE_ATTRIBUTES = {
    "MultiProcessorCount": 1,  # 8 blocks per grid: several blocks, few host threads
    "MaxSharedMemoryPerBlock": 49152,
    "MaxSharedMemoryPerBlockOptin": build.DYNAMIC_SHARED_BYTES,
    "MaxThreadsPerBlock": 1024,
    "WarpSize": 32,
    "ComputeCapabilityMajor": 9,
    "ComputeCapabilityMinor": 0,
}
_ALIGN = 256
_launch_lock = threading.Lock()
#: Every launch, for tests that check a launch configuration: (kernel, grid, block, shared).
launches: list[tuple[str, tuple, tuple, int]] = []


class CUDADriverError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------ arrays


class _Data:
    def __init__(self, host):
        self.ptr = host.ctypes.data if host.size else 0


def _aligned_empty(shape, dtype):
    dtype = numpy.dtype(dtype)
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (int(shape),)
    n = int(numpy.prod(shape, dtype=numpy.int64)) * dtype.itemsize
    raw = numpy.empty(n + _ALIGN, dtype=numpy.uint8)
    offset = (-raw.ctypes.data) % _ALIGN
    return raw[offset:offset + n].view(dtype).reshape(shape)


def _wrap(value):
    if isinstance(value, numpy.ndarray):
        return ndarray(value)
    if isinstance(value, numpy.generic):  # CuPy reductions and indexing return 0-d arrays
        return ndarray(numpy.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _unwrap(value, *, allow_host_arrays=False):
    if isinstance(value, ndarray):
        return value._host
    if isinstance(value, numpy.ndarray) and not allow_host_arrays and value.ndim > 0:
        raise TypeError(f"Unsupported type {type(value)} (a numpy array where a cupy array is "
                        "expected: move it to the device first)")
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v, allow_host_arrays=allow_host_arrays) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v, allow_host_arrays=allow_host_arrays) for k, v in value.items()}
    return value


class ndarray(NDArrayOperatorsMixin):  # CuPy's name
    """Device-array stand-in holding a numpy array (never a numpy.ndarray itself)."""

    __module__ = "cupy"
    __array_priority__ = 100

    def __init__(self, host: numpy.ndarray):
        object.__setattr__(self, "_host", host)

    # -- CuPy's explicit transfers and properties
    def get(self, stream=None, order="C", out=None):
        return numpy.array(self._host, order=order, copy=True)

    @property
    def data(self):
        return _Data(self._host)

    @property
    def device(self):
        return cuda.Device(0)

    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        result = getattr(ufunc, method)(*_unwrap(inputs), **_unwrap(kwargs))
        return _wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    def __getattr__(self, name):
        value = getattr(self._host, name)
        if callable(value):
            def method(*args, **kwargs):
                return _wrap(value(*_unwrap(args), **_unwrap(kwargs)))
            method.__name__ = name
            return method
        return _wrap(value)

    def __getitem__(self, key):
        return _wrap(self._host[_unwrap(key)])

    def __setitem__(self, key, value):
        self._host[_unwrap(key)] = _unwrap(value)

    def __len__(self):
        return len(self._host)

    def __iter__(self):
        for i in range(len(self._host)):
            yield self[i]

    def __bool__(self):
        return bool(self._host)

    def __int__(self):
        return int(self._host)

    def __float__(self):
        return float(self._host)

    def __complex__(self):
        return complex(self._host)

    def __index__(self):
        if self._host.ndim or self._host.dtype.kind not in "iu":
            raise TypeError("only integer scalar arrays can be converted to a scalar index")
        return int(self._host)

    def __repr__(self):
        return repr(self._host).replace("array(", "array(", 1)

    def __setattr__(self, name, value):
        setattr(self._host, name, value)

    def tolist(self):
        return self._host.tolist()

    def item(self):
        return self._host.item()


def asarray(a, dtype=None, order=None, *, blocking=False):
    if isinstance(a, ndarray):
        return a if dtype is None or numpy.dtype(dtype) == a.dtype else a.astype(dtype)
    host = numpy.asarray(a, dtype=dtype)
    out = _aligned_empty(host.shape, host.dtype)
    out[...] = host
    return ndarray(out)


def array(a, dtype=None, copy=True, order="K", ndmin=0):
    if isinstance(a, ndarray):
        a = a._host
    return asarray(numpy.array(a, dtype=dtype, copy=copy, ndmin=ndmin))


def asnumpy(a, stream=None, order="C", out=None, blocking=True):
    if isinstance(a, ndarray):
        return a.get()
    return numpy.asarray(a)


def empty(shape, dtype=float, order="C"):
    out = _aligned_empty(shape, dtype)
    out.view(numpy.uint8).reshape(-1)[...] = 0xA5  # a GPU's fresh memory is not zeroed
    return ndarray(out)


def zeros(shape, dtype=float, order="C"):
    out = _aligned_empty(shape, dtype)
    out[...] = 0
    return ndarray(out)


def ascontiguousarray(a, dtype=None):
    host = _unwrap(a)
    if host.flags.c_contiguous and (dtype is None or numpy.dtype(dtype) == host.dtype):
        return a
    return asarray(numpy.ascontiguousarray(host, dtype=dtype))


def get_array_module(*args):
    return _module if any(isinstance(a, ndarray) for a in args) else numpy


_OWN = {"asarray": asarray, "array": array, "asnumpy": asnumpy, "empty": empty, "zeros": zeros,
        "ascontiguousarray": ascontiguousarray, "get_array_module": get_array_module,
        "ndarray": ndarray}


def _numpy_function(name):
    value = getattr(numpy, name)
    if isinstance(value, type) or not callable(value):
        return value  # dtypes (cupy.int64 is numpy.int64), constants (pi, nan, newaxis)

    def function(*args, **kwargs):
        return _wrap(value(*_unwrap(args), **_unwrap(kwargs)))

    function.__name__ = name
    return function


# --------------------------------------------------------------------------- RawModule, launch


class Function:
    """A kernel of a host-built RawModule; ``kernel(grid, block, args, shared_mem=...)``."""

    def __init__(self, module: build.HostModule, name: str):
        if name not in module.entries:
            raise CUDADriverError(f"CUDA_ERROR_NOT_FOUND: named symbol not found: {name}")
        self._module = module
        self.name = name
        self.signature = module.signature(name)
        self.max_dynamic_shared_size_bytes = (
            DEVICE_ATTRIBUTES["MaxSharedMemoryPerBlock"])
        self._seed = 0

    def __call__(self, grid, block, args, *, shared_mem=0, stream=None, enable_cooperative_groups=False):
        grid = tuple(grid) + (1,) * (3 - len(grid))
        block = tuple(block) + (1,) * (3 - len(block))
        if any(int(g) < 1 for g in grid) or any(int(b) < 1 for b in block):
            raise CUDADriverError(f"CUDA_ERROR_INVALID_VALUE: launch of {self.name} with grid "
                                  f"{grid}, block {block}")
        if block[0] * block[1] * block[2] > DEVICE_ATTRIBUTES["MaxThreadsPerBlock"]:
            raise CUDADriverError(f"CUDA_ERROR_INVALID_VALUE: {block} threads per block")
        if shared_mem > self.max_dynamic_shared_size_bytes:
            raise CUDADriverError(
                f"CUDA_ERROR_INVALID_VALUE: {self.name} launched with {shared_mem} bytes of "
                f"dynamic shared memory but max_dynamic_shared_size_bytes is "
                f"{self.max_dynamic_shared_size_bytes} (opt in first)")
        if self.max_dynamic_shared_size_bytes > DEVICE_ATTRIBUTES["MaxSharedMemoryPerBlockOptin"]:
            raise CUDADriverError("CUDA_ERROR_INVALID_VALUE: max_dynamic_shared_size_bytes above "
                                  "MaxSharedMemoryPerBlockOptin")
        args = tuple(args)
        if len(args) != len(self.signature):
            raise TypeError(f"{self.name} takes {len(self.signature)} arguments, "
                            f"got {len(args)}")
        keep, pointers = [], []
        for index, (arg, (kind, size)) in enumerate(zip(args, self.signature, strict=True)):
            buffer = _argument(self.name, index, arg, kind, size)
            keep.append(buffer)
            pointers.append(buffer if isinstance(buffer, int) else
                            numpy.frombuffer(buffer, dtype=numpy.uint8).ctypes.data)
        with _launch_lock:
            self._seed += 1
            launches.append((self.name, grid, block, int(shared_mem)))
            rc = self._module.launch(self.name, grid, block, int(shared_mem), self._seed,
                                     [p if isinstance(p, int) else p for p in pointers])
        if rc:
            raise CUDADriverError(f"CUDA_ERROR_LAUNCH_FAILED: {self.name} (host launch code {rc})")


def _argument(kernel, index, arg, kind, size):
    """The bytes (or, for an array, an int holding the address of a pointer) of one argument."""
    where = f"{kernel} argument {index}"
    if kind == "p":
        if not isinstance(arg, ndarray):
            raise TypeError(f"{where}: expected a cupy array for a pointer parameter, got "
                            f"{type(arg).__module__}.{type(arg).__qualname__}")
        host = arg._host
        if size and host.dtype.itemsize != size:
            raise TypeError(f"{where}: array of {host.dtype} ({host.dtype.itemsize} bytes) "
                            f"for a pointer to a {size}-byte type")
        if not host.flags.c_contiguous:
            raise ValueError(f"{where}: a non-contiguous array passed to a raw kernel")
        pointer = numpy.array([host.ctypes.data if host.size else 0], dtype=numpy.uint64)
        return pointer.tobytes()
    if isinstance(arg, ndarray):
        raise TypeError(f"{where}: an array for a scalar parameter")
    if isinstance(arg, bool):
        arg = numpy.bool_(arg)
    elif isinstance(arg, numbers.Integral) and not isinstance(arg, numpy.generic):
        arg = numpy.int64(arg)  # CuPy passes a Python int as a 64-bit integer
    elif isinstance(arg, numbers.Real) and not isinstance(arg, numpy.generic):
        arg = numpy.float64(arg)
    if not isinstance(arg, numpy.generic):
        raise TypeError(f"{where}: unsupported type {type(arg)}")
    got_kind = {"f": "f", "i": "i", "u": "u", "b": "u"}.get(arg.dtype.kind, "?")
    if got_kind == "u" and kind == "i" or got_kind == "i" and kind == "u":
        got_kind = kind  # signedness is the kernel's interpretation; sizes must match
    if got_kind != kind or arg.dtype.itemsize != size:
        raise TypeError(f"{where}: got {arg.dtype} ({arg.dtype.itemsize} bytes) for a "
                        f"parameter of kind {kind!r} and {size} bytes")
    return arg.tobytes()


class RawModule:
    def __init__(self, code=None, *, path=None, options=(), backend="nvrtc", translate_cucomplex=False,
                 enable_cooperative_groups=False, name_expressions=None, jitify=False):
        if code is None:
            raise NotImplementedError("the stand-in RawModule takes code= only")
        self.code, self.options = code, tuple(options)
        self._module = build.HostModule(build.build(code, self.options, name="module"))

    def get_function(self, name):
        return Function(self._module, name)


# -------------------------------------------------------------------------- devices, streams


class _Device:
    def __init__(self, device=None):
        device = 0 if device is None else int(device)
        if device != 0:
            raise CUDADriverError(f"cudaErrorInvalidDevice: device {device}")
        self.id = device
        self.attributes = dict(DEVICE_ATTRIBUTES)
        self.compute_capability = "90"

    def use(self):
        return None

    def synchronize(self):
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Stream:
    null = None

    def __init__(self, null=False, non_blocking=False, ptds=False):
        self.ptr = 0

    def synchronize(self):
        return None

    def use(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_Stream.null = _Stream(null=True)
cuda = types.SimpleNamespace(
    Device=_Device,
    Stream=_Stream,
    get_current_stream=lambda device=None: _Stream.null,
    runtime=types.SimpleNamespace(getDeviceCount=lambda: 1, deviceSynchronize=lambda: None,
                                  runtimeGetVersion=lambda: 12090,
                                  driverGetVersion=lambda: 12090,
                                  getDeviceProperties=lambda i: {"name": b"cudahost (g++ threads)",
                                                                 "major": 9, "minor": 0}),
    CUDADriverError=CUDADriverError,
)


class _Module(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _numpy_function(name)
        setattr(self, name, value)
        return value


def make_module() -> types.ModuleType:
    """A module object to install as ``sys.modules['cupy']`` (the caller restores it)."""
    return _module


_module = _Module("cupy", "numpy-backed CuPy stand-in executing the .cu kernels on the host")
_module.__version__ = "0.0+cudahost"
_module.__file__ = __file__
_module.cuda = cuda
_module.RawModule = RawModule
_module.is_cudahost_standin = True
for _name, _value in _OWN.items():
    setattr(_module, _name, _value)
