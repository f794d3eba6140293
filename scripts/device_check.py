"""The Python half of ``scripts/device_check.sh``: one check per subcommand, one key line each.

Every subcommand prints its detail first and its key figure as the LAST line of its output
(the shell prints that line after PASS/FAIL), and records its figures in the JSON file named
by ``$DEVICE_CHECK_FIGURES`` (merged, so each check adds its own keys). Exit status 0 = PASS.

    python scripts/device_check.py missing            # what the project imports that is not here
    python scripts/device_check.py device             # the device CuPy sees, NVRTC, CUDA versions
    python scripts/device_check.py ptx                # the kernels' PTX as CuPy compiles them here
    python scripts/device_check.py big-histogram      # more than 2^31 values in one histogram
    python scripts/device_check.py bandwidth BENCH_JSON   # histogram vs copy bandwidth, from bench.json
    python scripts/device_check.py replicas           # that bandwidth per cap on the sub-histogram copies
    python scripts/device_check.py clinical-build WORK  # clinical-size JPEG 2000 CT series (CPU)
    python scripts/device_check.py clinical WORK      # sarco run CPU vs GPU on them, timed
    python scripts/device_check.py compare RUN_A RUN_B    # thresholds.json and features.csv byte for byte
    python scripts/device_check.py report STEPS_TSV OUT_MD  # the summary table (Markdown)

Not a test module and not part of the engine: it runs where ``scripts/device_check.sh`` put the
repository and the carried packages on ``sys.path``.
"""

from __future__ import annotations

import csv
import importlib
import json
import os
import re
import sys
import time
from pathlib import Path

#: Import name -> distribution: what the engine, the bench and the device check import.
REQUIRED_MODULES = {
    "numpy": "numpy", "scipy": "scipy", "pandas": "pandas", "pyarrow": "pyarrow",
    "sklearn": "scikit-learn", "statsmodels": "statsmodels", "SimpleITK": "SimpleITK",
    "pydicom": "pydicom", "pylibjpeg": "pylibjpeg", "libjpeg": "pylibjpeg-libjpeg",
    "openjpeg": "pylibjpeg-openjpeg", "rle": "pylibjpeg-rle", "jpeg_ls": "pyjpegls",
    "highdicom": "highdicom", "pynetdicom": "pynetdicom", "dicomweb_client": "dicomweb-client",
    "dask": "dask", "distributed": "distributed", "bokeh": "bokeh",
    "yaml": "pyyaml", "pydantic": "pydantic", "tqdm": "tqdm", "matplotlib": "matplotlib",
    "jinja2": "jinja2", "PIL": "pillow", "psutil": "psutil", "blake3": "blake3", "pytest": "pytest",
    "pytest_timeout": "pytest-timeout", "skimage": "scikit-image", "cupy": "cupy",
    "dask_cuda": "dask-cuda",
}
#: Optional on the device: the cross-check extras and the test data.
OPTIONAL_MODULES = {"cuml": "cuml", "cucim": "cucim", "data_store": "pydicom-data"}


