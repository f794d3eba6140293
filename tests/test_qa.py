"""Issue 23: QA a reader can trust (orientation, colours, the contact sheet).

The phantom is built here in physical (LPS) space with SimpleITK and stored both ways with
SimpleITK's own ``DICOMOrient`` (LPS as a DICOM series stores it, RAS as a NIfTI from most
tools does): the truth is where things are in the patient, never the engine's output.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from PIL import Image

from engine.contract import DERIVED_ROI_DIR, DISC_PLANES_CSV, QA_DIR, QA_INDEX, QA_PANELS_JSON
from engine.measure.preprocess import preprocess
from engine.qa import panel as qa_panel
from engine.qa import sheet as qa_sheet
from engine.qa.orientation import slice_view
from engine.qa.strip import sagittal_strip
from engine.runfolder import ModalityThresholds, Thresholds

# phantom geometry, LPS mm (+x patient's left, +y posterior, +z superior)
CANAL_X_MM = 0.0
LEFT_MUSCLE = (20.0, 25.0, 14.0, 11.0)    # centre x, centre y, radius x, radius y: the patient's LEFT is bigger
RIGHT_MUSCLE = (-17.0, 25.0, 10.0, 10.0)
LESION = (22.0, 25.0, 5.0)                # a fat lesion in the LEFT muscle only
MARKER = (35.0, -5.0)                     # an air marker (black), patient's left and anterior


def _phantom(orientation: str):
    """(CT image, ROI mask) of a lumbar-like phantom, stored in ``orientation`` (``LPS`` or ``RAS``)."""
    size, spacing = (100, 90, 24), 1.0
    origin = (-50.0, -45.0, -12.0)
    x = origin[0] + np.arange(size[0]) * spacing
    y = origin[1] + np.arange(size[1]) * spacing
    z = origin[2] + np.arange(size[2]) * spacing
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    hu = np.full(zz.shape, 40.0, np.float32)
    hu[(xx - CANAL_X_MM) ** 2 + (yy + 10) ** 2 < 12 ** 2] = 400.0          # vertebral body
    hu[(xx - CANAL_X_MM) ** 2 + (yy - 8) ** 2 < 5 ** 2] = 10.0             # canal
    hu[(np.abs(xx - CANAL_X_MM) < 2) & (yy > 13) & (yy < 40)] = 500.0       # spinous process
    hu[(xx - MARKER[0]) ** 2 + (yy - MARKER[1]) ** 2 < 4 ** 2] = -1000.0
    roi = np.zeros(zz.shape, np.uint8)
    for cx, cy, rx, ry in (LEFT_MUSCLE, RIGHT_MUSCLE):
        roi[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1] = 1
    roi[np.abs(zz) > 6] = 0
    hu[(roi > 0) & ((xx - LESION[0]) ** 2 + (yy - LESION[1]) ** 2 < LESION[2] ** 2)] = -100.0
    image, mask = sitk.GetImageFromArray(hu), sitk.GetImageFromArray(roi)
    for item in (image, mask):
        item.SetOrigin(origin)
        item.SetSpacing((spacing,) * 3)
    if orientation != "LPS":
        image, mask = sitk.DICOMOrient(image, orientation), sitk.DICOMOrient(mask, orientation)
    return image, mask


FITTED = qa_panel.OverlayChoice("otsu", -30.0, "Otsu split at -30.0 HU")


def _axial(orientation: str, choice=FITTED):
    image, mask = _phantom(orientation)
    sample = preprocess(image, mask, spacing_mm=(1.0, 1.0, 1.0), margin_mm=30.0, window=(-190.0, 150.0))
    rgb, view, _ = qa_panel.axial_image(sample, choice, "low", "ct", scale=1.0)
    return sample, rgb, view


def test_storage_directions_differ_as_the_issue_says():
    lps, _ = _phantom("LPS")
    ras, _ = _phantom("RAS")
    assert np.allclose(np.diag(np.reshape(lps.GetDirection(), (3, 3))), (1, 1, 1))
    assert np.allclose(np.diag(np.reshape(ras.GetDirection(), (3, 3))), (-1, -1, 1))


@pytest.mark.parametrize("orientation", ["LPS", "RAS"])
def test_issue23_axial_panel_is_radiological_whatever_the_storage(orientation):
    """Anterior up, the patient's left on image-right: the marker (left, anterior) lands top-right."""
    _, rgb, view = _axial(orientation)
    assert (view.top, view.bottom, view.left, view.right) == ("A", "P", "R", "L")
    rows, cols = np.nonzero(rgb.max(axis=2) == 0)
    assert rows.size, "the marker is not on the slice"
    assert rows.mean() < rgb.shape[0] / 2 and cols.mean() > rgb.shape[1] / 2


