#!/usr/bin/env bash
# One call on a GPU machine: everything about the GPU path that a CPU-only CI cannot show.
#
#   scripts/device_check.sh       # from the repository root; at most 6 minutes on one H200
#
# The device machine reaches no package registry, so nothing is installed from one: when
# `import cupy` works in its python3, that interpreter and its packages are used as they are,
# the repository goes on PYTHONPATH (a `sarco` shim on PATH), and the packages it lacks come
# from .whl/device-site.tar.xz (built here by scripts/device_bundle.sh and carried), unpacked
# into /tmp/site. What is still missing is printed on one line; every check that can run, runs.
#
# One line per check on stdout: PASS/FAIL/SKIP, the check, its seconds and its key figure (a
# failing check also prints the last lines of its output). Everything else goes to
# $OUT/device_check.log; the figures to $OUT/<date>-gpu-device-check.json and .md, the fits
# bench to $OUT/bench/bench.{json,md} (for bench/results/); on a byte mismatch the two
# features.csv files that differ. $OUT defaults to ./device-check-results.
#
# Checks, in this order (a small cohort is synthesized on the CPU meanwhile): missing packages;
# the device; the kernels' PTX as CuPy compiles them here (no flushing conversion, no fma, no
# float atomics); the fits bench (the 1e9-voxel histogram against the device-to-device copy
# bandwidth); a histogram of more than 2^31 values; pytest -m gpu on the real device; the NVRTC
# and nvcc PTX tests; then the cohort run with --backend cpu, --backend gpu --scheduler inline
# (at once) and --backend gpu on the default executor (dask-cuda's LocalCUDACluster), each GPU
# run's thresholds.json and features.csv compared byte for byte with the CPU run's; the histogram's
# bandwidth per cap on its shared sub-histograms (8, 16, 32); and `sarco run` on CPU then GPU over
# clinical-size CT series (DEVICE_CHECK_CLINICAL_PATIENTS (2) x 512^2 x DEVICE_CHECK_CLINICAL_SLICES
# (300) slices, JPEG 2000), timed, features.csv byte for byte.
# Every check ends within DEVICE_CHECK_BUDGET_S (345 s) of the start; later ones are skipped.
# DEVICE_CHECK_PATIENTS (8) sets the cohort's size, DEVICE_CHECK_RUN_LIMIT_S (240) each run's limit,
# PYTHON the interpreter (python3).
#
# DEVICE_CHECK_REHEARSE=1 rehearses it on a machine without a GPU: `cupy` is the host execution
# stand-in (tests/cudahost/fakecupy.py) and the device-only checks are skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
out="${OUT:-$repo/device-check-results}"
mkdir -p "$out"
log="$out/device_check.log"
stamp="$(date -u +%Y-%m-%d)"
export DEVICE_CHECK_FIGURES="$out/$stamp-gpu-device-check.json"
rm -f "$DEVICE_CHECK_FIGURES"
work="$(mktemp -d)"
steps="$work/steps.tsv"
: > "$log"; : > "$steps"
rehearse="${DEVICE_CHECK_REHEARSE:-}"
started=$SECONDS
budget="${DEVICE_CHECK_BUDGET_S:-345}"  # every check ends by then: a rerun fits a 15-minute lease
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg

say() { printf '%s\n' "$*" | tee -a "$log"; }
record() {  # record VERDICT NAME SECONDS KEY
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4//$'\t'/ }" >> "$steps"
  say "$(printf '%-4s %-44s %4ss  %s' "$1" "$2" "$3" "$4")"
}
check() {  # check NAME TIMEOUT_S COMMAND... ; the command's last output line is its key figure
  local name="$1" limit="$2"; shift 2
  local left=$(( budget - (SECONDS - started) ))
  if (( left < 20 )); then skip "$name" "out of the ${budget} s budget (DEVICE_CHECK_BUDGET_S)"; return 1; fi
  (( limit > left )) && limit=$left
  local start=$SECONDS part
  part="$(mktemp -p "$work" step.XXXXXX)"  # two checks may run at once
  printf '\n=== %s (%s UTC) ===\n' "$name" "$(date -u +%H:%M:%S)" >> "$log"
  timeout -k 10 "$limit" "$@" > "$part" 2>&1
  local rc=$? verdict=PASS key
  cat "$part" >> "$log"
  key="$(grep -v '^[[:space:]]*$' "$part" | tail -n 1 | cut -c1-300)"
  if [[ $rc -ne 0 ]]; then
    verdict=FAIL
    [[ $rc -eq 124 || $rc -eq 137 ]] && key="timed out after ${limit} s; $key"
  fi
  record "$verdict" "$name" "$((SECONDS - start))" "$key"
  if [[ $verdict == FAIL ]]; then tail -n 15 "$part" | sed 's/^/     | /'; fi
  return $rc
}
skip() { record SKIP "$1" 0 "$2"; }

