"""Optional GPU reference: cuML K-means on the raw voxels (for benchmarks and cross-checks).

The engine's K-means fit is :func:`kernels.fits.kmeans_threshold` on the pooled histogram;
this module exists to compare it with RAPIDS cuML's ``KMeans`` on the voxels themselves.
cuML is imported only when the function is called.
"""

from __future__ import annotations

from kernels.fits import KMeansResult
from kernels.xp import array_namespace

__all__ = ["kmeans_threshold_cuml"]


def kmeans_threshold_cuml(values, seed: int = 0, *, n_init: int = 1,
                          max_iter: int = 300, tol: float = 1e-4) -> KMeansResult:
    """Two-cluster cuML ``KMeans`` (k-means++ init) on raw voxels; threshold = centroid midpoint.

    Parameters
    ----------
    values : ndarray (cupy, or numpy which cuML copies to the device), any shape
        Windowed ROI intensities, intensity units. Flattened to ``(n, 1)`` float64.
    seed : int, optional
        ``random_state`` of cuML's KMeans.
    n_init, max_iter, tol : optional
        Passed to cuML's ``KMeans``.

    Returns
    -------
    KMeansResult
        With ``method='kmeans'``; ``converged`` is ``n_iter < max_iter``.

    Raises
    ------
    ImportError
        If cuML (or CuPy) is not importable, with a message saying how to get it.
    """
    array_namespace(values)  # TypeError for anything but a numpy/cupy array
    try:
        import cupy  # lazy: CuPy, GPU runs only
        from cuml.cluster import KMeans  # lazy: cuML, the GPU cross-check only
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError(
            "kmeans_threshold_cuml needs RAPIDS cuML and CuPy (pip install "
            "'sarco-engine[gpu]' on a machine with a CUDA GPU)"
        ) from error
    samples = cupy.asarray(values, dtype=cupy.float64).reshape(-1, 1)
    model = KMeans(n_clusters=2, init="k-means++", n_init=n_init, max_iter=max_iter, tol=tol,
                   random_state=seed, output_type="cupy")
    model.fit(samples)
    centroids = cupy.asnumpy(model.cluster_centers_).ravel()  # device sync
    low, high = sorted(float(c) for c in centroids)
    n_iter = int(model.n_iter_)
    return KMeansResult(
        threshold=0.5 * (low + high),
        centroids=(low, high),
        inertia=float(model.inertia_),
        n_iter=n_iter,
        converged=n_iter < max_iter,
        seed=int(seed),
    )
