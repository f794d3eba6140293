"""Benchmark: the statistics stage's cost, one CV split vs repeated CV vs repeated CV with the test against chance.

On a demo-like feature table (60 patients, 36 training and 24 validation; CT with 4 methods and MRI
with 3, 6 features each; age, sex and BMI as clinical columns; the label shifts the CT fat features),
:func:`engine.stats.run_study` is timed side by side in one process with:

* ``one split``: 5-fold CV once, no test (the study before repeated CV; the reference);
* ``repeated CV``: 5 folds x 20 repeats, no test;
* ``repeated CV + chance``: the defaults of ``configs/default.yaml`` (5 x 20, 99 permutations of
  5 repeats each), in this process (a run spreads the permutations over its Dask workers);

and the in-fold selection alone, the DataFrame path (:func:`engine.stats.logistic.multivariable_logistic`)
against the float-matrix path that resampling uses (:func:`engine.stats._select.select_numeric`), on
the training rows of one imaging model.

Each row: ``{"bench": "study", "setting", "n_patients", "models", "median_s", "cpu_s",
"ratio_vs_reference"}`` (``cpu_s``: this process's CPU time, what a loaded shared machine's wall
time hides); ``ratio_vs_reference`` is ``cpu_s / reference cpu_s`` (the cost as a multiple of the
reference) for the study rows, and the speed-up ``reference / contender`` for the selection rows.
``--quick``: 40 patients, two CT methods, 9 permutations.

Run ``python -m bench.study [--quick]`` for a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from bench._common import markdown_table
from engine.contract import method_features, model_name
from engine.stats import run_study
from engine.stats._select import select_numeric
from engine.stats.logistic import multivariable_logistic

MODALITY_METHODS = {"ct": ["otsu", "kmeans", "gmm", "fixed"], "mri": ["otsu", "kmeans", "gmm"]}


def feature_table(n: int = 60, seed: int = 0, methods: dict[str, list[str]] | None = None
                  ) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """A demo-like feature table and its imaging models (name -> feature columns)."""
    methods = MODALITY_METHODS if methods is None else methods
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.r_[np.ones(n // 3), np.zeros(n - n // 3)])
    table = pd.DataFrame({"patient_id": [f"B{i:03d}" for i in range(n)], "label": y,
                          "split": np.where(np.arange(n) < int(0.6 * n), "train", "validation"),
                          "age": rng.normal(70, 7, n) + 2 * y, "sex": rng.choice(["F", "M"], n),
                          "bmi": rng.normal(26, 4, n)})
    models = {}
    for modality, names in methods.items():
        for method in names:
            columns = method_features(modality, method)
            fat = rng.normal(20, 5, n) + (4 * y if modality == "ct" else 1.5 * y)
            for column in columns:
                if column.endswith("fat_percent"):
                    table[column] = fat
                elif column.endswith("muscle_percent"):
                    table[column] = 100 - fat
                elif column.endswith("_mean"):
                    table[column] = rng.normal(-80 if "fat" in column else 45, 8, n)
                else:
                    table[column] = rng.normal(3e4, 5e3, n)
            models[model_name(modality, method)] = columns
    return table, models


def _time(call, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of this process (CPU time is what a shared machine's load hides)."""
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        call()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return float(np.median(times)), float(np.median(cpu))


def _study_rows(table, models, cv_repeats: int, permutations: int) -> list[dict]:
    settings = {"one split": dict(repeats=1, permutations=0),
                "repeated CV": dict(repeats=cv_repeats, permutations=0),
                "repeated CV + chance": dict(repeats=cv_repeats, permutations=permutations,
                                             chance_repeats=min(5, cv_repeats))}
    rows, reference = [], None
    for name, options in settings.items():
        seconds, cpu = _time(lambda options=options: run_study(table, clinical_columns=["age", "sex", "bmi"],
                                                               imaging_models=models, seed=42, **options), 1)
        reference = reference or cpu
        label = f"{name} ({options['permutations']} permutations)" if options["permutations"] else name
        rows.append({"bench": "study", "setting": label, "n_patients": len(table), "models": len(models) + 2,
                     "median_s": round(seconds, 3), "cpu_s": round(cpu, 3),
                     "ratio_vs_reference": round(cpu / reference, 2)})
    return rows


def _selection_rows(table, models, repeats: int) -> list[dict]:
    train = table[table["split"] == "train"]
    columns = next(iter(models.values()))
    X = train[columns].to_numpy(dtype=float)
    y = train["label"].to_numpy(dtype=float)
    frame, frame_cpu = _time(lambda: multivariable_logistic(train, "label", columns, profile_ci=False), repeats)
    matrix, matrix_cpu = _time(lambda: select_numeric(X, y), repeats)
    return [{"bench": "study", "setting": "one selection, DataFrame path", "n_patients": len(train), "models": 1,
             "median_s": round(frame, 5), "cpu_s": round(frame_cpu, 5), "ratio_vs_reference": 1.0},
            {"bench": "study", "setting": "one selection, float-matrix path", "n_patients": len(train), "models": 1,
             "median_s": round(matrix, 5), "cpu_s": round(matrix_cpu, 5),
             "ratio_vs_reference": round(frame_cpu / max(matrix_cpu, 1e-9), 1)}]


def run(quick: bool = False, *, n_patients: int | None = None, cv_repeats: int = 20,
        permutations: int | None = None) -> list[dict]:
    """The rows above; ``n_patients``, ``cv_repeats`` and ``permutations`` size it down (the CI smoke test)."""
    table, models = feature_table(n_patients or (40 if quick else 60),
                                  methods={"ct": ["otsu", "fixed"]} if quick else None)
    permutations = permutations if permutations is not None else (9 if quick else 99)
    return _selection_rows(table, models, 3 if quick else 10) + _study_rows(table, models, cv_repeats, permutations)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    print(markdown_table(run(args.quick)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
