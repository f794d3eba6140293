"""QA for thousands of patients (issue 17): one PNG per patient and modality and a sortable contact sheet.

Each PNG shows the ROI sample's preview slice (the resampled slice with most ROI voxels) with the
ROI outline and the habitat colours of the first fitted method (muscle blue, fat red, as in the
report), and beside it a sagittal strip through the ROI's centre with the level marked (derived
ROIs: the slab's bounds and its plane; hand ROIs: the ROI's extent). ``qa/index.html`` lists every
PNG with the patient's features; clicking a column header sorts by it, so an analyst scans 2,000
ROIs in minutes (worst fat percentages or smallest ROIs first) and writes the flagged ids into the
exclusion list that ``run.exclude`` reads.
"""

from __future__ import annotations

import html
import io
from pathlib import Path

import numpy as np
import pandas as pd

from .contract import (
    CACHE_DIR,
    MODALITY_NAMES,
    QA_DIR,
    QA_INDEX,
    feature_name,
    qa_png_path,
    qa_strip_path,
    roi_volume_column,
    sample_path,
)
from .outputs import write_bytes, write_text

QA_DPI = 80


def _first_method(thresholds: dict, modality: str) -> tuple[str, float] | None:
    from .cohort_fit import threshold_values

    values = threshold_values(thresholds, modality)
    for method, value in values.items():
        if value is not None and np.isfinite(float(value)):
            return method, float(value)
    return None


def _patient_png(sample, strip, modality: str, fat_is: str, method_threshold, title: str) -> bytes:
    from matplotlib.figure import Figure

    from kernels import FAT, classify

    from .report import CT_DISPLAY_WINDOW_HU, FAT_RGBA, MUSCLE_RGBA, _slice_pixels

    fig = Figure(figsize=(6.4, 3.2), layout="constrained")
    axes = fig.subplots(1, 2, width_ratios=[1.0, 0.8])
    preview = np.asarray(sample.preview, dtype=float)
    window = CT_DISPLAY_WINDOW_HU if modality == "ct" else tuple(np.percentile(preview, [1, 99]))
    ax = axes[0]
    ax.imshow(preview, cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest")
    pixels = _slice_pixels(sample)
    if pixels is not None:
        y, x, values, in_window = pixels
        roi = np.zeros(preview.shape, dtype=float)
        roi[y, x] = 1.0
        if method_threshold is not None:
            method, threshold = method_threshold
            fat = np.zeros(values.shape, bool)
            fat[in_window] = classify(values[in_window], [threshold], fat_is=fat_is)[0] == FAT
            overlay = np.zeros(preview.shape + (4,), dtype=float)
            overlay[y[in_window & ~fat], x[in_window & ~fat]] = MUSCLE_RGBA
            overlay[y[in_window & fat], x[in_window & fat]] = FAT_RGBA
            ax.imshow(overlay, interpolation="nearest")
        ax.contour(roi, levels=[0.5], colors=["yellow"], linewidths=0.6)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax = axes[1]
    if strip is not None:
        z = strip["z_mm"]
        image = strip["strip"]
        order = np.argsort(z)[::-1]          # superior at the top whatever the slice order
        extent = (0.0, image.shape[1] * float(strip["row_mm"]), float(z.min()), float(z.max()))
        strip_window = window if modality == "ct" else tuple(np.percentile(image, [1, 99]))
        ax.imshow(image[order], cmap="gray", vmin=strip_window[0], vmax=strip_window[1], aspect="auto",
                  extent=extent, interpolation="nearest")
        marks = list(strip["marks_mm"])
        for i, mark in enumerate(marks):
            middle = len(marks) == 3 and i == 1
            ax.axhline(mark, color="orange" if middle else "yellow", lw=1.0 if middle else 0.7,
                       ls="-" if middle else "--")
        ax.set_title(f"sagittal, {strip['level']} (z mm)", fontsize=8)
        ax.set_xticks([])
        ax.tick_params(labelsize=7)
    else:
        ax.set_axis_off()
        ax.set_title("no strip", fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=QA_DPI)
    return buffer.getvalue()


def _load_strip(path: Path):
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: (data[k] if data[k].ndim else data[k].item()) for k in data.files}
    except (OSError, ValueError, KeyError):
        return None


def _sheet_columns(modality: str, features: pd.DataFrame) -> list[str]:
    wanted = [feature_name(modality, m, "fat", "percent") for m in ("otsu", "kmeans", "gmm", "fixed")]
    wanted += [roi_volume_column(modality)]
    return [c for c in wanted if c in features.columns]