def _record(**figures) -> None:
    path = os.environ.get("DEVICE_CHECK_FIGURES")
    if not path:
        return
    target = Path(path)
    data = json.loads(target.read_text()) if target.exists() else {}
    data.update(figures)
    target.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def missing() -> int:
    absent, versions = [], {}
    for module, dist in {**REQUIRED_MODULES, **OPTIONAL_MODULES}.items():
        try:
            imported = importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - ImportError, or a broken binary (a wrong glibc, a CUDA mismatch)
            if module in REQUIRED_MODULES:
                absent.append(f"{dist} ({type(exc).__name__}: {str(exc)[:80]})")
            continue
        versions[dist] = str(getattr(imported, "__version__", "?"))
    print("versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    _record(python=sys.version.split()[0], packages=versions, missing=absent)
    print("missing: " + (", ".join(absent) if absent else "none"))
    return 1 if absent else 0


def device() -> int:
    import cupy

    d = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(d.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    attributes = d.attributes
    try:
        nvrtc = ".".join(map(str, cupy.cuda.nvrtc.getVersion()))
    except Exception as exc:  # noqa: BLE001 - the stand-in of a rehearsal has no NVRTC
        nvrtc = f"unavailable ({type(exc).__name__})"
    figures = {
        "device_name": name, "compute_capability": str(d.compute_capability),
        "multiprocessors": int(attributes["MultiProcessorCount"]),
        "shared_memory_per_block_optin": int(attributes.get("MaxSharedMemoryPerBlockOptin", 0)),
        "cupy": cupy.__version__, "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
        "cuda_driver": cupy.cuda.runtime.driverGetVersion(), "nvrtc": nvrtc,
    }
    _record(**figures)
    print(f"{name}, cc {figures['compute_capability']}, {figures['multiprocessors']} SMs, cupy {cupy.__version__}, "
          f"CUDA runtime {figures['cuda_runtime']} / driver {figures['cuda_driver']}, NVRTC {nvrtc}")
    return 0 if cupy.cuda.runtime.getDeviceCount() >= 1 else 1


def ptx() -> int:
    """Compile each .cu as CuPy does here (our options, then its -ftz=true and the device's arch)."""
    import cupy  # noqa: F401
    from cupy.cuda import compiler

    from kernels import _cuda

    arch = compiler._get_arch()
    bad, counts = [], {}
    target = f"sm_{arch}"  # CuPy's choice where NVRTC knows the device (a cubin); PTX is still returned
    for name in ("histogram.cu", "classify.cu"):
        try:
            program = compiler._NVRTCProgram(_cuda.cuda_source(name), name)
            text = program.compile(_cuda._NVRTC_OPTIONS + ("-ftz=true", f"-arch={target}"))[0]
        except Exception as exc:  # noqa: BLE001 - an NVRTC older than the device: CuPy falls back to PTX
            print(f"-arch={target}: {type(exc).__name__}: {exc}; compute_{arch} instead")
            target = f"compute_{arch}"
            program = compiler._NVRTCProgram(_cuda.cuda_source(name), name)
            text = program.compile(_cuda._NVRTC_OPTIONS + ("-ftz=true", f"-arch={target}"))[0]
        text = text.decode() if isinstance(text, bytes) else text
        counts[name] = {
            "cvt.ftz.f64.f32": text.count("cvt.ftz.f64.f32"), "cvt.f64.f32": text.count("cvt.f64.f32"),
            "fma": len(re.findall(r"\bfma\.", text)),
            "float_atomics": len(re.findall(r"\b(?:atom|red)\.[\w.]*\bf(?:32|64)\b", text)),
        }
        c = counts[name]
        if c["cvt.ftz.f64.f32"] or c["fma"] or c["float_atomics"]:
            bad.append(name)
        print(name, c)
    _record(ptx_arch=target, ptx_options=list(_cuda._NVRTC_OPTIONS), ptx_counts=counts)
    print(f"-arch={target}, options {' '.join(_cuda._NVRTC_OPTIONS)} -ftz=true: "
          + ("no flushing conversion, no fma, no float atomics" if not bad else f"offending PTX in {bad}"))
    return 1 if bad else 0


def big_histogram() -> int:
    """A histogram of 2^31 + 1,000,003 int16 values: indices above the int32 range."""
    import cupy
    import numpy as np

    from kernels import histogram

    n = 2**31 + 1_000_003
    v = cupy.zeros(n, dtype=cupy.int16)
    v[::1_000_003] = 7
    v[n - 1] = 100
    v[2**31 + 5] = -190
    start = time.perf_counter()
    counts = histogram(v, lo=-190, hi=150).get()  # device sync
    elapsed = time.perf_counter() - start
    sevens = len(range(0, n, 1_000_003)) - sum(1 for i in (n - 1, 2**31 + 5) if i % 1_000_003 == 0)
    expected = np.zeros(341, np.int64)
    expected[7 + 190], expected[100 + 190], expected[0] = sevens, 1, 1
    expected[190] = n - expected.sum()
    ok = int(counts.sum()) == n and np.array_equal(counts, expected)
    del v
    f = cupy.zeros(2**31 + 17, dtype=cupy.float32)
    f[-1] = 150.0
    f_counts = histogram(f, lo=-190, hi=150).get()
    ok_float = int(f_counts.sum()) == f.size and int(f_counts[-1]) == 1
    _record(big_histogram_values=n, big_histogram_s=round(elapsed, 4), big_histogram_exact=ok,
            big_histogram_float32_exact=ok_float)
    print(f"{n:,} int16 values: {'exact' if ok else 'WRONG'} in {elapsed:.3f} s; "
          f"{f.size:,} float32: {'exact' if ok_float else 'WRONG'}")
    return 0 if ok and ok_float else 1


def bandwidth(bench_json: str) -> int:
    """The GPU histogram's throughput against the device-to-device copy (bench.fits' 1e9 rows)."""
    rows = json.loads(Path(bench_json).read_text()).get("rows", [])
    copy = [r for r in rows if r.get("contender", "").startswith("device-to-device copy")]
    hist = [r for r in rows if "fraction of copy bandwidth" in r.get("contender", "")]
    if not copy or not hist:
        print(f"no 1e9-voxel GPU rows in {bench_json}")
        return 1
    n = hist[0]["n_voxels"]
    t_copy, t_hist, fraction = copy[0]["median_s"], hist[0]["median_s"], hist[0]["ratio_vs_reference"]
    copy_gbs = 2 * 2 * n / t_copy / 1e9  # int16: bytes read + written
    hist_gbs = 2 * n / t_hist / 1e9
    _record(copy_bandwidth_gb_s=round(copy_gbs, 1), histogram_read_gb_s=round(hist_gbs, 1),
            histogram_fraction_of_copy=round(fraction, 3), histogram_voxels=n,
            histogram_s=t_hist, copy_s=t_copy, histogram_gvoxels_s=round(n / t_hist / 1e9, 1))
    print(f"histogram of {n:.0e} int16: {t_hist * 1e3:.2f} ms = {hist_gbs:.0f} GB/s read "
          f"({n / t_hist / 1e9:.0f} Gvoxel/s); copy {copy_gbs:.0f} GB/s (read + write): "
          f"{100 * fraction:.0f} % of copy bandwidth (goal >= 60 %)")
    return 0 if fraction >= 0.6 else 1


def replicas(n_voxels: str = "1000000000") -> int:
    """The histogram's fraction of copy bandwidth with at most 8, 16 and 32 shared sub-histograms per block.

    The shipped cap (``kernels.histogram.MAX_REPLICAS``) trades conflict-free lanes (32 copies,
    43.6 KiB of a CT window per block) against blocks per SM (8 copies: 10.9 KiB); this measures
    which wins on this device. PASS when the shipped cap reaches 60 %.
    """
    import cupy

    from bench.fits import _gpu_histogram_bandwidth
    from kernels import histogram as histogram_module

    shipped = histogram_module.MAX_REPLICAS
    fractions = {}
    try:
        for cap in (8, 16, 32):
            histogram_module.MAX_REPLICAS = cap
            rows = _gpu_histogram_bandwidth(cupy, int(n_voxels))
            if not rows:
                print(f"not enough device memory for {int(n_voxels):,} int16 values")
                return 1
            fractions[cap] = round(rows[1]["ratio_vs_reference"], 3)
            print(f"at most {cap} sub-histograms per block: {100 * fractions[cap]:.0f} % of copy bandwidth")
    finally:
        histogram_module.MAX_REPLICAS = shipped
    best = max(fractions, key=lambda cap: fractions[cap])
    _record(histogram_fraction_by_max_replicas={str(k): v for k, v in fractions.items()},
            histogram_max_replicas_shipped=shipped, histogram_max_replicas_best=best)
    print(f"shipped cap {shipped}: {100 * fractions[shipped]:.0f} %; best cap {best}: "
          f"{100 * fractions[best]:.0f} % of copy bandwidth (goal >= 60 %)")
    return 0 if fractions[shipped] >= 0.6 else 1


def _clinical_manifest(work: Path, n_patients: int, n_slices: int) -> Path:
    """``n_patients`` clinical-size CTs (512^2, ``n_slices`` slices of 3 mm, JPEG 2000) and their manifest."""
    from bench._common import cohort_manifest, cohort_series
    from bench.e2e import lumbar_job

    slabs = cohort_series(cohort_manifest(work / "synth", "clinical", n_patients), "ct")
    rows = ["patient_id,label,split,ct_image,ct_roi"]
    for i, slab in enumerate(slabs):
        job = lumbar_job(slab, work / "series", n_slices=n_slices, transfer_syntax="jpeg2000")
        rows.append(f"{job['patient_id']},{i % 2},,{job['image']},{job['roi']}")
    manifest = work / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def _clinical_size() -> tuple[int, int]:
    return (int(os.environ.get("DEVICE_CHECK_CLINICAL_PATIENTS", "2")),
            int(os.environ.get("DEVICE_CHECK_CLINICAL_SLICES", "300")))


def clinical_build(work_dir: str) -> int:
    """The clinical-size CT series of :func:`clinical` and their manifest (CPU only: JPEG 2000 encoding)."""
    n_patients, n_slices = _clinical_size()
    manifest = _clinical_manifest(Path(work_dir), n_patients, n_slices)
    print(f"{n_patients} CT series of 512x512x{n_slices} JPEG 2000: {manifest}")
    return 0


def clinical(work_dir: str) -> int:
    """``sarco run`` on CPU and on GPU (inline) over clinical-size CT series, timed in one call.

    ``DEVICE_CHECK_CLINICAL_PATIENTS`` (2) series of 512^2 x ``DEVICE_CHECK_CLINICAL_SLICES``
    (300) slices of 3 mm in JPEG 2000, built from the clinical synthetic slabs (untimed); then
    the CPU run and the GPU run, one after the other on the same files (page cache warm for
    both after an untimed header read), their features.csv compared byte for byte.
    """
    import subprocess

    work = Path(work_dir)
    manifest = work / "manifest.csv"
    if not manifest.exists():   # device_check.sh builds it beforehand (clinical-build), on the CPU
        clinical_build(work_dir)
    series = [line.split(",")[3] for line in manifest.read_text().splitlines()[1:]]
    n_patients, n_slices = len(series), len(list(Path(series[0]).iterdir()))
    config = work / "config.yaml"
    config.write_text("run:\n  report: false\n  qa: false\n  habitats: false\nstats:\n  enabled: false\n")
    for path in sorted((work / "series").rglob("*")):   # warm the page cache for both runs
        if path.is_file():
            path.read_bytes()
    seconds = {}
    for backend in ("cpu", "gpu"):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "engine.cli", "run", "--manifest", str(manifest), "--out",
                               str(work / backend), "--config", str(config), "--backend", backend,
                               "--scheduler", "inline"], capture_output=True, text=True)
        seconds[backend] = round(time.perf_counter() - start, 2)
        print(done.stdout[-1500:], done.stderr[-1500:])
        if done.returncode != 0:
            print(f"sarco run --backend {backend} exited {done.returncode}")
            return 1
    same = (work / "cpu" / "features.csv").read_bytes() == (work / "gpu" / "features.csv").read_bytes()
    _record(clinical_series=n_patients, clinical_slices=n_slices, clinical_transfer_syntax="jpeg2000",
            clinical_cpu_run_s=seconds["cpu"], clinical_gpu_run_s=seconds["gpu"],
            clinical_gpu_speedup=round(seconds["cpu"] / seconds["gpu"], 3), clinical_features_identical=same)
    print(f"{n_patients} CT series of 512x512x{n_slices} JPEG 2000: CPU {seconds['cpu']:.1f} s, GPU "
          f"{seconds['gpu']:.1f} s ({seconds['cpu'] / seconds['gpu']:.2f}x); features.csv "
          + ("identical" if same else "DIFFER"))
    return 0 if same else 1


