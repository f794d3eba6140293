"""Benchmark: cohort scaling of ``engine.batch.pipeline.run`` (time per patient and peak memory vs N).

For each cohort size N (small synthetic patients, CT + MRI each), the whole run (pass 1, the
cohort fits, pass 2, the tables; statistics, report and habitat maps off) runs in its own
subprocess (``python -m bench.scaling --child ...``), so each size's peak memory is its own:

* ``peak_rss_tree_mib``: peak of the summed RSS of the child and all its descendants (the Dask
  workers), sampled every 0.1 s with psutil: the run's whole footprint;
* ``peak_rss_main_mib``: the child's own ``ru_maxrss`` (the scheduler side: manifest, summaries,
  feature table);
* ``peak_rss_worker_mib``: the largest ``ru_maxrss`` of any reaped worker process
  (``RUSAGE_CHILDREN`` of the child, a max, not a sum).

The pipeline keeps volumes and ROI samples out of the scheduler (tasks.py), so memory should
stay flat in N: goal RSS(largest) / RSS(smallest) <= 1.2, and time per patient constant (goal
ratio ~ 1). ``pipeline_s`` includes starting and closing the local Dask cluster (a few
seconds): at the quick sizes that fixed cost shows in the time-per-patient ratio, at 200 / 2000
it does not. Synthesis is excluded: the cohort is synthesized once beforehand and cached under
the cache folder (the small cohorts are the first rows of the largest one).

Run ``python -m bench --only scaling [--quick] [--scaling-sizes 200,2000]``; quick sizes 6, 12.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ._common import (
    TreeRssSampler,
    cohort_manifest,
    default_cache_dir,
    peak_rss_children_mb,
    peak_rss_self_mb,
    ratio,
    usable_cores,
)

QUICK_SIZES = (6, 12)
FULL_SIZES = (200, 2000)
GOAL_RSS_RATIO = 1.2
RESULT_PREFIX = "SCALING-RESULT "


def _child(manifest: str, out_dir: str, scheduler: str | None, workers: int | None, backend: str,
           preprocess: dict | None = None) -> dict:
    from engine.batch.pipeline import run
    from engine.config import load_config

    overrides = {"run": {"scheduler": scheduler, "workers": workers, "backend": backend,
                         "report": False, "habitats": False},
                 "stats": {"enabled": False}, **({"preprocess": preprocess} if preprocess else {})}
    config = load_config(overrides=overrides)
    with TreeRssSampler(interval_s=0.1) as sampler:
        start = time.perf_counter()
        result = run(manifest, out_dir=out_dir, config=config, force=True)
        elapsed = time.perf_counter() - start
    return {"pipeline_s": elapsed, "n_patients": result.n_patients, "n_failed": result.n_failed,
            "backend": result.backend, "peak_rss_tree_mib": sampler.peak_mb,
            "peak_rss_main_mib": peak_rss_self_mb(), "peak_rss_worker_mib": peak_rss_children_mb()}


def run_size(manifest: Path, *, scheduler: str | None, workers: int | None, backend: str,
             work_dir: Path, preprocess: dict | None = None) -> dict:
    """One cohort size in a fresh subprocess; returns the child's measurements."""
    out_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work_dir)).resolve()
    command = [sys.executable, "-m", "bench.scaling", "--child", "--manifest", str(Path(manifest).resolve()),
               "--out", str(out_dir), "--backend", backend]
    if scheduler:
        command += ["--scheduler", scheduler]
    if workers:
        command += ["--workers", str(workers)]
    if preprocess:
        command += ["--preprocess", json.dumps(preprocess)]
    # The child imports this package from the same tree as the parent, installed or not.
    repo_root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"scaling child for {manifest.name} exited {done.returncode}: "
                           f"{(done.stderr or done.stdout).strip()[-2000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def run(quick: bool = False, *, cache_dir: str | Path | None = None, sizes=None, scheduler: str | None = None,
        workers: int | None = None, backend: str = "cpu", preprocess: dict | None = None) -> list[dict]:
    """Time ``engine.batch.pipeline.run`` on cohorts of each size in ``sizes`` (quick 6, 12; full 200, 2000).

    ``preprocess``: overrides of the config's ``preprocess`` section (the CI smoke test turns N4 off).
    """
    sizes = sorted(int(n) for n in (sizes or (QUICK_SIZES if quick else FULL_SIZES)))
    cache_dir = Path(cache_dir or default_cache_dir())
    workers = workers or usable_cores()
    cohort_manifest(cache_dir, "small", sizes[-1])  # synthesize the largest once; the rest are its prefixes
    rows = []
    work_dir = cache_dir / "scaling-runs"
    work_dir.mkdir(parents=True, exist_ok=True)
    for n in sizes:
        measured = run_size(cohort_manifest(cache_dir, "small", n), scheduler=scheduler, workers=workers,
                            backend=backend, work_dir=work_dir, preprocess=preprocess)
        rows.append({"bench": "scaling", "n_patients": n, "scheduler": scheduler or "local cluster",
                     "workers": workers, "backend": measured["backend"], "n_failed": measured["n_failed"],
                     "pipeline_s": measured["pipeline_s"], "s_per_patient": measured["pipeline_s"] / n,
                     "peak_rss_tree_mib": measured["peak_rss_tree_mib"],
                     "peak_rss_main_mib": measured["peak_rss_main_mib"],
                     "peak_rss_worker_mib": measured["peak_rss_worker_mib"]})
    smallest = rows[0]
    for row in rows:
        row["rss_tree_ratio_vs_smallest"] = ratio(row["peak_rss_tree_mib"], smallest["peak_rss_tree_mib"])
        row["rss_main_ratio_vs_smallest"] = ratio(row["peak_rss_main_mib"], smallest["peak_rss_main_mib"])
        row["time_per_patient_ratio_vs_smallest"] = ratio(row["s_per_patient"], smallest["s_per_patient"])
        row["goal_rss_ratio_max"] = GOAL_RSS_RATIO
        row["rss_goal_met"] = row["rss_tree_ratio_vs_smallest"] <= GOAL_RSS_RATIO
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help="internal: run one cohort and print its measurements")
    parser.add_argument("--manifest")
    parser.add_argument("--out")
    parser.add_argument("--scheduler", default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--backend", default="cpu", choices=("cpu", "gpu", "auto"))
    parser.add_argument("--preprocess", type=json.loads, default=None, help="internal: preprocess overrides (JSON)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default=None, help="comma-separated cohort sizes, e.g. 200,2000")
    parser.add_argument("--cache", default=None, help="where synthetic cohorts are kept")
    args = parser.parse_args(argv)
    if args.child:
        measured = _child(args.manifest, args.out, args.scheduler, args.workers, args.backend, args.preprocess)
        print(RESULT_PREFIX + json.dumps(measured), flush=True)
        return 0
    from ._common import markdown_table

    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
    print(markdown_table(run(args.quick, cache_dir=args.cache, sizes=sizes, scheduler=args.scheduler,
                             workers=args.workers, backend=args.backend)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