def write_qa(run_dir, features: pd.DataFrame, summaries: list[dict], thresholds: dict, fat_is: dict) -> Path:
    """Write ``qa/<patient>__<modality>.png`` for every measured series and ``qa/index.html``.

    Parameters
    ----------
    run_dir : path-like
    features : DataFrame
        The run's feature table (one row per patient).
    summaries : list of dict
        Pass 1's summaries (``status`` ok ones get a PNG).
    thresholds : dict
        ``thresholds.json``'s content.
    fat_is : dict
        Modality -> ``low``/``high``.
    """
    from .preprocess import RoiSample

    run_dir = Path(run_dir)
    cache = run_dir / CACHE_DIR
    rows = []
    table = features.set_index("patient_id")
    for summary in sorted(summaries, key=lambda s: (s["modality"], s["patient_id"])):
        pid, modality = summary["patient_id"], summary["modality"]
        if summary["status"] != "ok" or modality not in thresholds.get("modalities", {}):
            continue
        sample = RoiSample.load(sample_path(cache, pid, modality))
        strip = _load_strip(qa_strip_path(cache, pid, modality))
        derived = summary.get("derived_roi")
        source = f"derived {derived['level']}" if derived else "hand ROI"
        png = _patient_png(sample, strip, modality, fat_is[modality], _first_method(thresholds, modality),
                           f"{pid} {MODALITY_NAMES[modality]} ({source})")
        target = qa_png_path(run_dir, pid, modality)
        write_bytes(target, png)
        values = {c: table.at[pid, c] if pid in table.index else np.nan
                  for c in _sheet_columns(modality, features)}
        rows.append((pid, modality, source, target.name, values))
    index = run_dir / QA_DIR / QA_INDEX
    write_text(index, _contact_sheet(rows))
    return index


def _contact_sheet(rows) -> str:
    columns = sorted({c for *_, values in rows for c in values}, key=lambda c: (c.split("_")[0], c))
    head = "".join(f'<th onclick="sortBy({i + 3})">{html.escape(c)}</th>' for i, c in enumerate(columns))
    body = []
    for pid, modality, source, name, values in rows:
        cells = "".join(
            f'<td data-v="{values.get(c, float("nan")):.6g}">'
            f'{"" if not np.isfinite(values.get(c, np.nan)) else f"{values[c]:.2f}"}</td>' for c in columns)
        body.append(f'<tr><td data-v="{html.escape(pid)}">{html.escape(pid)}</td><td data-v="{modality}">{modality}'
                    f'</td><td><img loading="lazy" src="{html.escape(name)}" alt="{html.escape(pid)}" '
                    f'title="{html.escape(source)}"></td>{cells}</tr>')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sarco-engine QA contact sheet</title>
<style>
body {{ font: 13px system-ui, sans-serif; margin: 1em; }}
table {{ border-collapse: collapse; }}
th {{ cursor: pointer; background: #eee; position: sticky; top: 0; padding: 4px 6px; }}
th:hover {{ background: #ddd; }}
td {{ border-top: 1px solid #ddd; padding: 2px 6px; text-align: right; vertical-align: middle; }}
img {{ height: 160px; display: block; }}
</style></head><body>
<h1>QA contact sheet ({len(rows)} series)</h1>
<p>Click a column header to sort (again to reverse). Yellow: the ROI outline; blue/red: muscle/fat
of the first fitted method; right: a sagittal strip with the slab (dashed) and the level's plane
(orange). Write the ids of series to exclude into a CSV (patient_id, modality, reason) and give it
to the next run as <code>run.exclude</code>.</p>
<table id="sheet"><thead><tr><th onclick="sortBy(0)">patient</th><th onclick="sortBy(1)">modality</th>
<th>QA</th>{head}</tr></thead><tbody>
{chr(10).join(body)}
</tbody></table>
<script>
let last = -1, dir = 1;
function sortBy(col) {{
  dir = (col === last) ? -dir : 1; last = col;
  const tbody = document.querySelector('#sheet tbody');
  const rows = Array.from(tbody.rows);
  const key = r => r.cells[col].dataset.v;
  rows.sort((a, b) => {{
    const x = parseFloat(key(a)), y = parseFloat(key(b));
    if (!isNaN(x) && !isNaN(y)) return dir * (x - y);
    if (isNaN(x) !== isNaN(y)) return isNaN(x) ? 1 : -1;
    return dir * String(key(a)).localeCompare(String(key(b)));
  }});
  rows.forEach(r => tbody.appendChild(r));
}}
</script></body></html>
"""
