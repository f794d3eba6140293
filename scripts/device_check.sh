#!/usr/bin/env bash
# One call on a GPU machine: everything about the GPU path that a CPU-only CI cannot show.
#
#   scripts/device_check.sh            # from the repository root; under 10 minutes on one GPU
#
# Writes every step's output and a PASS/FAIL summary to one results file:
# $OUT/device_check.txt when $OUT is set, else ./device-check-results/device_check.txt.
# Steps (each one is recorded even when an earlier one failed):
#   1. install the GPU extra (CuPy + NVRTC wheel) into a fresh venv; show the device;
#   2. pytest -m gpu: every gpu-marked test on the real device (not the host execution);
#   3. PTX of the kernels as CuPy compiled them on this machine: no cvt.ftz.f64.f32;
#   4. the fits bench: the GPU histogram of 1e9 int16 voxels against the copy bandwidth;
#   5. a histogram of more than 2^31 values (the int32 overflow case the host cannot reach);
#   6. sarco run --backend gpu vs --backend cpu on a small synthetic cohort: features.csv
#      and thresholds.json compared byte for byte, and the wall time of both.
# The e2e bench (bench/e2e.py) has no backend option (it pins cpu): step 6 stands in for it.
set -uo pipefail
cd "$(dirname "$0")/.."
results_dir="${OUT:-$PWD/device-check-results}"
mkdir -p "$results_dir"
results="$results_dir/device_check.txt"
work="$(mktemp -d)"
: > "$results"
declare -a summary=()

log() { printf '%s\n' "$*" | tee -a "$results"; }
step() {  # step NAME TIMEOUT_S COMMAND...
  local name="$1" limit="$2"; shift 2
  log ""; log "=== $name ($(date -u +%H:%M:%S)) ==="
  local start=$SECONDS
  timeout "$limit" "$@" >> "$results" 2>&1
  local rc=$?
  local verdict=PASS; [[ $rc -ne 0 ]] && verdict="FAIL (exit $rc)"
  log "--- $name: $verdict in $((SECONDS - start)) s"
  summary+=("$verdict  $name ($((SECONDS - start)) s)")
}

log "sarco-engine device check, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >> "$results" 2>&1 || log "nvidia-smi: not available"

python="${PYTHON:-python3}"
step "install .[test,gpu]" 300 bash -c "'$python' -m venv '$work/venv' && '$work/venv/bin/pip' install -q -e '.[test,gpu]'"
py="$work/venv/bin/python"
step "device and NVRTC" 60 "$py" -c "
import cupy
d = cupy.cuda.Device()
a = d.attributes
print('cupy', cupy.__version__, 'device', cupy.cuda.runtime.getDeviceProperties(d.id)['name'].decode(),
      'cc', d.compute_capability, 'SMs', a['MultiProcessorCount'],
      'shared/block', a['MaxSharedMemoryPerBlock'], 'opt-in', a['MaxSharedMemoryPerBlockOptin'])
print('nvrtc', cupy.cuda.nvrtc.getVersion())
assert cupy.cuda.runtime.getDeviceCount() >= 1"

# The xp fixture uses real CuPy when a device is present, so this is the device's run.
step "pytest -m gpu (real device)" 300 "$py" -m pytest -q -p no:cacheprovider -m gpu -o addopts=-ra

step "PTX as CuPy compiles it here: no flushing conversion" 120 "$py" -c "
import cupy, re
from kernels import _cuda
from cupy.cuda import compiler
for name in ('histogram.cu', 'classify.cu'):
    arch = compiler._get_arch()
    # the same chain as RawModule: our options, then CuPy's -ftz=true, then the device's arch
    prog = compiler._NVRTCProgram(_cuda.cuda_source(name), name)
    ptx = prog.compile(_cuda._NVRTC_OPTIONS + ('-ftz=true', '-arch=compute_%s' % arch))[0]
    ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    flushing = ptx.count('cvt.ftz.f64.f32'); float_atomics = re.findall(r'\b(?:atom|red)\.[\w.]*\bf(?:32|64)\b', ptx)
    print(name, 'cvt.ftz.f64.f32:', flushing, 'cvt.f64.f32:', ptx.count('cvt.f64.f32'), 'float atomics:', float_atomics)
    assert flushing == 0 and not float_atomics
"

step "fits bench (1e9-voxel histogram vs copy bandwidth)" 300 "$py" -m bench --only fits --out "$results_dir/bench"

step "histogram of 2^31 + 1,000,003 int16 values" 120 "$py" -c "
import cupy, numpy as np
from kernels import histogram
n = 2**31 + 1_000_003
v = cupy.zeros(n, dtype=cupy.int16)
v[::1_000_003] = 7           # ceil(n / 1,000,003) sevens
v[n - 1] = 100               # an index above 2^31
v[2**31 + 5] = -190
counts = histogram(v, lo=-190, hi=150).get()
sevens = len(range(0, n, 1_000_003)) - sum(1 for i in (n - 1, 2**31 + 5) if i % 1_000_003 == 0)
expected = np.zeros(341, np.int64)
expected[7 + 190] = sevens; expected[100 + 190] = 1; expected[0] = 1
expected[190] = n - expected.sum()
print('total', int(counts.sum()), 'of', n); assert int(counts.sum()) == n
np.testing.assert_array_equal(counts, expected); print('exact')
f = histogram(v.astype(cupy.float32), lo=-190, hi=150).get()
np.testing.assert_array_equal(f, expected); print('float32 path exact')
"

cohort="$work/cohort"
step "synthesize a small cohort (12 patients)" 200 "$work/venv/bin/sarco" synth "$cohort" --patients 12 --size small --workers 4
for backend in cpu gpu; do
  step "sarco run --backend $backend" 300 "$work/venv/bin/sarco" run --manifest "$cohort/manifest.csv" \
    --out "$work/run-$backend" --backend "$backend" --scheduler inline
done
step "features.csv and thresholds.json: gpu == cpu, byte for byte" 30 bash -c "
cmp '$work/run-cpu/features.csv' '$work/run-gpu/features.csv' && echo 'features.csv identical' &&
cmp '$work/run-cpu/thresholds.json' '$work/run-gpu/thresholds.json' && echo 'thresholds.json identical' ||
{ diff <(head -c 4000 '$work/run-cpu/thresholds.json') <(head -c 4000 '$work/run-gpu/thresholds.json') | head -40; exit 1; }"
for backend in cpu gpu; do
  cp "$work/run-$backend/features.csv" "$results_dir/features-$backend.csv" 2>/dev/null || true
  cp "$work/run-$backend/thresholds.json" "$results_dir/thresholds-$backend.json" 2>/dev/null || true
done

log ""; log "=== summary ==="
for line in "${summary[@]}"; do log "$line"; done
rm -rf "$work"
failed=0; for line in "${summary[@]}"; do [[ $line == FAIL* ]] && failed=1; done
log "results: $results"
exit $failed