def test_issue23_same_patient_stored_ras_and_lps_gives_the_same_panel_pixels():
    _, lps, _ = _axial("LPS")
    _, ras, _ = _axial("RAS")
    assert lps.shape == ras.shape
    np.testing.assert_array_equal(lps, ras)


@pytest.mark.parametrize("orientation", ["LPS", "RAS"])
def test_issue23_left_only_lesion_is_red_on_image_right(orientation):
    _, rgb, _ = _axial(orientation)
    r, g, b = (rgb[..., c].astype(int) for c in range(3))
    red = (r > g + 80) & (r > b + 80)
    cols = np.nonzero(red)[1]
    assert cols.size > 20
    assert (cols > rgb.shape[1] / 2).all()


def test_slice_view_of_a_sagittally_stored_slice_puts_superior_up_and_anterior_left():
    # index i along -y (anterior), j along -z (inferior), k along +x: a sagittal acquisition
    direction = (0, 0, 1, -1, 0, 0, 0, -1, 0)
    view = slice_view(direction, row_axis=1, col_axis=0)
    assert view.plane == "sagittal" and (view.top, view.left, view.right, view.bottom) == ("S", "A", "P", "I")
    storage = np.arange(6).reshape(2, 3)   # rows j (going inferior), cols i (going anterior)
    np.testing.assert_array_equal(view.apply(storage), storage[:, ::-1])


