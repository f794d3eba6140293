"""Compile a ``.cu`` source for the host (g++) and load it with ctypes.

The source is compiled unmodified but for one mechanical rewrite: ``extern __shared__`` (dynamic
shared memory) becomes a plain ``extern`` whose storage this module defines, one buffer per
declared array, sized to the largest opt-in shared memory of the modelled device. Everything
else comes from ``cuda_host.h`` (the CUDA built-ins) and ``launch.h`` (the launcher).

Builds are cached by the hash of (source, options, headers, sanitizer) under the temporary
directory, so a test session compiles each ``.cu`` once and later sessions not at all.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
HEADERS = (HERE / "cuda_host.h", HERE / "launch.h")

#: Bytes behind each ``extern __shared__`` array: sm_90's opt-in maximum per block (227 KiB).
DYNAMIC_SHARED_BYTES = 232448

_DYNAMIC_SHARED = re.compile(r"extern\s+__shared__\s+([A-Za-z_][\w\s\*]*?)\s+(\w+)\s*\[\s*\]\s*;")
_ENTRY = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(')
_lock = threading.Lock()


class HostBuildUnavailable(RuntimeError):
    """No C++ compiler: the host execution cannot run (tests skip with this message)."""


def compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++")
    if not cxx:
        raise HostBuildUnavailable("g++ is not on PATH: the host execution of the .cu kernels needs it")
    return cxx


def sanitizer() -> str:
    """``''``, ``'thread'`` or ``'address'`` (CUDAHOST_SANITIZE; see scripts/cudahost_sanitize.sh)."""
    mode = os.environ.get("CUDAHOST_SANITIZE", "")
    if mode not in ("", "thread", "address"):
        raise ValueError(f"CUDAHOST_SANITIZE must be thread or address, got {mode!r}")
    return mode


def cache_dir() -> Path:
    root = os.environ.get("CUDAHOST_CACHE") or os.path.join(
        tempfile.gettempdir(), f"sarco-cudahost-{os.getuid()}")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _std_flag(options) -> str:
    for option in options:
        match = re.fullmatch(r"-{1,2}std=(c\+\+\d+)", option)
        if match:
            return f"-std={match.group(1)}"
    return "-std=c++17"  # NVRTC's default dialect is C++17


def _entry_points(cxx: str, source_path: Path, std: str) -> list[str]:
    """Names of the ``extern "C" __global__`` functions, found after macro expansion."""
    done = subprocess.run(
        [cxx, std, "-E", "-P", "-x", "c++", "-DCUDAHOST_SCAN", "-include", str(HEADERS[0]),
         str(source_path)],
        capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"preprocessing {source_path.name} failed:\n{done.stderr}")
    names = _ENTRY.findall(done.stdout)
    if not names:
        raise RuntimeError(f"{source_path.name}: no extern \"C\" __global__ entry point")
    return sorted(set(names))


def build(code: str, options=(), name: str = "module") -> Path:
    """Compile ``code`` (CUDA source text) into a shared library; return its path (cached)."""
    cxx = compiler()
    mode = sanitizer()
    std = _std_flag(options)
    digest = hashlib.sha256()
    for part in (code, repr(tuple(options)), mode, cxx, *(h.read_text() for h in HEADERS),
                 Path(__file__).read_text()):
        digest.update(part.encode())
    key = digest.hexdigest()[:24]
    out = cache_dir() / f"{name}-{key}{'-' + mode if mode else ''}.so"
    with _lock:
        if out.exists():
            return out
        work = Path(tempfile.mkdtemp(prefix="build-", dir=cache_dir()))
        try:
            arrays = _DYNAMIC_SHARED.findall(code)
            rewritten = _DYNAMIC_SHARED.sub(lambda m: f"extern {m.group(1)} {m.group(2)}[];", code)
            source = work / "kernel.cu.inc"
            source.write_text(rewritten)
            entries = _entry_points(cxx, source, std)
            lines = [f'#include "{HEADERS[0]}"']
            for type_name, array in arrays:
                lines.append(f"alignas(16) {type_name} {array}[{DYNAMIC_SHARED_BYTES} / sizeof({type_name})];")
            lines.append(f'#include "{source}"')
            lines.append(f'#include "{HEADERS[1]}"')
            lines.append("namespace cudahost {")
            regions = ", ".join(
                f"{{reinterpret_cast<unsigned char*>({array}), sizeof({array})}}"
                for _, array in arrays) or "{nullptr, 0}"
            lines.append(f"DynamicShared dynamic_shared[] = {{{regions}}};")
            lines.append(f"int n_dynamic_shared = {len(arrays)};")
            lines.append("}")
            lines += [f"CUDAHOST_ENTRY({entry})" for entry in entries]
            lines.append('extern "C" const char* cudahost_entries() { return "'
                         + ",".join(entries) + '"; }')
            (work / "module.cpp").write_text("\n".join(lines) + "\n")
            flags = [std, "-O1" if mode else "-O2", "-g" if mode else "-g0", "-fPIC", "-shared",
                     "-pthread", "-fno-fast-math", "-ffp-contract=off", "-Wall",
                     "-Wno-unknown-pragmas", "-Wno-unused-variable", "-Wno-unused-function"]
            if mode:
                flags.append(f"-fsanitize={mode}")
            tmp_out = work / "module.so"
            done = subprocess.run([cxx, *flags, "-o", str(tmp_out), str(work / "module.cpp")],
                                  capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"host build of {name} failed:\n{done.stderr}")
            os.replace(tmp_out, out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return out


class HostModule:
    """A loaded host build: ``launch(name, grid, block, shared_bytes, args)``."""

    def __init__(self, path: Path):
        self.path = path
        self.lib = ctypes.CDLL(str(path))
        self.lib.cudahost_entries.restype = ctypes.c_char_p
        self.entries = tuple(self.lib.cudahost_entries().decode().split(","))

    def signature(self, name: str) -> list[tuple[str, int]]:
        fn = getattr(self.lib, f"cudahost_signature_{name}")
        kinds = ctypes.create_string_buffer(64)
        sizes = (ctypes.c_ulonglong * 64)()
        n = fn(kinds, sizes, 64)
        return [(kinds.raw[i:i + 1].decode(), int(sizes[i])) for i in range(n)]

    def launch(self, name: str, grid, block, shared_bytes: int, seed: int, arg_pointers) -> int:
        fn = getattr(self.lib, f"cudahost_launch_{name}")
        fn.restype = ctypes.c_int
        grid3 = (ctypes.c_uint * 3)(*grid)
        block3 = (ctypes.c_uint * 3)(*block)
        args = (ctypes.c_void_p * max(1, len(arg_pointers)))(*arg_pointers)
        return fn(grid3, block3, ctypes.c_ulonglong(shared_bytes), ctypes.c_ulonglong(seed), args)
