"""One QA picture per patient and modality (issues 17, 23), drawn in a Dask worker.

The picture has three bands: a title (patient, modality, where the ROI came from); the ROI
sample's preview slice (the resampled slice with most ROI voxels) beside a sagittal strip through
the spinal canal; and a legend saying what the colours are. Both images are turned into the
radiological convention from the image's direction matrix (:mod:`engine.qa.orientation`: axial
anterior up and the patient's right on image-left; sagittal superior up and anterior on the
left), and each edge carries its side letter, so a RAS-stored NIfTI and an LPS-stored DICOM
series look the same and a left/right swap shows.

Colours (:func:`overlay_choice`): muscle blue and fat red of the first fitted method, as in the
report. When the cohort's bimodality diagnostic says the pooled histogram holds ONE tissue, the
fitted split would paint healthy muscle red, so the fixed HU reference is painted instead (CT) or
nothing (MRI has no fixed reference), and the legend says which.

Drawn with numpy and Pillow, not matplotlib: pixel for pixel (nearest-neighbour scaling), so
what a voxel is and where it lands are exact, and a picture costs milliseconds, not a tenth of
a second, at 2,000 patients (``python -m bench --only qa``).
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from engine.contract import FIXED, MODALITY_NAMES
from engine.measure.methods import display_name
from engine.qa.orientation import continuous_index, slice_view
from engine.runfolder.previews import preview_of, tissue_masks
from engine.runfolder.thresholds import ModalityThresholds

# CT display window (HU): soft tissue, wide enough to show fat (-100) and muscle (+50); the report's.
CT_DISPLAY_WINDOW_HU = (-200.0, 250.0)
# Overlay colours (RGB 0-255, opacity) as in the study's Figure 4 and the report: muscle blue, fat red.
MUSCLE_RGB = (31, 89, 255)
FAT_RGB = (255, 26, 26)
OVERLAY_ALPHA = 0.5
OUTLINE_RGB = (255, 230, 0)
CANAL_RGB = (0, 230, 230)
#: Issue 24: outline of the MRI intensity reference's region (CSF in the canal, subcutaneous fat).
REFERENCE_RGB = (60, 220, 60)
PLANE_RGB = (255, 140, 0)
SLAB_RGB = (255, 230, 0)
BACKGROUND_RGB = (24, 24, 24)
TEXT_RGB = (235, 235, 235)
WARN_RGB = (255, 190, 60)
#: Display pixels per mm: both images share it, so the strip and the slice have one scale.
PIXELS_PER_MM = 2.0
#: The tallest image band (px); larger fields of view are scaled down to fit.
MAX_IMAGE_HEIGHT_PX = 420
MARGIN_PX = 18
MIN_WIDTH_PX = 640
FONT_PX = 15
#: The picture's top band, where the title (patient, modality, ROI source) is written.
TITLE_BAND_PX = FONT_PX + 14
#: The vertebra labels on the strip: large enough to read in the sheet's 270 px thumbnail.
VERTEBRA_FONT_PX = 28


@dataclass(frozen=True)
class OverlayChoice:
    """What the panel paints: a method and its threshold, or nothing, and the legend's words."""

    method: str | None
    threshold: float | None
    legend: str
    one_tissue: bool = False


def overlay_choice(entry: ModalityThresholds) -> OverlayChoice:
    """The tissue colours of a modality's panels, from its ``thresholds.json`` entry.

    The first fitted method with a finite threshold (in ``thresholds.json`` order). When the
    entry's bimodality diagnostic says ``likely_one_tissue``: the fixed HU reference if fitted
    (CT), else nothing painted (issue 23: the fitted split painted ~37 % of healthy muscle red).
    """
    modality = entry.modality
    methods = {m: fit.threshold for m, fit in entry.methods.items() if np.isfinite(fit.threshold)}
    unit = "HU" if modality == "ct" else ""
    fitted = [m for m in methods if m != FIXED]
    one_tissue = entry.diagnostic is not None and entry.diagnostic.likely_one_tissue
    if one_tissue:
        why = "cohort histogram looks like ONE tissue: fitted split not painted"
        if FIXED in methods:
            return OverlayChoice(FIXED, methods[FIXED], f"{display_name(FIXED)} reference, fat <= "
                                 f"{methods[FIXED]:g} {unit} ({why})".strip(), True)
        return OverlayChoice(None, None, f"tissues not painted: {why}, and {MODALITY_NAMES.get(modality, modality)} "
                                         "has no fixed reference", True)
    chosen = fitted[0] if fitted else (FIXED if FIXED in methods else None)
    if chosen is None:
        return OverlayChoice(None, None, "tissues not painted: no threshold")
    return OverlayChoice(chosen, methods[chosen], f"{display_name(chosen)} split at "
                                                  f"{methods[chosen]:.1f} {unit}".rstrip())


