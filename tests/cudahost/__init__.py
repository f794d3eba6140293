"""Host execution of the shipped CUDA kernels, for machines without a GPU (test infrastructure).

* ``cuda_host.h`` + ``launch.h``: a CUDA-compatibility layer that lets g++ compile the
  unmodified ``kernels/*.cu`` (one OS thread per CUDA thread, real barriers, warp shuffles,
  atomics, garbage-filled dynamic shared memory, parameter signatures for launch checks).
* ``build.py``: compiles and caches the host builds, loads them with ctypes.
* ``fakecupy.py``: a numpy-backed stand-in for the part of CuPy that ``kernels/`` uses,
  installed as ``sys.modules['cupy']`` by the ``xp`` fixture only (tests/conftest.py), and only
  where no real CuPy with a device exists.

The product never imports this package.
"""
