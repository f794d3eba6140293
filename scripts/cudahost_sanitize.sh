#!/usr/bin/env bash
# Run the host execution of the CUDA kernels under a sanitizer (tests/cudahost).
#
#   scripts/cudahost_sanitize.sh [thread|address] [extra pytest args...]
#
# thread:  ThreadSanitizer: data races between the OS threads that stand for CUDA threads
#          (a missing __syncthreads() shows up as a race on shared memory).
# address: AddressSanitizer: out-of-bounds reads/writes of global, shared and local memory.
# The kernels are rebuilt with -fsanitize=MODE (cached separately); the sanitizer runtime is
# preloaded into Python, which is not instrumented itself. Any report fails the run (pytest
# runs with -s: a sanitizer that halts the process must not have its report captured).
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-thread}"
shift || true
case "$mode" in
  thread)  lib=libtsan.so; export TSAN_OPTIONS="halt_on_error=1 exitcode=66 report_signal_unsafe=0 ignore_noninstrumented_modules=1 ${TSAN_OPTIONS:-}" ;;
  address) lib=libasan.so; export ASAN_OPTIONS="detect_leaks=0 halt_on_error=1 exitcode=66 ${ASAN_OPTIONS:-}" ;;
  *) echo "usage: $0 [thread|address] [pytest args...]" >&2; exit 2 ;;
esac
runtime="$(g++ -print-file-name="$lib")"
if [[ ! -e "$runtime" ]]; then
  echo "$0: g++ has no $lib: install the sanitizer runtime (e.g. apt-get install libtsan2 libasan8)" >&2
  exit 2
fi
python="${PYTHON:-python3}"
[[ -x .venv/bin/python ]] && python="${PYTHON:-.venv/bin/python}"
export CUDAHOST_SANITIZE="$mode"
LD_PRELOAD="$runtime" exec "$python" -m pytest -q -s -p no:cacheprovider -o addopts= \
  tests/test_kernels.py -m gpu -k "histogram or classify or tissue or subnormal" "$@"