def _flatten(value, prefix=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _flatten(v, f"{prefix}[{i}]")
    else:
        yield prefix, value


def _relative(a: str, b: str) -> str:
    try:
        x, y = float(a), float(b)
    except ValueError:
        return ""
    return f" (relative {abs(x - y) / max(abs(x), abs(y)):.2e})" if x != y and max(abs(x), abs(y)) else ""


def _diff_features(a: Path, b: Path, limit: int = 30) -> list[str]:
    with a.open(newline="") as fa, b.open(newline="") as fb:
        rows_a, rows_b = list(csv.reader(fa)), list(csv.reader(fb))
    if not rows_a or not rows_b or rows_a[0] != rows_b[0]:
        return [f"header differs: {rows_a[:1]} vs {rows_b[:1]}"]
    header = rows_a[0]
    lines = [f"row count {len(rows_a) - 1} vs {len(rows_b) - 1}"] if len(rows_a) != len(rows_b) else []
    for row_a, row_b in zip(rows_a[1:], rows_b[1:], strict=False):  # a count mismatch is reported above
        for column, x, y in zip(header, row_a, row_b, strict=False):
            if x != y:
                lines.append(f"  {row_a[0]} {column}: {x} vs {y}{_relative(x, y)}")
    return lines[:limit] + ([f"  ... {len(lines) - limit} more"] if len(lines) > limit else [])


def compare(run_a: str, run_b: str) -> int:
    """thresholds.json and features.csv of two runs, byte for byte; the differing cells if not."""
    a, b = Path(run_a), Path(run_b)
    verdicts, details = [], []
    for name in ("thresholds.json", "features.csv"):
        fa, fb = a / name, b / name
        if not fa.exists() or not fb.exists():
            verdicts.append(f"{name} missing")
            continue
        if fa.read_bytes() == fb.read_bytes():
            verdicts.append(f"{name} identical ({fa.stat().st_size} bytes)")
            continue
        verdicts.append(f"{name} DIFFERS")
        if name == "features.csv":
            details += [f"{name}: cells that differ ({a.name} vs {b.name}):", *_diff_features(fa, fb)]
        else:
            ja, jb = dict(_flatten(json.loads(fa.read_text()))), dict(_flatten(json.loads(fb.read_text())))
            keys = sorted(set(ja) | set(jb))
            details += [f"{name}: keys that differ:"] + [
                f"  {k}: {ja.get(k)!r} vs {jb.get(k)!r}" for k in keys if ja.get(k) != jb.get(k)][:30]
    for line in details:
        print(line)
    identical = all(v.endswith("bytes)") for v in verdicts)
    _record(**{f"identical_{a.name}_vs_{b.name}": identical})
    print(f"{a.name} vs {b.name}: " + "; ".join(verdicts))
    return 0 if identical else 1


def report(steps_tsv: str, out_md: str) -> int:
    """The summary: one table row per check, then the figures (for bench/results/)."""
    figures_path = os.environ.get("DEVICE_CHECK_FIGURES")
    figures = json.loads(Path(figures_path).read_text()) if figures_path and Path(figures_path).exists() else {}
    with open(steps_tsv, newline="") as f:
        steps = [row for row in csv.reader(f, delimiter="\t") if row]
    figures["checks"] = [{"check": s[1], "verdict": s[0], "seconds": int(s[2]), "key": s[3]} for s in steps]
    if figures_path:
        Path(figures_path).write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    lines = [f"# Device check, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             f"Device: {figures.get('device_name', '?')} ({figures.get('multiprocessors', '?')} SMs), "
             f"CuPy {figures.get('cupy', '?')}, Python {figures.get('python', '?')}; "
             "missing packages: " + ("not checked" if "missing" not in figures else
                                     ", ".join(figures["missing"]) or "none"), "",
             "| check | verdict | s | key figure |", "|---|---|---:|---|"]
    lines += [f"| {s[1]} | {s[0]} | {s[2]} | {s[3].replace('|', '/')} |" for s in steps]
    Path(out_md).write_text("\n".join(lines) + "\n")
    return 0


def main(argv: list[str]) -> int:
    commands = {"missing": missing, "device": device, "ptx": ptx, "big-histogram": big_histogram,
                "bandwidth": bandwidth, "replicas": replicas, "clinical-build": clinical_build,
                "clinical": clinical, "compare": compare,
                "report": report}
    if not argv or argv[0] not in commands:
        print(f"usage: device_check.py {{{','.join(commands)}}} [args]", file=sys.stderr)
        return 2
    return commands[argv[0]](*argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
