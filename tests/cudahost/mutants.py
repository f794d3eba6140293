"""Show that the host execution can fail: run the kernel tests on mutated copies of the .cu files.

    python -m tests.cudahost.mutants [--keep]

Each mutant is one edit of a shipped kernel (a removed ``__syncthreads()``, ``<=`` turned into
``<``). For each, the repository's ``kernels/`` and ``tests/`` are copied to a temporary
directory, the edit is applied there (the worktree is never touched), and the gpu-marked kernel
tests run on the copy. A mutant is *killed* when they fail. Exit status 0 when every mutant is
killed (and the unmutated copy passes), 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# (name, file, text to replace, replacement, occurrence to replace (0-based))
MUTANTS = [
    ("histogram: no barrier after zeroing the shared sub-histograms", "histogram.cu",
     "__syncthreads();", "", 0),
    ("histogram: no barrier before merging the sub-histograms", "histogram.cu",
     "__syncthreads();", "", 1),
    ("histogram: lane copies merged as if they were contiguous", "histogram.cu",
     "shared_counts[b * replicas + r]", "shared_counts[r * n_bins + b]", 0),
    ("classify: no barrier after zeroing the exponent bins", "classify.cu",
     "__syncthreads();", "", 0),
    ("classify: no barrier before reading the warps' partial sums", "classify.cu",
     "__syncthreads();", "", 1),
    ("classify: a float32 mantissa without its implicit bit", "classify.cu",
     "(e ? 0x800000ll : 0ll)", "0ll", 0),
    ("classify: v < t instead of v <= t", "classify.cu", "v <= t[j]", "v < t[j]", 0),
]

TESTS = ["tests/test_kernels.py", "-m", "gpu", "-k", "histogram or classify or tissue"]


def mutate(text: str, old: str, new: str, occurrence: int) -> str:
    # skip occurrences inside comments: only code lines count
    start = 0
    seen = -1
    while True:
        index = text.find(old, start)
        if index < 0:
            raise ValueError(f"occurrence {occurrence} of {old!r} not found")
        line_start = text.rfind("\n", 0, index) + 1
        if "//" not in text[line_start:index]:
            seen += 1
            if seen == occurrence:
                return text[:index] + new + text[index + len(old):]
        start = index + len(old)


def run_copy(mutant, keep: bool) -> tuple[bool, float, str]:
    work = Path(tempfile.mkdtemp(prefix="sarco-mutant-"))
    try:
        shutil.copytree(ROOT / "kernels", work / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "pyproject.toml", work / "pyproject.toml")
        if mutant is not None:
            _, filename, old, new, occurrence = mutant
            path = work / "kernels" / filename
            path.write_text(mutate(path.read_text(), old, new, occurrence))
        env = dict(os.environ, PYTHONPATH=str(work))
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *TESTS,
             "-o", "addopts=", "--timeout=300"],
            cwd=work, env=env, capture_output=True, text=True)
        elapsed = time.monotonic() - started
        # the copy, not the worktree, must have been tested
        check = subprocess.run([sys.executable, "-c", "import kernels; print(kernels.__file__)"],
                               cwd=work, env=env, capture_output=True, text=True)
        if not check.stdout.strip().startswith(str(work)):
            raise RuntimeError(f"the copy's kernels were not the ones imported: {check.stdout}")
        last = [line for line in done.stdout.splitlines() if line.strip()][-1:] or [""]
        return done.returncode == 0, elapsed, last[0]
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary copies")
    args = parser.parse_args(argv)
    ok = True
    passed, elapsed, summary = run_copy(None, args.keep)
    print(f"{'PASS' if passed else 'FAIL'} (expected PASS) unmutated copy: {summary} [{elapsed:.1f} s]")
    ok &= passed
    for mutant in MUTANTS:
        passed, elapsed, summary = run_copy(mutant, args.keep)
        killed = not passed
        print(f"{'killed' if killed else 'SURVIVED'}: {mutant[0]}: {summary} [{elapsed:.1f} s]")
        ok &= killed
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