say "sarco-engine device check, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')${rehearse:+ (REHEARSAL: no GPU, cupy = host execution)}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null | tee -a "$log" || say "nvidia-smi: not available"

# ---------------------------------------------------------------- environment (no registry)
py="${PYTHON:-python3}"
site=/tmp/site
bundle="${DEVICE_CHECK_SITE:-.whl/device-site.tar.xz}"  # the tarball holds one folder, site/
if [[ -f $bundle ]]; then
  rm -rf "$site" && tar -C /tmp -xJf "$bundle" && say "unpacked $bundle into $site ($(du -sm "$site" | cut -f1) MiB)"
else
  say "no $bundle (scripts/device_bundle.sh builds it): only the image's packages"
fi
pythonpath="$repo"
[[ -d $site ]] && pythonpath="$pythonpath:$site"
if [[ -n $rehearse ]]; then  # the stand-in replaces cupy in every process (also the ones sarco starts)
  mkdir -p "$work/fake" && printf '%s\n' 'import sys' \
    'from tests.cudahost import fakecupy' "sys.modules['cupy'] = fakecupy.make_module()" > "$work/fake/sitecustomize.py"
  pythonpath="$work/fake:$pythonpath"
fi
export PYTHONPATH="$pythonpath${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$work/bin" && printf '#!/bin/sh\nexec %q -m engine.cli "$@"\n' "$(command -v "$py")" > "$work/bin/sarco" && chmod +x "$work/bin/sarco"
export PATH="$work/bin:$PATH"
[[ -x /usr/local/cuda/bin/nvcc ]] && ! command -v nvcc > /dev/null && export PATH="$PATH:/usr/local/cuda/bin"
say "python: $(command -v "$py") ($("$py" -V 2>&1)); PYTHONPATH=$PYTHONPATH"

check "packages (missing ones listed)" 90 "$py" scripts/device_check.py missing
has_cupy=0
check "device, CuPy, NVRTC" 60 "$py" scripts/device_check.py device && has_cupy=1
gpu_reason="no CuPy with a device${rehearse:+ (rehearsal)}"

# The cohort is synthesized on the CPU while the kernels are checked on the GPU.
cohort="$work/cohort"
patients="${DEVICE_CHECK_PATIENTS:-8}"
cpus="$(nproc)"
( check "sarco synth ($patients small patients)" 150 sarco synth "$cohort" --patients "$patients" --size small \
    --workers "$(( cpus < 8 ? cpus : 8 ))" > "$work/synth.line" ) &
synth_job=$!
( check "clinical CT series built (JPEG 2000, CPU)" 240 "$py" scripts/device_check.py clinical-build "$work/clinical" \
    > "$work/clinical.line" ) &
clinical_job=$!

# ---------------------------------------------------------------- kernels on the device
if [[ $has_cupy == 1 && -z $rehearse ]]; then
  check "PTX as CuPy compiles it here" 60 "$py" scripts/device_check.py ptx
  check "fits bench --quick (1e9-voxel histogram)" 150 "$py" -m bench --quick --only fits --out "$out/bench"
  check "histogram throughput vs copy bandwidth" 30 "$py" scripts/device_check.py bandwidth "$out/bench/bench.json"
  check "histogram bandwidth per sub-histogram cap" 60 "$py" scripts/device_check.py replicas
  check "histogram of more than 2^31 values" 90 "$py" scripts/device_check.py big-histogram
