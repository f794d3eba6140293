"""Lumbar axial T2 phantoms drawn at random per patient, for MRI checks nobody tuned to.

Independent of :mod:`engine.synthetic.cohort` (no shared anatomy, field or noise code): every
patient draws its own anatomy, acquisition, field and noise, so a cohort written with a seed
fixed before the first run is a phantom the engine was not tuned on.

Drawn per patient (uniform unless said otherwise)
------------------------------------------------
* **Anatomy**: body half-axes 110-200 mm (left-right) x 80-150 mm (antero-posterior) with a
  random outline (2nd-4th harmonics, up to 8 %); subcutaneous fat 4-45 mm; spinal canal
  10-22 mm wide x 8-18 mm deep; vertebral body 36-52 x 26-36 mm with a 2 mm cortex, marrow
  1.2-2.4 x muscle; paraspinal muscles 36-64 x 34-60 mm, psoas 16-44 x 16-36 mm, each side
  with its own outline, all tapering by up to +-12 % across the slices; viscera 1.0-2.0 x muscle.
* **Intramuscular fat**: a true fat fraction 2-40 % of the ROI, as clusters (a smoothed random
  field of 1-4 mm correlation thresholded to that fraction inside the ROI).
* **Signal** (relative to muscle): fat 2.6-3.4, CSF 3.3-4.3, per patient; muscle texture 3 %.
  Two vendors with receiver gains 1.0 and 1.6, each x 0.85-1.15 per patient.
* **Acquisition**: field of view 160-320 mm (centred on the spine +-15 mm, so the flanks and
  the body edge may be cut), pixel 0.7-1.4 mm, 5-30 slices of 3-6 mm with a 0-2 mm gap.
* **Field**: multiplicative, ``1 + s * g`` with strength ``s`` 0.10-0.40 and ``g`` in [-1, 1] a
  mix (weight ``w`` 0-1) of a posterior surface-coil profile (signal falling with depth from
  the back, length 60-200 mm) and a smooth random field (wavelengths 1-3 x the field of view,
  random directions, a slow variation across slices).
* **Noise**: Rician (magnitude of complex Gaussian), SNR 10-30 in muscle before the field.

The truth is the fraction of ROI voxels whose tissue is fat on the written grid
(``mri_true_fat_fraction`` in ``truth.csv``), never a value the engine computed.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from engine.synthetic.dicom_writer import write_dicom_series, write_mask

VENDORS = (("SIEMENS", "MAGNETOM Aera", 1.0), ("Philips", "Ingenia", 1.6))
#: Muscle signal (stored units) at gain 1 before the field.
MUSCLE_SIGNAL = 300.0
#: Tissue codes of the label map the phantom is painted in.
AIR, SUBCUT_FAT, VISCERA, POSTERIOR_FAT, MUSCLE, MARROW, BONE, CSF = range(8)
#: ROI label values (left/right psoas and paraspinal muscles).
ROI_NAMES = ("psoas_left", "psoas_right", "paraspinal_left", "paraspinal_right")
TRUTH_COLUMNS = ("patient_id", "mri_true_fat_fraction", "vendor", "gain", "fov_mm", "pixel_mm", "n_slices",
                 "thickness_mm", "gap_mm", "canal_w_mm", "canal_h_mm", "subcut_fat_mm", "field_strength",
                 "coil_weight", "snr", "fat_rel", "csf_rel")


@dataclass(frozen=True)
class Draw:
    """Everything drawn for one patient (mm, relative signals)."""

    vendor: int
    gain: float
    fov_mm: float
    pixel_mm: float
    n_slices: int
    thickness_mm: float
    gap_mm: float
    offset_xy_mm: tuple[float, float]
    body_ab_mm: tuple[float, float]
    subcut_fat_mm: float
    canal_wh_mm: tuple[float, float]
    body_wh_mm: tuple[float, float]
    paraspinal_wh_mm: tuple[float, float]
    psoas_wh_mm: tuple[float, float]
    taper: float
    fat_fraction: float
    fat_grain_mm: float
    fat_rel: float
    csf_rel: float
    marrow_rel: float
    viscera_rel: float
    field_strength: float
    coil_weight: float
    coil_length_mm: float
    snr: float


def draw(rng: np.random.Generator, index: int) -> Draw:
    """One patient's parameters (see the module notes for the ranges)."""
    u = rng.uniform
    return Draw(vendor=index % 2, gain=VENDORS[index % 2][2] * u(0.85, 1.15), fov_mm=u(160, 320),
                pixel_mm=u(0.7, 1.4), n_slices=int(rng.integers(5, 31)), thickness_mm=u(3, 6), gap_mm=u(0, 2),
                offset_xy_mm=(u(-15, 15), u(-15, 15)), body_ab_mm=(u(110, 200), u(80, 150)),
                subcut_fat_mm=u(4, 45), canal_wh_mm=(u(10, 22), u(8, 18)), body_wh_mm=(u(36, 52), u(26, 36)),
                paraspinal_wh_mm=(u(36, 64), u(34, 60)), psoas_wh_mm=(u(16, 44), u(16, 36)), taper=u(-0.12, 0.12),
                fat_fraction=u(0.02, 0.40), fat_grain_mm=u(1, 4), fat_rel=u(2.6, 3.4), csf_rel=u(3.3, 4.3),
                marrow_rel=u(1.2, 2.4), viscera_rel=u(1.0, 2.0), field_strength=u(0.10, 0.40),
                coil_weight=u(0, 1), coil_length_mm=u(60, 200), snr=u(10, 30))


