"""Benchmark: cohort threshold fits on the pooled histogram vs the libraries on raw voxels.

For pooled CT-like integer voxels (muscle ~ N(45, 15) HU, fat ~ N(-90, 25) HU, 30 % fat,
int16, window [-190, 150] HU) at several sizes, each method is timed side by side in one
process:

* ``ours``: :func:`kernels.histogram` (the numpy ``bincount``) + the fit on the histogram,
  timed together, since that is what a cohort fit costs;
* the reference on the raw voxels: scikit-image ``threshold_otsu`` (otsu), scikit-learn
  ``KMeans(n_clusters=2, n_init=10, random_state=0)`` (kmeans) and
  ``GaussianMixture(2, random_state=0)`` (gmm), the references of the equivalence tests;
* ``method='histogram'`` rows time the histogram alone against ``numpy.histogram``;
* with CuPy and a GPU: the same ``ours`` on device arrays, cuML ``KMeans`` if installed, and the
  GPU histogram of 1e9 int16 voxels against a device-to-device copy of the same buffer.

Each row: ``{"bench": "fits", "method", "n_voxels", "contender", "median_s",
"ratio_vs_reference"}``. ``median_s`` is the median wall time of the repeats (3; 1 for
scikit-learn's GMM at 1e7 voxels and more), after one warm-up call except for scikit-learn.
``ratio_vs_reference`` is the speed-up ``reference median_s / contender median_s`` (> 1:
faster than the reference; 1.0 on the reference row; None where no reference ran), except on
the ``histogram`` row of 1e9 GPU voxels, where it is the fraction of copy bandwidth reached:
``(bytes read / t_histogram) / ((bytes read + bytes written) / t_copy)``.

Run ``python -m bench.fits [--quick]`` for a Markdown table. ``--quick`` runs 1e6 voxels only;
1e8 voxels run only without ``--quick`` and with >= 8 GiB of free memory, and then without the
scikit-learn contenders (minutes each).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

from kernels import array_namespace, bin_centers, fit_threshold, histogram

CT_WINDOW = (-190, 150)
FAT_FRACTION = 0.3
REPEATS = 3
_GIB = 1 << 30


def ct_voxels(n_voxels: int, seed: int = 0) -> np.ndarray:
    """Pooled CT-like ROI voxels, int16 HU, already windowed to [-190, 150]."""
    rng = np.random.default_rng(seed)
    n_fat = int(n_voxels * FAT_FRACTION)
    hu = np.empty(n_voxels, dtype=np.float32)
    hu[:n_fat] = rng.normal(-90, 25, n_fat)
    hu[n_fat:] = rng.normal(45, 15, n_voxels - n_fat)
    return np.clip(np.rint(hu), *CT_WINDOW).astype(np.int16)


def _median_time(call: Callable[[], object], repeats: int, sync: Callable[[], None] | None = None,
                 warmup: bool = False) -> float:
    if warmup:
        call()
        if sync:
            sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _row(method: str, n_voxels: int, contender: str, median_s: float,
         ratio: float | None) -> dict:
    return {"bench": "fits", "method": method, "n_voxels": int(n_voxels),
            "contender": contender, "median_s": float(median_s),
            "ratio_vs_reference": None if ratio is None else float(ratio)}


def _ours(voxels, method: str):
    lo, hi = CT_WINDOW
    counts = histogram(voxels, lo=lo, hi=hi)
    return fit_threshold((counts, bin_centers(lo, hi, xp=array_namespace(voxels))), method)


def _references(n_voxels: int) -> dict[str, tuple[str, Callable, int]]:
    """method -> (contender name, call on raw voxels, repeats)."""
    from skimage.filters import threshold_otsu
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    gmm_repeats = 1 if n_voxels >= 10**7 else REPEATS
    return {
        "otsu": ("skimage threshold_otsu (raw voxels)", threshold_otsu, REPEATS),
        "kmeans": ("sklearn KMeans n_init=10 (raw voxels)",
                   lambda v: KMeans(n_clusters=2, n_init=10, random_state=0).fit(v.reshape(-1, 1)),
                   REPEATS),
        "gmm": ("sklearn GaussianMixture (raw voxels)",
                lambda v: GaussianMixture(2, random_state=0).fit(v.reshape(-1, 1)),
                gmm_repeats),
    }


def _free_memory_bytes() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _cupy_or_none():
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        return cupy
    except Exception:  # noqa: BLE001 - no cupy, no driver, no device
        return None


def run(quick: bool = False, *, sizes: list[int] | None = None) -> list[dict]:
    """Run the benchmark; return one dict per (method, size, contender) (see module doc).

    ``sizes``: voxel counts instead of the defaults (the CI smoke test runs 10**4).
    """
    if sizes is None:
        sizes = [10**6] if quick else [10**6, 10**7]
        if not quick and _free_memory_bytes() >= 8 * _GIB:
            sizes.append(10**8)
    rows: list[dict] = []
    cupy = _cupy_or_none()
    lo, hi = CT_WINDOW

    for n_voxels in sizes:
        voxels = ct_voxels(n_voxels)
        with_sklearn = n_voxels <= 10**7

        # the partial statistic alone
        edges = np.arange(lo - 0.5, hi + 1.0, 1.0)
        t_ref = _median_time(lambda voxels=voxels, edges=edges: np.histogram(voxels, bins=edges), REPEATS, warmup=True)
        t_ours = _median_time(lambda voxels=voxels: histogram(voxels, lo=lo, hi=hi), REPEATS, warmup=True)
        rows.append(_row("histogram", n_voxels, "numpy.histogram (reference)", t_ref, 1.0))
        rows.append(_row("histogram", n_voxels, "ours: kernels.histogram (numpy)", t_ours,
                         t_ref / t_ours))

        for method, (name, call, repeats) in _references(n_voxels).items():
            if method != "otsu" and not with_sklearn:
                t_ref = None
            else:
                # warm-up only where it is cheap (skimage); sklearn's fits cost seconds
                t_ref = _median_time(lambda call=call, voxels=voxels: call(voxels), repeats, warmup=method == "otsu")
                rows.append(_row(method, n_voxels, name + " (reference)", t_ref, 1.0))
            t_ours = _median_time(lambda voxels=voxels, method=method: _ours(voxels, method), REPEATS, warmup=True)
            rows.append(_row(method, n_voxels, "ours: histogram + fit (numpy)", t_ours,
                             (t_ref / t_ours) if t_ref else None))
            if cupy is not None:
                device_voxels = cupy.asarray(voxels)
                sync = cupy.cuda.Device().synchronize
                t_gpu = _median_time(
                    lambda device_voxels=device_voxels, method=method: _ours(device_voxels, method),
                    REPEATS,
                    sync=sync,
                    warmup=True,
                )
                rows.append(_row(method, n_voxels, "ours: histogram + fit (cupy)", t_gpu,
                                 (t_ref / t_gpu) if t_ref else None))
                if method == "kmeans":
                    rows.extend(_cuml_rows(device_voxels, n_voxels, t_ref, sync))
                del device_voxels

    if cupy is not None:
        rows.extend(_gpu_histogram_bandwidth(cupy, 10**9))
    return rows


def _cuml_rows(device_voxels, n_voxels: int, t_ref: float | None, sync) -> list[dict]:
    try:
        import cuml  # noqa: F401

        from kernels.cuml_kmeans import kmeans_threshold_cuml
    except ImportError:
        return []
    t_cuml = _median_time(lambda: kmeans_threshold_cuml(device_voxels, seed=0), REPEATS,
                          sync=sync, warmup=True)
    return [_row("kmeans", n_voxels, "cuML KMeans n_init=1 (raw voxels, cupy)", t_cuml,
                 (t_ref / t_cuml) if t_ref else None)]


def _gpu_histogram_bandwidth(cupy, n_voxels: int) -> list[dict]:
    """GPU histogram of ``n_voxels`` int16 vs a device-to-device copy of the same buffer."""
    free_bytes, _ = cupy.cuda.runtime.memGetInfo()
    if free_bytes < 6 * n_voxels:  # source + copy destination + generation scratch
        return []
    voxels = cupy.empty(n_voxels, dtype=cupy.int16)
    chunk = 1 << 26
    for start in range(0, n_voxels, chunk):  # generate in pieces: no 4 GB float temporary
        size = min(chunk, n_voxels - start)
        hu = cupy.random.normal(45.0, 15.0, size, dtype=cupy.float32)
        voxels[start:start + size] = cupy.clip(cupy.rint(hu), *CT_WINDOW).astype(cupy.int16)
    destination = cupy.empty_like(voxels)
    lo, hi = CT_WINDOW

    def timed(call) -> float:
        call()  # warm-up: kernel compilation, allocator
        times = []
        for _ in range(REPEATS):
            start, stop = cupy.cuda.Event(), cupy.cuda.Event()
            start.record()
            call()
            stop.record()
            stop.synchronize()
            times.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3)
        return statistics.median(times)

    # cudaMemcpyAsync device-to-device: the bandwidth ceiling of a streaming read
    t_copy = timed(lambda: destination.data.copy_from_device_async(voxels.data, voxels.nbytes))
    t_hist = timed(lambda: histogram(voxels, lo=lo, hi=hi))
    bytes_read = voxels.nbytes
    fraction = (bytes_read / t_hist) / (2 * bytes_read / t_copy)
    return [
        _row("histogram", n_voxels, "device-to-device copy, int16 (reference)", t_copy, 1.0),
        _row("histogram", n_voxels, "ours: histogram.cu int16 (fraction of copy bandwidth)",
             t_hist, fraction),
    ]


def to_markdown(rows: list[dict]) -> str:
    """Rows as a Markdown table."""
    lines = ["| method | n_voxels | contender | median_s | ratio_vs_reference |",
             "|---|---:|---|---:|---:|"]
    for r in rows:
        ratio = r["ratio_vs_reference"]
        ratio_text = "n/a" if ratio is None else f"{ratio:.3g}"
        lines.append(f"| {r['method']} | {r['n_voxels']:.0e} | {r['contender']} | "
                     f"{r['median_s']:.4g} | {ratio_text} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1e6 voxels only")
    args = parser.parse_args(argv)
    print(to_markdown(run(quick=args.quick)))


if __name__ == "__main__":
    main()
