"""Compile a .cu file to PTX through NVRTC with CuPy's option chain (no device needed).

CuPy's ``RawModule(code, options)`` ends up in ``cupy.cuda.compiler._compile_with_cache_cuda``,
which appends ``-ftz=true`` after the caller's options, then ``compile_using_nvrtc`` adds the
target architecture. :data:`CUPY_APPENDED` reproduces that tail. NVRTC is found in the
``nvidia-cuda-nvrtc-cu12`` wheel (what ``.[gpu]`` installs), ``$NVRTC_LIBRARY``, or the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import site
import sys

#: What CuPy appends to a RawModule's options (compiler.py: ``options += ('-ftz=true',)``;
#: then ``_get_arch_for_options_for_nvrtc``: ``-arch=sm_XY`` (a cubin) where NVRTC supports the
#: device, as it does sm_90; ``-arch=compute_XY`` (PTX) otherwise). NVRTC still returns the PTX.
CUPY_APPENDED = ("-ftz=true", "-arch=sm_90")


def find_library() -> str | None:
    explicit = os.environ.get("NVRTC_LIBRARY")
    if explicit:
        return explicit
    roots = [*site.getsitepackages(), site.getusersitepackages(), *sys.path]
    for root in roots:
        for pattern in ("nvidia/cuda_nvrtc/lib/libnvrtc.so*", "nvidia/cu13/lib/libnvrtc.so*"):
            hits = sorted(h for h in glob.glob(os.path.join(root, pattern)) if "builtins" not in h)
            if hits:
                return hits[0]
    found = ctypes.util.find_library("nvrtc")
    if found:
        return found
    for path in glob.glob("/usr/local/cuda*/lib64/libnvrtc.so*"):
        if "builtins" not in path:
            return path
    return None


def compile_ptx(source: str, options, name: str = "kernel.cu") -> str:
    path = find_library()
    if path is None:
        raise FileNotFoundError("no libnvrtc (pip install nvidia-cuda-nvrtc-cu12, or set NVRTC_LIBRARY)")
    lib = ctypes.CDLL(path)
    program = ctypes.c_void_p()
    check = _checker(lib)
    check(lib.nvrtcCreateProgram(ctypes.byref(program), source.encode(), name.encode(), 0,
                                 None, None))
    try:
        encoded = [o.encode() for o in options]
        array = (ctypes.c_char_p * len(encoded))(*encoded)
        status = lib.nvrtcCompileProgram(program, len(encoded), array)
        if status:
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(program, log)
            raise RuntimeError(f"NVRTC failed on {name} with {list(options)}:\n{log.value.decode()}")
        size = ctypes.c_size_t()
        check(lib.nvrtcGetPTXSize(program, ctypes.byref(size)))
        ptx = ctypes.create_string_buffer(size.value)
        check(lib.nvrtcGetPTX(program, ptx))
        return ptx.value.decode()
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(program))


def version() -> tuple[int, int]:
    lib = ctypes.CDLL(find_library())
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return major.value, minor.value


def _checker(lib):
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p

    def check(status):
        if status:
            raise RuntimeError(f"NVRTC: {lib.nvrtcGetErrorString(status).decode()}")
    return check