def _outline(rng: np.random.Generator) -> list[tuple[int, float, float]]:
    """Random harmonics (k, amplitude, phase) of an outline's radius."""
    return [(k, float(rng.uniform(0, 0.08 / k * 2)), float(rng.uniform(0, 2 * np.pi))) for k in (2, 3, 4)]


def _inside(x, y, centre, half_wh, outline) -> np.ndarray:
    """Points inside an ellipse of half-axes ``half_wh`` around ``centre`` with a harmonic outline."""
    dx, dy = (x - centre[0]) / half_wh[0], (y - centre[1]) / half_wh[1]
    theta = np.arctan2(dy, dx)
    radius = 1.0 + sum(a * np.cos(k * theta + p) for k, a, p in outline)
    return np.hypot(dx, dy) <= radius


@dataclass(frozen=True)
class _Layout:
    """Structure centres and half-axes (mm, canal centre = origin, +y posterior) of one patient."""

    canal: tuple[float, float]
    body_centre_y: float
    vertebra_y: float
    paraspinal: tuple[tuple[float, float], tuple[float, float]]
    psoas: tuple[tuple[float, float], tuple[float, float]]
    posterior_skin_y: float


def _layout(d: Draw) -> _Layout:
    cw, ch = d.canal_wh_mm[0] / 2, d.canal_wh_mm[1] / 2
    vw, vh = d.body_wh_mm[0] / 2, d.body_wh_mm[1] / 2
    pw, ph = d.paraspinal_wh_mm[0] / 2, d.paraspinal_wh_mm[1] / 2
    sw = d.psoas_wh_mm[0] / 2
    vertebra_y = -(ch + 6 + vh)
    paraspinal = ((-(5 + pw), ch + ph - 6), (5 + pw, ch + ph - 6))
    psoas = ((-(vw + sw + 2), vertebra_y + 0.3 * vh), (vw + sw + 2, vertebra_y + 0.3 * vh))
    skin = ch + 2 * ph - 6 + d.subcut_fat_mm + 4   # 4 mm of fat behind the muscles at least
    return _Layout((cw, ch), skin - d.body_ab_mm[1], vertebra_y, paraspinal, psoas, skin)