else
  for name in "PTX as CuPy compiles it here" "fits bench --quick (1e9-voxel histogram)" \
              "histogram throughput vs copy bandwidth" "histogram bandwidth per sub-histogram cap" \
              "histogram of more than 2^31 values"; do
    skip "$name" "$gpu_reason"
  done
fi
if [[ $has_cupy == 1 ]]; then
  check "pytest -m gpu (the real device)" 150 "$py" -m pytest -q -p no:cacheprovider -o addopts= -m gpu \
    ${DEVICE_CHECK_PYTEST_K:+-k "$DEVICE_CHECK_PYTEST_K"} tests/test_kernels.py
else
  skip "pytest -m gpu (the real device)" "no CuPy with a device"
fi
check "pytest NVRTC / nvcc PTX checks" 90 "$py" -m pytest -q -p no:cacheprovider -o addopts= -rs \
  tests/test_kernels.py -k "nvrtc or flushing or fma"

# ---------------------------------------------------------------- end to end, byte for byte
wait $synth_job; cat "$work/synth.line"
if [[ -f $cohort/manifest.csv ]]; then
  manifest=(--manifest "$cohort/manifest.csv")
  run_limit="${DEVICE_CHECK_RUN_LIMIT_S:-240}"
  # cpu and gpu-inline at once (independent processes; the CPU run would otherwise idle the GPU)
  ( check "sarco run --backend cpu --scheduler inline" "$run_limit" sarco run "${manifest[@]}" --out "$work/cpu" --backend cpu --scheduler inline > "$work/cpu.line" ) &
  cpu_job=$!
  if [[ $has_cupy == 1 ]]; then
    check "sarco run --backend gpu --scheduler inline" "$run_limit" sarco run "${manifest[@]}" --out "$work/gpu-inline" --backend gpu --scheduler inline
  else
    skip "sarco run --backend gpu --scheduler inline" "no CuPy with a device"
  fi
  wait $cpu_job; cat "$work/cpu.line"
  if [[ $has_cupy == 1 && -z $rehearse ]]; then
    check "sarco run --backend gpu (LocalCUDACluster)" 180 sarco run "${manifest[@]}" --out "$work/gpu-cluster" --backend gpu
  else
    skip "sarco run --backend gpu (LocalCUDACluster)" "$gpu_reason"
  fi
  for gpu_run in gpu-inline gpu-cluster; do
    if [[ -f $work/$gpu_run/features.csv && -f $work/cpu/features.csv ]]; then
      if ! check "cpu == $gpu_run: thresholds.json, features.csv" 30 "$py" scripts/device_check.py compare "$work/cpu" "$work/$gpu_run"; then
        cp "$work/cpu/features.csv" "$out/features-cpu.csv" 2>/dev/null
        cp "$work/$gpu_run/features.csv" "$out/features-$gpu_run.csv" 2>/dev/null
      fi
    else
      skip "cpu == $gpu_run: thresholds.json, features.csv" "a run is missing"
    fi
  done
fi

# ---------------------------------------------------------------- clinical size, CPU vs GPU
wait $clinical_job; cat "$work/clinical.line"
if [[ $has_cupy == 1 && -f $work/clinical/manifest.csv ]]; then
  check "clinical CT (512², ${DEVICE_CHECK_CLINICAL_SLICES:-300} slices, JPEG 2000): cpu vs gpu" 150 \
    "$py" scripts/device_check.py clinical "$work/clinical"
else
  skip "clinical CT (512², 300 slices, JPEG 2000): cpu vs gpu" "no CuPy with a device, or no series"
fi

# ---------------------------------------------------------------- summary
"$py" scripts/device_check.py report "$steps" "$out/$stamp-gpu-device-check.md" >> "$log" 2>&1
failed=$(grep -c '^FAIL' "$steps")
say "device check: $(grep -c '^PASS' "$steps") passed, $failed failed, $(grep -c '^SKIP' "$steps") skipped in $((SECONDS - started)) s; files in $out: $(cd "$out" && find . -type f | sort | tr '\n' ' ')"
rm -rf "$work"
[[ $failed -eq 0 ]]