def _font(size: int = FONT_PX):
    return ImageFont.load_default(size=size)


def _window(values: np.ndarray, modality: str) -> tuple[float, float]:
    if modality == "ct":
        return CT_DISPLAY_WINDOW_HU
    low, high = np.percentile(values, [1, 99]) if values.size else (0.0, 1.0)
    return float(low), float(high if high > low else low + 1.0)


def _grey_rgb(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    low, high = window
    grey = np.clip((np.asarray(image, dtype=float) - low) / (high - low), 0.0, 1.0) * 255.0
    return np.repeat(np.round(grey).astype(np.uint8)[..., None], 3, axis=2)


def tissue_layers(sample, choice: OverlayChoice, fat_is: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(roi, muscle, fat) boolean (Y, X) masks of the preview slice in storage order.

    The classification is :func:`engine.runfolder.previews.tissue_masks`, the report's overlay's too (issue 21).
    """
    preview = preview_of(sample)
    if preview is None:
        shape = np.asarray(sample.preview).shape
        return np.zeros(shape, bool), np.zeros(shape, bool), np.zeros(shape, bool)
    threshold = choice.threshold if choice.method is not None else None
    return tissue_masks(preview, threshold, fat_is)


def _scale(array: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Nearest-neighbour resize of a (R, C, ...) array to (rows, cols, ...)."""
    r = np.minimum((np.arange(rows) * array.shape[0] / rows).astype(int), array.shape[0] - 1)
    c = np.minimum((np.arange(cols) * array.shape[1] / cols).astype(int), array.shape[1] - 1)
    return array[r][:, c]


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _blend(rgb: np.ndarray, where: np.ndarray, colour) -> None:
    rgb[where] = np.round((1 - OVERLAY_ALPHA) * rgb[where] + OVERLAY_ALPHA * np.asarray(colour)).astype(np.uint8)


def axial_image(sample, choice: OverlayChoice, fat_is: str, modality: str, scale: float):
    """(RGB (rows, cols, 3) uint8 in display order, the :class:`View`, the preview's display shape)."""
    view = slice_view(sample.grid.direction, row_axis=1, col_axis=0)
    preview = np.asarray(sample.preview, dtype=float)
    roi, muscle, fat = (view.apply(layer) for layer in tissue_layers(sample, choice, fat_is))
    shown = view.apply(preview)
    spacing = sample.grid.spacing
    row_mm, col_mm = (spacing[0], spacing[1]) if view.transpose else (spacing[1], spacing[0])
    rows, cols = max(1, round(shown.shape[0] * row_mm * scale)), max(1, round(shown.shape[1] * col_mm * scale))
    rgb = _scale(_grey_rgb(shown, _window(preview[roi] if roi.any() else preview, modality)), rows, cols)
    roi_px, muscle_px, fat_px = (_scale(layer, rows, cols) for layer in (roi, muscle, fat))
    _blend(rgb, muscle_px, MUSCLE_RGB)
    _blend(rgb, fat_px, FAT_RGB)
    rgb[_outline(roi_px)] = OUTLINE_RGB
    reference = getattr(sample, "reference_preview", None)   # issue 24: the MRI intensity reference's region
    if reference is not None and np.shape(reference) == preview.shape:
        rgb[_outline(_scale(view.apply(np.asarray(reference, bool)), rows, cols))] = REFERENCE_RGB
    return rgb, view, shown.shape


def canal_column(sample, view, x_mm: float, display_cols: int, shown_shape) -> int | None:
    """The display column of the LPS x ``x_mm`` on an axial preview (None when not axial)."""
    if view.plane != "axial":
        return None
    grid = sample.grid
    size = grid.size
    centre = (np.asarray(size, dtype=float) - 1) / 2
    centre[2] = float(sample.preview_z)
    matrix = np.asarray(grid.direction, dtype=float).reshape(3, 3) * np.asarray(grid.spacing)[None, :]
    point = np.asarray(grid.origin, dtype=float) + matrix @ centre
    point[0] = x_mm
    index = continuous_index(point, grid.origin, grid.spacing, grid.direction)
    _, col = view.display_index(float(index[1]), float(index[0]), (int(size[1]), int(size[0])))
    if not -0.5 <= col <= shown_shape[1] - 0.5:
        return None
    return int(round((col + 0.5) * display_cols / shown_shape[1] - 0.5))


@dataclass(frozen=True)
class VertebraLabel:
    """A vertebra's name drawn on the strip at its body's centre (display pixels of the scaled strip)."""

    name: str
    row: int
    col: int
    at_level: bool


def _display_position(value: float, axis_mm: np.ndarray, pixels: int) -> int:
    """The scaled display pixel of an LPS coordinate along a strip axis (``axis_mm`` per source pixel)."""
    order = np.argsort(axis_mm)
    source = np.interp(value, axis_mm[order], np.arange(axis_mm.size, dtype=float)[order])
    return int(round((source + 0.5) * pixels / axis_mm.size - 0.5))


def vertebra_labels(strip: dict, rows: int, cols: int) -> list[VertebraLabel]:
    """The strip's vertebra labels placed on its scaled display (``rows`` x ``cols``); none without bodies."""
    names = [str(n) for n in np.atleast_1d(strip.get("vertebra_names", []))]
    if not names or "y_mm" not in strip:
        return []
    z, y = np.asarray(strip["z_mm"], dtype=float), np.asarray(strip["y_mm"], dtype=float)
    at_level = np.atleast_1d(strip["vertebra_at_level"])
    placed = sorted((VertebraLabel(name, _display_position(float(zc), z, rows), _display_position(float(yc), y, cols),
                                   bool(level))
                     for name, yc, zc, level in zip(names, np.atleast_1d(strip["vertebra_y_mm"]),
                                                    np.atleast_1d(strip["vertebra_z_mm"]), at_level, strict=True)),
                    key=lambda label: label.row)
    return _spread(placed, rows)


def _spread(labels: list[VertebraLabel], rows: int) -> list[VertebraLabel]:
    """Labels (top to bottom) moved apart to one label's height, outward from the level's; a label
    pushed off the strip (a body the field of view cuts) is left out."""
    if not labels:
        return []
    height = VERTEBRA_FONT_PX
    anchor = next((i for i, label in enumerate(labels) if label.at_level), len(labels) // 2)
    out = list(labels)
    out[anchor] = dataclasses.replace(out[anchor], row=int(np.clip(out[anchor].row, height // 2, rows - height // 2)))
    for i in range(anchor - 1, -1, -1):
        out[i] = dataclasses.replace(out[i], row=min(out[i].row, out[i + 1].row - height))
    for i in range(anchor + 1, len(out)):
        out[i] = dataclasses.replace(out[i], row=max(out[i].row, out[i - 1].row + height))
    return [label for label in out if height // 2 <= label.row <= rows - height // 2]


def strip_image(strip: dict, modality: str, scale: float) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """(RGB strip in display order, [(display row, kind)] of its marks; kind ``plane``/``slab``/``extent``)."""
    image = np.asarray(strip["strip"], dtype=float)
    rows = max(1, round(image.shape[0] * float(strip["row_mm"]) * scale))
    cols = max(1, round(image.shape[1] * float(strip["col_mm"]) * scale))
    rgb = _scale(_grey_rgb(image, _window(image, modality)), rows, cols)
    z = np.asarray(strip["z_mm"], dtype=float)
    marks = [float(m) for m in np.atleast_1d(strip["marks_mm"])]
    kinds = (["slab", "plane", "slab"] if len(marks) == 3 else ["extent"] * len(marks))
    placed = []
    order = np.argsort(z)
    for mark, kind in zip(marks, kinds, strict=True):
        row = np.interp(mark, z[order], np.arange(z.size, dtype=float)[order])   # storage-display row of z
        placed.append((int(round((row + 0.5) * rows / z.size - 0.5)), kind))
    return rgb, placed


def _wrap(draw, text: str, font, width: int) -> list[str]:
    """``text`` cut into lines no wider than ``width`` px (at spaces)."""
    lines, current = [], ""
    for word in text.split(" "):
        trial = f"{current} {word}".strip()
        if current and draw.textlength(trial, font=font) > width:
            lines.append(current)
            current = word
        else:
            current = trial
    return lines + [current] if current else lines


def _dashed_hline(draw, row: int, left: int, right: int, colour, dash: int = 6) -> None:
    for x in range(left, right, 2 * dash):
        draw.line([(x, row), (min(x + dash, right), row)], fill=colour, width=1)


def _dashed_vline(draw, col: int, top: int, bottom: int, colour, dash: int = 5) -> None:
    for y in range(top, bottom, 2 * dash):
        draw.line([(col, y), (col, min(y + dash, bottom))], fill=colour, width=1)


def _side_letters(draw, box: tuple[int, int, int, int], letters: tuple[str, str, str, str], font) -> None:
    """Draw top, bottom, left, right letters just outside ``box`` (left, top, right, bottom)."""
    left, top, right, bottom = box
    mid_x, mid_y = (left + right) // 2, (top + bottom) // 2
    places = ((mid_x, top - 2, "mb"), (mid_x, bottom + 2, "mt"), (left - 4, mid_y, "rm"), (right + 4, mid_y, "lm"))
    for text, (x, y, anchor) in zip(letters, places, strict=True):
        draw.text((x, y), text, fill=TEXT_RGB, font=font, anchor=anchor)


def _draw_strip(canvas, draw, side: np.ndarray, marks: list[tuple[int, str]], corner: tuple[int, int],
                letters: tuple[str, str, str, str], font, labels: list[VertebraLabel] | None = None) -> None:
    """Paste the strip at ``corner`` (left, top) with its marks: the plane solid orange, the rest dashed;
    each vertebra's name at its body's centre (the level's two orange), outlined black to read on bone."""
    left, top = corner
    canvas.paste(Image.fromarray(side), (left, top))
    for row, kind in marks:
        if 0 <= row < side.shape[0]:
            if kind == "plane":
                draw.line([(left, top + row), (left + side.shape[1] - 1, top + row)], fill=PLANE_RGB, width=2)
            else:
                _dashed_hline(draw, top + row, left, left + side.shape[1], SLAB_RGB)
    big = _font(VERTEBRA_FONT_PX)
    for label in labels or []:
        if 0 <= label.row < side.shape[0] and 0 <= label.col < side.shape[1]:
            draw.text((left + label.col, top + label.row), label.name, font=big, anchor="mm",
                      fill=PLANE_RGB if label.at_level else TEXT_RGB, stroke_width=3, stroke_fill=(0, 0, 0))
    _side_letters(draw, (left, top, left + side.shape[1], top + side.shape[0]), letters, font)


def render_panel(sample, strip: dict | None, *, modality: str, fat_is: str, choice: OverlayChoice,
                 title: str) -> Image.Image:
    """The QA picture of one series as a Pillow RGB image."""
    font, small = _font(), _font(FONT_PX - 2)
    preview = np.asarray(sample.preview)
    spacing = sample.grid.spacing
    heights_mm = [preview.shape[0] * spacing[1]]
    if strip is not None:
        heights_mm.append(np.asarray(strip["strip"]).shape[0] * float(strip["row_mm"]))
    scale = min(PIXELS_PER_MM, MAX_IMAGE_HEIGHT_PX / max(heights_mm))
    axial, view, shown_shape = axial_image(sample, choice, fat_is, modality, scale)
    side: np.ndarray | None = None
    marks: list[tuple[int, str]] = []
    if strip is not None:
        side, marks = strip_image(strip, modality, scale)
    title_h, line_h = TITLE_BAND_PX, FONT_PX + 5
    band_h = max(axial.shape[0], side.shape[0] if side is not None else 0)
    width = max(MIN_WIDTH_PX, MARGIN_PX + axial.shape[1] + 2 * MARGIN_PX
                + (side.shape[1] if side is not None else 140) + MARGIN_PX)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    key_w = 2 * 24 + int(measure.textlength("musclefat", font=small)) if choice.method is not None else 0
    legend = _wrap(measure, choice.legend, small, width - 2 * MARGIN_PX - key_w)
    strip_text = []
    if strip is not None:
        strip_text = _wrap(measure, f"strip: sagittal at x = {float(strip['x_mm']):.1f} mm ({strip['midline']}; cyan "
                                    f"dashes on the slice); {strip['level']} "
                                    + ("(orange line, the slab dashed)" if len(marks) == 3 else "(dashed)")
                                    + ("; vertebrae named at their bodies as the segmentation labels them"
                                       if np.size(strip.get("vertebra_names", [])) else ""),
                           small, width - 2 * MARGIN_PX)
    height = title_h + MARGIN_PX + band_h + MARGIN_PX + line_h * (len(legend) + len(strip_text)) + 8
    canvas = Image.new("RGB", (width, height), BACKGROUND_RGB)
    draw = ImageDraw.Draw(canvas)
    draw.text((MARGIN_PX, 6), title, fill=TEXT_RGB, font=font)
    top = title_h + MARGIN_PX
    canvas.paste(Image.fromarray(axial), (MARGIN_PX, top))
    box = (MARGIN_PX, top, MARGIN_PX + axial.shape[1], top + axial.shape[0])
    _side_letters(draw, box, (view.top, view.bottom, view.left, view.right), small)
    if side is not None and strip is not None:
        column = canal_column(sample, view, float(strip["x_mm"]), axial.shape[1], shown_shape)
        if column is not None:
            _dashed_vline(draw, MARGIN_PX + column, top, top + axial.shape[0], CANAL_RGB)
        _draw_strip(canvas, draw, side, marks, (box[2] + 2 * MARGIN_PX, top),
                    (str(strip["top"]), str(strip["bottom"]), str(strip["left"]), str(strip["right"])), small,
                    vertebra_labels(strip, side.shape[0], side.shape[1]))
    else:
        draw.text((box[2] + 2 * MARGIN_PX, top + band_h // 2), "no sagittal strip", fill=WARN_RGB, font=small)
    y = top + band_h + MARGIN_PX
    x = MARGIN_PX
    if choice.method is not None:
        for colour, word in ((MUSCLE_RGB, "muscle"), (FAT_RGB, "fat")):
            draw.rectangle([x, y + 3, x + 11, y + 14], fill=colour)
            draw.text((x + 16, y), word, fill=TEXT_RGB, font=small)
            x += 24 + int(draw.textlength(word, font=small))
    for text in legend:
        draw.text((x, y), text, fill=WARN_RGB if choice.one_tissue else TEXT_RGB, font=small)
        y += line_h
    for text in strip_text:
        draw.text((MARGIN_PX, y), text, fill=TEXT_RGB, font=small)
        y += line_h
    return canvas


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def load_strip(path: Path) -> dict | None:
    """A cached strip (:func:`engine.qa.strip.sagittal_strip`), or None if absent or of an older layout."""
    try:
        with np.load(path, allow_pickle=False) as data:
            strip = {k: (data[k] if data[k].ndim else data[k].item()) for k in data.files}
    except (OSError, ValueError, KeyError):
        return None
    return strip if {"x_mm", "top", "col_mm"} <= set(strip) else None