def _paint_slice(d: Draw, lay: _Layout, outlines: dict, x, y, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(tissue codes, ROI labels 1-4) of one slice; ``scale`` tapers the structures across slices."""
    a, b = d.body_ab_mm
    tissue = np.full(x.shape, AIR, np.uint8)
    centre = (0.0, lay.body_centre_y)
    tissue[_inside(x, y, centre, (a, b), outlines["body"])] = SUBCUT_FAT
    inner = _inside(x, y, centre, (a - d.subcut_fat_mm, b - d.subcut_fat_mm), outlines["body"])
    tissue[inner] = np.where(y[inner] > lay.vertebra_y, POSTERIOR_FAT, VISCERA)
    roi = np.zeros(x.shape, np.uint8)
    muscles = (*lay.psoas, *lay.paraspinal)
    sizes = (d.psoas_wh_mm,) * 2 + (d.paraspinal_wh_mm,) * 2
    for label, (c, wh) in enumerate(zip(muscles, sizes, strict=True), start=1):
        here = _inside(x, y, c, (wh[0] / 2 * scale, wh[1] / 2 * scale), outlines[f"muscle{label}"]) & inner
        tissue[here], roi[here] = MUSCLE, label
    vw, vh = d.body_wh_mm[0] / 2, d.body_wh_mm[1] / 2
    vertebra = _inside(x, y, (0.0, lay.vertebra_y), (vw, vh), outlines["vertebra"])
    tissue[vertebra] = BONE
    tissue[_inside(x, y, (0.0, lay.vertebra_y), (vw - 2, vh - 2), outlines["vertebra"])] = MARROW
    cw, ch = (v * scale for v in lay.canal)
    arch = _inside(x, y, (0.0, 0.0), (cw + 4, ch + 4), []) | ((np.abs(x) <= 3) & (y > 0) & (y < ch + 40))
    tissue[arch & inner] = BONE
    tissue[_inside(x, y, (0.0, 0.0), (cw, ch), outlines["canal"])] = CSF
    roi[tissue != MUSCLE] = 0
    return tissue, roi


def _fat_pattern(d: Draw, roi: np.ndarray, spacing_zyx, rng: np.random.Generator) -> np.ndarray:
    """(Z, Y, X) bool: intramuscular fat, exactly ``fat_fraction`` of the ROI's voxels (clusters)."""
    sigma = [max(0.5, d.fat_grain_mm / s) for s in spacing_zyx]
    field = ndimage.gaussian_filter(rng.standard_normal(roi.shape), sigma)
    inside = field[roi]
    n_fat = int(round(d.fat_fraction * inside.size))
    fat = np.zeros(roi.shape, bool)
    if n_fat:
        cut = np.partition(inside, inside.size - n_fat)[inside.size - n_fat]
        fat = roi & (field >= cut)
    return fat


def _bias_field(d: Draw, lay: _Layout, x, y, z, rng: np.random.Generator) -> np.ndarray:
    """``1 + s * g``: g in [-1, 1] over the body, a coil profile mixed with a smooth random field."""
    depth = np.clip(lay.posterior_skin_y - y, 0.0, None)
    coil = np.exp(-depth / d.coil_length_mm)
    shape = np.broadcast_shapes(x.shape, z.shape)
    smooth = np.zeros(shape)
    for _ in range(3):
        wavelength = d.fov_mm * rng.uniform(1, 3)
        angle, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        along = x * np.cos(angle) + y * np.sin(angle)
        smooth += np.cos(2 * np.pi * along / wavelength + phase) * (1 + 0.1 * np.sin(z / 60.0 + phase))
    field = np.zeros(shape)
    for part, weight in ((coil, d.coil_weight), (smooth, 1 - d.coil_weight)):
        span = float(part.max() - part.min()) or 1.0
        field += weight * (2 * (part - part.min()) / span - 1)
    span = float(np.abs(field).max()) or 1.0
    return 1.0 + d.field_strength * field / span


def patient_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of patient ``index`` of cohort ``seed`` (its first draws are :func:`draw`'s)."""
    return np.random.default_rng(np.random.SeedSequence([seed, index, 32]))


def simulate(seed: int, index: int) -> dict:
    """One patient: stored uint16 image, ROI labels, geometry and the truth (nothing written)."""
    rng = patient_rng(seed, index)
    d = draw(rng, index)
    lay = _layout(d)
    outlines = {name: _outline(rng) for name in ("body", "vertebra", "canal", "muscle1", "muscle2", "muscle3",
                                                 "muscle4")}
    matrix = int(round(d.fov_mm / d.pixel_mm))
    step = d.thickness_mm + d.gap_mm
    centre_y = 0.5 * (lay.vertebra_y + 0.0) + d.offset_xy_mm[1]
    axis = (np.arange(matrix) - (matrix - 1) / 2) * d.pixel_mm
    y2, x2 = np.meshgrid(axis + centre_y, axis + d.offset_xy_mm[0], indexing="ij")
    zs = (np.arange(d.n_slices) - (d.n_slices - 1) / 2) * step
    tissue = np.empty((d.n_slices, matrix, matrix), np.uint8)
    roi = np.empty_like(tissue)
    for k, zk in enumerate(zs):
        scale = 1.0 + d.taper * zk / max(abs(zs[0]), 1.0)
        tissue[k], roi[k] = _paint_slice(d, lay, outlines, x2, y2, scale)
    fat = _fat_pattern(d, roi > 0, (step, d.pixel_mm, d.pixel_mm), rng)
    relative = np.array([0.0, d.fat_rel, d.viscera_rel, d.fat_rel, 1.0, d.marrow_rel, 0.15, d.csf_rel])
    signal = relative[tissue] * (1 + 0.03 * ndimage.gaussian_filter(rng.standard_normal(tissue.shape), (0, 1, 1)))
    signal[fat] = d.fat_rel
    z3 = np.broadcast_to(zs[:, None, None], tissue.shape)
    signal = signal * MUSCLE_SIGNAL * d.gain * _bias_field(d, lay, x2[None], y2[None], z3, rng)
    sigma = MUSCLE_SIGNAL * d.gain / d.snr
    noisy = np.hypot(signal + rng.normal(0, sigma, signal.shape), rng.normal(0, sigma, signal.shape))
    stored = np.clip(np.rint(noisy), 0, 4095).astype(np.uint16)
    truth = {"mri_true_fat_fraction": float(np.count_nonzero(fat) / np.count_nonzero(roi)),
             "vendor": VENDORS[d.vendor][0], "gain": d.gain, "fov_mm": d.fov_mm, "pixel_mm": d.pixel_mm,
             "n_slices": d.n_slices, "thickness_mm": d.thickness_mm, "gap_mm": d.gap_mm,
             "canal_w_mm": d.canal_wh_mm[0], "canal_h_mm": d.canal_wh_mm[1], "subcut_fat_mm": d.subcut_fat_mm,
             "field_strength": d.field_strength, "coil_weight": d.coil_weight, "snr": d.snr,
             "fat_rel": d.fat_rel, "csf_rel": d.csf_rel}
    origin = (float(axis[0] + d.offset_xy_mm[0]), float(axis[0] + centre_y), float(zs[0]))
    return {"stored": stored, "roi": roi, "tissue": tissue, "fat": fat, "draw": asdict(d), "truth": truth,
            "spacing_mm": (d.pixel_mm, d.pixel_mm, step), "origin_mm": origin}


def write_random_mri_cohort(out_dir, *, n_patients: int, seed: int) -> Path:
    """Write ``n_patients`` random phantoms (DICOM MR series + NIfTI ROI); returns ``manifest.csv``.

    ``truth.csv`` beside it holds :data:`TRUTH_COLUMNS`. Patient ``i`` depends only on ``seed``
    and ``i`` (``RND0001`` ...).
    """
    out = Path(out_dir)
    rows, truths = [], []
    for index in range(n_patients):
        pid = f"RND{index + 1:04d}"
        sim = simulate(seed, index)
        pdir = out / "patients" / pid
        vendor, model, _ = VENDORS[sim["draw"]["vendor"]]
        write_dicom_series(pdir / "mri", sim["stored"], spacing_mm=sim["spacing_mm"], origin_mm=sim["origin_mm"],
                           modality="MR", slice_thickness_mm=sim["draw"]["thickness_mm"],
                           series_description="T2 TSE TRA", manufacturer=vendor,
                           header={"ManufacturerModelName": model, "MagneticFieldStrength": "1.5"},
                           patient={"PatientID": pid, "PatientName": pid})
        write_mask(pdir / "mri_roi.nii.gz", sim["roi"], spacing_mm=sim["spacing_mm"], origin_mm=sim["origin_mm"])
        rows.append({"patient_id": pid, "label": index % 2, "split": "",
                     "mri_image": f"patients/{pid}/mri", "mri_roi": f"patients/{pid}/mri_roi.nii.gz"})
        truths.append({"patient_id": pid, **sim["truth"]})
    _write_csv(out / "truth.csv", truths, TRUTH_COLUMNS)
    return _write_csv(out / "manifest.csv", rows, ("patient_id", "label", "split", "mri_image", "mri_roi"))


def _write_csv(path: Path, rows: list[dict], columns) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


__all__ = ["ROI_NAMES", "TRUTH_COLUMNS", "VENDORS", "draw", "patient_rng", "simulate", "write_random_mri_cohort"]