@pytest.mark.parametrize("orientation", ["LPS", "RAS"])
def test_issue23_strip_goes_through_the_canal_not_the_roi_median(orientation):
    image, mask = _phantom(orientation)
    roi = sitk.GetArrayFromImage(mask)
    index = np.argwhere(roi)[:, ::-1]
    xs = np.array([mask.TransformIndexToPhysicalPoint([int(v) for v in p])[0] for p in index[::25]])
    assert abs(np.median(xs) - CANAL_X_MM) > 3.0, "the phantom must put the ROI's median off the midline"
    strip = sagittal_strip(image, mask, None)
    assert abs(strip["x_mm"] - CANAL_X_MM) <= 2.0
    assert (strip["top"], strip["bottom"], strip["left"], strip["right"]) == ("S", "I", "A", "P")
    assert np.all(np.diff(strip["z_mm"]) < 0), "superior rows first"
    # anterior on the left: the vertebral body (anterior of the canal) is left of the canal's CSF
    row = strip["strip"][strip["strip"].shape[0] // 2]
    assert np.argmax(row >= 350) < np.argmax((row > 0) & (row < 20))
    np.testing.assert_allclose(sorted(strip["marks_mm"]), [-6.0, 6.0], atol=0.51)


def test_issue23_strip_marks_the_disc_plane_and_slab_and_uses_the_canal_from_the_plane():
    image, mask = _phantom("RAS")
    derived = SimpleNamespace(plane_mm=1.5, thickness_mm=10.0, level="L3/L4", canal_x_mm=4.0)
    strip = sagittal_strip(image, mask, derived)
    assert strip["x_mm"] == 4.0 and "disc plane" in strip["midline"]
    np.testing.assert_allclose(strip["marks_mm"], [-3.5, 1.5, 6.5])
    rgb, marks = qa_panel.strip_image(strip, "ct", scale=1.0)
    z_top = strip["z_mm"][0]
    plane_row = [row for row, kind in marks if kind == "plane"][0]
    assert abs(plane_row - (z_top - 1.5) / abs(strip["row_mm"])) <= 1


def _one_tissue_json(one_tissue: bool, fixed: bool = True) -> dict:
    """A modality's thresholds.json entry: Otsu and K-means at the muscle peak, fixed at -29.5 HU."""
    methods = {"otsu": {"threshold": 40.0}, "kmeans": {"threshold": 41.0}}
    if fixed:
        methods["fixed"] = {"threshold": -29.5}
    return {"methods": methods, "diagnostic": {"likely_one_tissue": one_tissue}}


def _one_tissue_entry(one_tissue: bool, fixed: bool = True, modality: str = "ct") -> ModalityThresholds:
    return ModalityThresholds.from_json(modality, _one_tissue_json(one_tissue, fixed))


def _ct_thresholds(one_tissue: bool) -> Thresholds:
    return Thresholds({"ct": _one_tissue_entry(one_tissue)}, ())


def test_issue23_one_tissue_warning_paints_the_fixed_reference_not_the_fitted_split():
    """Healthy muscle only: the fitted split (at the muscle peak) would paint about half of it red."""
    rng = np.random.default_rng(23)
    image, mask = _phantom("LPS")
    hu = sitk.GetArrayFromImage(image)
    roi = sitk.GetArrayFromImage(mask) > 0
    hu[roi] = rng.normal(40.0, 15.0, int(roi.sum()))
    muscle = sitk.GetImageFromArray(hu.astype(np.float32))
    muscle.CopyInformation(image)
    sample = preprocess(muscle, mask, spacing_mm=(1.0, 1.0, 1.0), margin_mm=5.0, window=(-190.0, 150.0))
    warned = qa_panel.overlay_choice(_one_tissue_entry(True))
    assert warned.method == "fixed" and warned.one_tissue
    assert "Fixed HU" in warned.legend and "ONE tissue" in warned.legend
    fitted = qa_panel.overlay_choice(_one_tissue_entry(False))
    assert fitted.method == "otsu" and not fitted.one_tissue
    _, _, fat_fitted = qa_panel.tissue_layers(sample, fitted, "low")
    roi_px, _, fat_warned = qa_panel.tissue_layers(sample, warned, "low")
    values = sample.values[sample.flat_index // (sample.grid.size[0] * sample.grid.size[1]) == sample.preview_z]
    assert fat_fitted.sum() / roi_px.sum() == pytest.approx(np.mean(values <= 40.0), abs=0.01)
    assert fat_warned.sum() / roi_px.sum() == pytest.approx(np.mean(values <= -29.5), abs=0.01)
    assert fat_warned.sum() / roi_px.sum() < 0.01 < 0.3 < fat_fitted.sum() / roi_px.sum()


def test_issue23_one_tissue_without_a_fixed_reference_paints_nothing_and_says_so():
    choice = qa_panel.overlay_choice(_one_tissue_entry(True, fixed=False, modality="mri"))
    assert choice.method is None and choice.one_tissue and "not painted" in choice.legend


def test_panel_png_has_side_letters_band_and_legend():
    sample, _, _ = _axial("RAS")
    image, mask = _phantom("RAS")
    picture = qa_panel.render_panel(sample, sagittal_strip(image, mask, None), modality="ct", fat_is="low",
                                    choice=FITTED, title="SYN9 CT hand ROI")
    assert isinstance(picture, Image.Image) and picture.width >= qa_panel.MIN_WIDTH_PX
    assert qa_panel.png_bytes(picture)[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- the contact sheet
def _synthetic_sheet(tmp_path, n_patients: int, *, one_tissue: bool = False, disc_planes: bool = False):
    """A run folder with only what the sheet reads: panels.json, features.csv, thresholds.json."""
    rng = np.random.default_rng(4)
    ids = [f"P{i:05d}" for i in range(n_patients)]
    volume = rng.normal(110_000, 8_000, n_patients)
    volume[3] = 113_949.0
    volume[7] = 400_000.0   # an outlier
    features = pd.DataFrame({"patient_id": ids, "split": "train", "label": rng.integers(0, 2, n_patients),
                             "ct_otsu_fat_percent": rng.uniform(5, 30, n_patients),
                             "ct_fixed_fat_percent": rng.uniform(2, 20, n_patients),
                             "ct_roi_volume": volume, "ct_excluded_voxels": 10.0,
                             "ct_otsu_vs_fixed_percent": rng.uniform(0, 15, n_patients),
                             "mri_otsu_fat_percent": rng.uniform(5, 30, n_patients),
                             "mri_roi_volume": rng.normal(90_000, 5_000, n_patients)})
    (tmp_path / QA_DIR).mkdir()
    features.to_csv(tmp_path / "features.csv", index=False)
    thresholds = {"modalities": {"ct": _one_tissue_json(one_tissue),
                                 "mri": {"methods": {"otsu": {"threshold": 700.0}}, "diagnostic": {}}}}
    (tmp_path / "thresholds.json").write_text(json.dumps(thresholds))
    records = [{"patient_id": pid, "modality": m, "png": f"{pid}__{m}.png", "source": "hand ROI",
                "roi_voxels": 100_000, "excluded_voxels": 10 if pid != ids[5] else 9_000, "strip": True,
                "midline": "gap", "strip_x_mm": 0.0, "fields": {}} for pid in ids for m in ("ct", "mri")]
    qa_sheet.write_panels(tmp_path, records)
    if disc_planes:
        (tmp_path / DERIVED_ROI_DIR).mkdir()
        pd.DataFrame({"patient_id": ids[:2], "modality": "ct", "upper_vertebra": "L3", "lower_vertebra": "L4",
                      "disc_z_mm": [-101.25, -99.0], "slab_min_z_mm": -106.0, "slab_max_z_mm": -96.0,
                      "canal_x_mm": 0.0, "canal_y_mm": 10.0, "method": ["endplates_canal", "extent_anterior"],
                      "dropped_voxels": [0, 312]}
                     ).to_csv(tmp_path / DERIVED_ROI_DIR / DISC_PLANES_CSV, index=False)
    return qa_sheet.render_sheet(tmp_path).read_text(encoding="utf-8"), ids


def _row(page: str, pid: str, modality: str) -> str:
    return re.search(rf'<tr data-id="{pid}" data-mod="{modality}".*?</tr>', page, re.S).group(0)


def test_issue23_sheet_is_one_column_set_for_both_modalities_with_readable_headers(tmp_path):
    page, ids = _synthetic_sheet(tmp_path, 40)
    head = re.search(r"<thead>.*?</thead>", page, re.S).group(0)
    assert "Fat % Otsu" in head and "ROI cm³" in head and "Fat % Fixed HU" in head
    assert not re.search(r">\s*(ct|mri)_\w+\s*<", head), "raw snake_case headers"
    assert head.count("Fat % Otsu") == 1, "one column per method, whatever the modality"
    assert page.count("<tr data-id=") == 80
    assert ">113.9<" in _row(page, ids[3], "ct"), "ROI volume in cm³, one decimal"
    assert "113949" not in page


def test_issue23_sheet_is_self_contained_and_sortable_filterable_enlargeable(tmp_path):
    page, _ = _synthetic_sheet(tmp_path, 20)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "no network"
    assert "<link" not in page and "@import" not in page
    assert 'id="fw"' in page and "aria-sort" in page and 'id="box"' in page and "openBox" in page
    assert "patient_id,modality,reason" in page and "flagged.csv" in page


def test_issue23_sheet_warnings_are_filterable_per_row(tmp_path):
    page, ids = _synthetic_sheet(tmp_path, 40, one_tissue=True)
    # issue 30: a cohort fact is said once in the header, not on every row
    assert "one_tissue" not in re.search(r'data-w="([^"]*)"', _row(page, ids[0], "ct")).group(1)
    assert page.count("histogram looks like one tissue") == 1 and '<ul class="cohort warn"' in page
    assert "roi_volume_outlier" in _row(page, ids[7], "ct")
    assert "excluded" in re.search(r'data-w="([^"]*)"', _row(page, ids[5], "ct")).group(1)
    assert '<option value="roi_volume_outlier">' in page
    assert "Fixed HU reference" in page, "the legend says the picture paints the fixed reference"


def test_issue23_sheet_reads_disc_planes_when_published(tmp_path):
    page, ids = _synthetic_sheet(tmp_path, 12, disc_planes=True)
    assert "Disc z (mm)" in page
    assert 'data-v="-101.25"' in _row(page, ids[0], "ct")
    assert 'data-v="312"' in _row(page, ids[1], "ct") and "Stray voxels" in page
    assert "plane_fallback" in _row(page, ids[1], "ct") and "plane_fallback" not in _row(page, ids[0], "ct")


def test_issue23_sheet_without_disc_planes_has_no_disc_column(tmp_path):
    page, _ = _synthetic_sheet(tmp_path, 12)
    assert "Disc z (mm)" not in page


def test_sheet_fields_take_an_extra_per_row_column(tmp_path, monkeypatch):
    """How issue 24 adds each MRI series' standardisation reference: one SheetField."""
    field = qa_sheet.SheetField("mri_reference", "Reference (signal)", "the standardisation reference",
                                from_row=lambda row: 812.5 if row["modality"] == "mri" else None)
    monkeypatch.setattr(qa_sheet, "SHEET_FIELDS", [*qa_sheet.SHEET_FIELDS, field])
    page, ids = _synthetic_sheet(tmp_path, 12)
    assert "Reference (signal)" in page and ">812.5<" in _row(page, ids[0], "mri")
    record = qa_sheet.panel_record({"patient_id": "A", "modality": "mri", "roi_voxels": 1, "excluded_voxels": 0},
                                   "A__mri.png", None)
    assert record["strip"] is False and record["png"] == "A__mri.png"


def test_sheet_rerender_reads_only_published_files(tmp_path):
    _synthetic_sheet(tmp_path, 9)
    assert not (tmp_path / "cache").exists()
    assert (tmp_path / QA_DIR / QA_INDEX).is_file() and (tmp_path / QA_DIR / QA_PANELS_JSON).is_file()


# ----------------------------------------------------------------------------- where a reader finds it
def test_issue23_report_links_the_contact_sheet(tmp_path):
    from engine.report import render_report
    from engine.report.render import _qa_sheet_link
    from tests.test_report import make_run

    run = make_run(tmp_path, modalities=("ct",), tables=False, errors=[])
    assert _qa_sheet_link(run) is None
    records = [{"patient_id": "P000", "modality": "ct", "png": "P000__ct.png", "source": "hand ROI",
                "roi_voxels": 10, "excluded_voxels": 0, "strip": False, "midline": "", "strip_x_mm": None,
                "fields": {}}]
    qa_sheet.write_panels(run, records)
    qa_sheet.render_sheet(run)
    html = render_report(run).read_text(encoding="utf-8")
    assert 'href="qa/index.html"' in html and "QA contact sheet" in html


def test_issue23_terminal_summary_prints_the_sheet_path(tmp_path):
    from engine.cli import _summary

    result = SimpleNamespace(n_patients=1, backend="cpu", n_failed=0, thresholds={}, reused=0, notes=[],
                             errors=pd.DataFrame(columns=["patient_id", "modality", "stage", "reason"]))
    assert "QA:" not in _summary(result, tmp_path)
    (tmp_path / QA_DIR).mkdir()
    (tmp_path / QA_DIR / QA_INDEX).write_text("<html></html>")
    assert f"QA:      {(tmp_path / QA_DIR / QA_INDEX).resolve()}" in _summary(result, tmp_path).splitlines()


def test_issue23_sarco_report_rerenders_the_sheet_from_published_files(tmp_path, capsys, monkeypatch):
    import engine.report
    from engine.cli import main

    _synthetic_sheet(tmp_path, 9)
    (tmp_path / "qa" / QA_INDEX).unlink()
    # the report itself is tested in test_report.py; here only that the sheet is rebuilt beside it
    monkeypatch.setattr(engine.report, "render_report", lambda run_dir: run_dir / "report.html")
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / QA_DIR / QA_INDEX).is_file()
    assert "QA:" in capsys.readouterr().out


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium on this machine")
def test_issue23_sheet_script_filters_and_enlarges_in_a_real_browser(tmp_path):
    """The page's script runs in Chromium: a warning filter from the link hides the other rows, a picture opens."""
    page, ids = _synthetic_sheet(tmp_path, 20)
    flagged = len(re.findall(r'<tr [^>]*data-w="[^"]*\bexcluded\b', page))
    assert flagged == 2   # ids[5], CT and MRI
    url = (tmp_path / QA_DIR / QA_INDEX).resolve().as_uri() + "#w=excluded&m=ct&open"
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", url],
                         capture_output=True, text=True, encoding="utf-8", timeout=120).stdout
    rows = re.findall(r"<tr data-id=[^>]*>", dom)
    assert len(rows) == 40 and sum(" hidden" in r for r in rows) == 39
    assert re.search(rf'<tr data-id="{ids[5]}" data-mod="ct"[^>]*>', dom).group(0).count("hidden") == 0
    assert re.search(r'<div id="box"[^>]*class="open"', dom)
    assert f"{ids[5]} CT" in re.search(r'id="cap">([^<]*)<', dom).group(1)


def test_a_rerun_draws_only_changed_pictures(tmp_path):
    from engine.qa import qa_specs, render_series

    image, mask = _phantom("LPS")
    sample = preprocess(image, mask, spacing_mm=(1.0, 1.0, 1.0), margin_mm=5.0, window=(-190.0, 150.0))
    sample.save(tmp_path / "cache" / "A__ct.npz")
    summary = {"patient_id": "A", "modality": "ct", "key": "k1", "sample": str(tmp_path / "cache" / "A__ct.npz"),
               "roi_voxels": sample.roi_voxels, "excluded_voxels": sample.excluded_voxels}
    specs = qa_specs(_ct_thresholds(False))
    png = tmp_path / QA_DIR / "A__ct.png"
    assert render_series(summary, specs["ct"], str(tmp_path))["png"] == "A__ct.png" and png.is_file()
    png.write_bytes(b"sentinel")
    render_series(summary, specs["ct"], str(tmp_path))
    assert png.read_bytes() == b"sentinel", "same key: not drawn again"
    render_series(summary, qa_specs(_ct_thresholds(True))["ct"], str(tmp_path))
    assert png.read_bytes()[:4] == b"\x89PNG", "the one-tissue warning changes the colours: drawn again"
    png.write_bytes(b"sentinel")
    render_series(summary, specs["ct"], str(tmp_path), force=True)
    assert png.read_bytes()[:4] == b"\x89PNG"
