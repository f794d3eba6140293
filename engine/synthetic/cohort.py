"""Synthetic lumbar CT + T2 MRI cohort with known truth (``sarco synth``).

Each patient is an anatomical phantom defined in continuous physical space (mm) around the
L3/4 disc, rendered onto a CT grid and an axial T2 MRI grid the way a scanner samples it
(voxel centres, slice-thickness averaging, noise), written as DICOM series with fake PHI in
the headers, plus an ROI mask of the four muscles of the study (bilateral psoas and
paraspinal, Frontiers 2025) drawn by a slightly imperfect "reader" on each grid.

Usage
-----
>>> from engine.synthetic import synthesize_cohort
>>> manifest_path = synthesize_cohort("cohort", n_patients=20, seed=0, size="small")

Output layout (``out_dir``)::

    manifest.csv               engine input: patient_id, label, split (empty), ct_image, ct_roi,
                               mri_image, mri_roi (relative paths), clinical columns
    truth.csv                  what the phantom knows: true fat fractions inside each ROI, muscle
                               areas, attenuation/signal parameters, formats used
    phi_planted.json           every fake identifier written into DICOM headers (leak tests)
    patients/SYN0001/ct/       CT series, shuffled files with random hex names
    patients/SYN0001/mri/      T2 MRI series, likewise
    patients/SYN0001/ct_roi.*  label map 1..4 = left_psoas, right_psoas, left_paraspinal,
    patients/SYN0001/mri_roi.*     right_paraspinal (.nii.gz, .nrrd, .seg.nrrd or DICOM-SEG .dcm)
    patients/SYN0001/{ct,mri}_totalseg.nii.gz  TotalSegmentator "total" v2 multilabel (--ml): L3, L4
                               (posterior elements of L3 below the disc, stray L2/L3 voxels, as
                               real masks; RAS- or LPS-stored by patient, issue 23) and the four
                               muscles on every slice; {ct,mri}_totalseg/ the same as
                               per-structure files. The manifest's {ct,mri}_segmentation names the
                               file (even patients) or the folder (odd); the ROI columns still win.

Phantom
-------
Anatomical coordinates ``(u, v, w)`` in mm: ``u`` along patient left (LPS +x), ``v`` posterior
(LPS +y), both relative to the body centre; ``w`` superior (LPS +z) relative to the L3/4 disc
centre. The body outline, subcutaneous fat and abdominal wall are z-invariant; the psoas grows
caudally, the disc is a tilted slab of half-height 3.5-5.5 mm, visceral fat and bowel gas are
ellipsoids. Intramuscular (marbled) fat is a smooth anisotropic random field (Gaussian-filtered
noise, elongated along the fibres, i.e. along z) thresholded so that the fat fraction of the
four muscle compartments within ``|w| <= 10`` mm equals the patient's target fraction. The same
continuous phantom is sampled by the CT and the MRI grid, so the two modalities agree in
anatomy and differ in sampling, contrast and noise.

Truth
-----
``{ct,mri}_true_fat_fraction`` is the fraction of ROI voxels whose tissue *at the voxel centre*
is fat (intramuscular, or retroperitoneal/subcutaneous fat a dilated ROI takes in); it is what
a perfect classifier would find on that grid without partial volume or noise.

Everything random is drawn from ``numpy.random.SeedSequence([seed, patient_index, stream])``
so that a patient does not depend on ``n_patients`` or ``workers``; labels come in blocks of
20 patients with exactly 7 sarcopenic (prevalence 35 %). UIDs derive from the seed too: two
runs with the same seed write byte-identical pixel data and identical CSVs.

Calibration (issue 16)
----------------------
Clinical variables follow the paper's Table 2 training group by label (age 71.7 +/- 7.0 vs
68.1 +/- 6.9, BMI 22.8 +/- 3.2 vs 25.0 +/- 3.4, albumin 35.9 +/- 3.3 vs 37.9 +/- 3.1,
hemoglobin, RBC, WBC, sex 45/79 vs 88/149 female, comorbidities), prevalence 35 %. The MRI
series come from the two scanners of Table 1 (Siemens MAGNETOM Aera, TR/TE 3100/94 ms;
Philips Ingenia, 1181/100 ms; both 1.5 T; in the headers), alternating by patient, with a
~3x signal gain between them and a 20-30 % bias field. Imaging effect sizes
(``_SARCOPENIA_EFFECTS``) give a logistic model on the phantom's truth a CV AUC of ~0.87 and
the clinical variables ~0.78, so the demo's CT models land in the paper's validation range
(0.77-0.96) rather than at 1.000 (measured demo, seed 0: CT CV AUC 0.81-0.83, validation
0.87-0.94; clinical validation 0.64).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
import multiprocessing
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydicom.uid import generate_uid
from scipy import ndimage

from engine.contract import TOTALSEGMENTATOR_TOTAL_V2 as ids
from engine.inputs.manifest import assign_splits
from engine.runfolder.outputs import write_text
from engine.synthetic.dicom_writer import write_dicom_seg, write_dicom_series, write_mask

__all__ = ["synthesize_cohort", "ROI_LABELS", "MANIFEST_COLUMNS", "CLINICAL_COLUMNS"]

# label value -> segment name of the ROI label maps
ROI_LABELS = {1: "left_psoas", 2: "right_psoas", 3: "left_paraspinal", 4: "right_paraspinal"}
_SEGMENT_NAMES = [ROI_LABELS[k] for k in sorted(ROI_LABELS)]

CLINICAL_COLUMNS = (
    "age", "sex", "bmi", "albumin", "hemoglobin", "rbc", "wbc",
    "hypertension", "diabetes", "smoking", "occupation",
)
MANIFEST_COLUMNS = ("patient_id", "label", "split", "ct_image", "ct_roi", "mri_image", "mri_roi") + CLINICAL_COLUMNS
#: Issue 17: the TotalSegmentator-format segmentations (multilabel file or folder, alternating).
SEGMENTATION_COLUMNS = ("ct_segmentation", "mri_segmentation")

# --- tissues -------------------------------------------------------------------------------
(AIR, SUBCUT_FAT, WALL_MUSCLE, VISCERA, VISCERAL_FAT, GAS, RETRO_FAT, VESSEL, MUSCLE, IM_FAT,
 CORTICAL, CANCELLOUS, DISC, CSF, TABLE) = range(15)
_N_TISSUES = 15
_FAT_TISSUES = np.zeros(_N_TISSUES, dtype=bool)
_FAT_TISSUES[[SUBCUT_FAT, VISCERAL_FAT, RETRO_FAT, IM_FAT]] = True

# --- acquisition -------------------------------------------------------------------------
_SIZES: dict[str, dict[str, Any]] = {
    # CT: matrix, pixel range (mm); MR: matrix choices (or None = from FOV), pixel range (mm)
    "clinical": {"ct_matrix": 512, "ct_pixel": (0.68, 0.78), "mr_pixel": (0.5, 0.9), "mr_matrix": None},
    "small": {"ct_matrix": 256, "ct_pixel": (1.40, 1.50), "mr_pixel": (1.0, 1.8), "mr_matrix": (128, 160, 192)},
}
_CT_SLICES, _CT_SLICE_MM = 17, 3.0            # 48 mm between the outer slice centres
_CT_SUBSAMPLES_MM = (-1.0, 0.0, 1.0)          # boxcar slice profile, centre sample = truth
_MR_SLICES, _MR_SPACING_MM, _MR_THICKNESS_MM = 10, 4.4, 4.0
_MR_SUBSAMPLES_MM = (-4.0 / 3.0, 0.0, 4.0 / 3.0)
_ROI_HALF_EXTENT_MM = 10.0                    # the reader outlines slices with |w| <= 10 mm
_FIELD_HALF_EXTENT_MM = 30.0                  # marbling field lattice along w
# mostly uncompressed; the first four patients already exercise RLE and JPEG-LS
_CT_SYNTAXES = ("explicit_le", "rle", "explicit_le", "jpeg_ls", "explicit_le", "jpeg2000", "explicit_le",
                "jpeg_lossless")
_ROI_FORMATS = ("nii.gz", "nrrd", "seg.nrrd")
_VENDORS = ("SIEMENS", "Philips")

# --- issue 16: the two MRI scanners of the paper's Table 1 (axial T2WI row) in the headers ----
_MR_SCANNERS = {
    "SIEMENS": {"ManufacturerModelName": "MAGNETOM Aera", "MagneticFieldStrength": "1.5",
                "RepetitionTime": "3100", "EchoTime": "94"},
    "Philips": {"ManufacturerModelName": "Ingenia", "MagneticFieldStrength": "1.5",
                "RepetitionTime": "1181", "EchoTime": "100"},
}


def _mr_scanner_header(vendor: str) -> dict:
    """Scanner fields of an MRI series header (paper Table 1, axial T2WI)."""
    return dict(_MR_SCANNERS[vendor])

# --- clinical distributions (paper Table 2, training group: sarcopenia vs non-sarcopenia) ---
_CLINICAL: dict[int, dict[str, Any]] = {
    1: {"age": (71.65, 7.01), "female": 45 / 79, "bmi": (22.83, 3.18), "albumin": (35.90, 3.32),
        "hemoglobin": (130.77, 16.31), "rbc": (4.36, 0.48), "wbc": (6.27, 2.06),
        "hypertension": 37 / 79, "diabetes": 11 / 79, "smoking": 20 / 79,
        "occupation": (7, 13, 13, 2, 44)},
    0: {"age": (68.13, 6.88), "female": 88 / 149, "bmi": (24.99, 3.40), "albumin": (37.89, 3.09),
        "hemoglobin": (136.76, 18.03), "rbc": (4.50, 0.54), "wbc": (6.23, 1.83),
        "hypertension": 74 / 149, "diabetes": 21 / 149, "smoking": 31 / 149,
        "occupation": (23, 22, 27, 3, 74)},
}
_OCCUPATIONS = ("worker", "retired", "farmer", "freelance", "others")

# --- issue 16: imaging effect sizes of sarcopenia, calibrated to the paper's Table 5 -----------
# Intramuscular fat target ~ Beta(a, b) per label, CT muscle attenuation mean (HU, SD 4), the
# muscle cross-section's scale factor and the T2 of sarcopenic muscle relative to normal. Chosen
# so that a logistic model on the phantom's own truth (fat fraction, muscle HU, muscle area)
# reaches a cross-validated AUC of about 0.87 (1,500 simulated patients; clinical model 0.78),
# leaving the measured CT models in the paper's validation range (0.77-0.96) instead of at
# 1.000; see the README.
_SARCOPENIA_EFFECTS: dict[str, Any] = {
    "imf_beta": {1: (4.0, 22.7), 0: (3.0, 30.0)},     # means 0.150 vs 0.091
    "muscle_hu": {1: 46.0, 0: 50.0},
    "muscle_scale": 0.93,
    "mri_muscle_t2": 0.96,
}
_PREVALENCE_BLOCK, _PREVALENCE_POSITIVES = 20, 7

# --- fake PHI (DICOM headers only) ---------------------------------------------------------
_LAST_NAMES = ("DOE", "ROE", "SMITH", "MILLER", "NGUYEN", "GARCIA", "MUELLER", "ROSSI", "TANAKA",
               "KOWALSKI", "JOHANSSON", "DUBOIS", "OKAFOR", "PETROV", "SILVA", "OBRIEN")
_FIRST_F = ("JANE", "MARY", "ANNA", "LUCIA", "GRACE", "HELEN", "IRIS", "MARTA", "NORA", "ELSA")
_FIRST_M = ("JOHN", "PETER", "ARTHUR", "CARLOS", "DAVID", "HENRY", "OSCAR", "VIKTOR", "LIAM", "OMAR")
_INSTITUTION = "Synthetic General Hospital"

# random streams: one SeedSequence per (seed, patient index, stream)
_S_CLINICAL, _S_ANATOMY, _S_FIELD, _S_CT, _S_MR, _S_READER_CT, _S_READER_MR, _S_PHI, _S_SPINE_FOV = range(1, 10)


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index, stream]))


# =========================================================================================
# Phantom geometry
# =========================================================================================
@dataclass(frozen=True)
class _Blob:
    """A 2D cross-section shape that may vary along w.

    Inside where ``rho(theta) <= 1 + sum_k amp_k cos(k theta + phase_k)`` with
    ``rho = (|x/a|^p + |y/b|^p)^(1/p)`` in the blob's rotated frame (superellipse, p = 2:
    ellipse). Along w the centre drifts by ``cx_per_mm * w`` and the size scales by
    ``1 + scale_per_mm * w``; an ellipsoid (``zr > 0``) shrinks as ``sqrt(1 - ((w-zc)/zr)^2)``.
    """

    cx: float
    cy: float
    a: float
    b: float
    angle: float = 0.0
    power: float = 2.0
    harmonics: tuple = ()
    cx_per_mm: float = 0.0
    scale_per_mm: float = 0.0
    zc: float = 0.0
    zr: float = 0.0

    def scaled(self, factor: float, add_mm: float = 0.0) -> _Blob:
        return _Blob(self.cx, self.cy, self.a * factor + add_mm, self.b * factor + add_mm, self.angle,
                     self.power, self.harmonics, self.cx_per_mm, self.scale_per_mm, self.zc, self.zr)

    def section(self, w: float):
        scale = 1.0 + self.scale_per_mm * w
        if self.zr > 0:
            t = 1.0 - ((w - self.zc) / self.zr) ** 2
            if t <= 0:
                return None
            scale *= math.sqrt(t)
        return self.cx + self.cx_per_mm * w, self.cy, self.a * scale, self.b * scale

    def mask(self, u: np.ndarray, v: np.ndarray, w: float):
        """``(row slice, column slice, inside)`` over the blob's bounding box, or None."""
        sec = self.section(w)
        if sec is None:
            return None
        cx, cy, a, b = sec
        if a <= 0 or b <= 0:
            return None
        simple = self.angle == 0.0 and not self.harmonics
        if simple:
            rx, ry = a, b
        else:
            reach = math.hypot(a, b) * (1.0 + sum(abs(h[1]) for h in self.harmonics))
            rx = ry = reach
        cols = slice(int(np.searchsorted(u, cx - rx)), int(np.searchsorted(u, cx + rx, side="right")))
        rows = slice(int(np.searchsorted(v, cy - ry)), int(np.searchsorted(v, cy + ry, side="right")))
        if cols.stop <= cols.start or rows.stop <= rows.start:
            return None
        du = (u[cols] - cx).astype(np.float32)[None, :]
        dv = (v[rows] - cy).astype(np.float32)[:, None]
        if self.angle:
            c, s = math.cos(self.angle), math.sin(self.angle)
            xn = (du * c + dv * s) / a
            yn = (dv * c - du * s) / b
        else:
            xn = np.broadcast_to(du / a, (dv.shape[0], du.shape[1]))
            yn = np.broadcast_to(dv / b, (dv.shape[0], du.shape[1]))
        if self.power == 2.0:
            rho = xn * xn + yn * yn  # squared radius: compare with the squared limit
        else:
            rho = np.abs(xn) ** self.power + np.abs(yn) ** self.power
        if not self.harmonics:
            return rows, cols, rho <= 1.0
        theta = np.arctan2(yn, xn)
        limit = np.ones_like(theta)
        for k, amp, phase in self.harmonics:
            limit += amp * np.cos(k * theta + phase)
        return rows, cols, rho <= limit ** self.power


@dataclass(frozen=True)
class _Paint:
    blob: _Blob
    tissue: int
    compartment: int = 0
    only_on: tuple | None = None     # paint only over these tissues
    not_on: tuple | None = None      # never paint over these tissues


@dataclass(frozen=True)
class _Vertebra:
    body: _Blob          # vertebral body outline (cortex outer surface)
    cortex_mm: float
    disc_half_mm: float
    tilt: float          # tan of the disc tilt (mm of w per mm of v)
    centre_v: float


@dataclass
class _Anatomy:
    base: list           # z-invariant layers (body, subcutaneous fat, wall, cavity)
    layers: list         # everything else, painted in order
    vertebra: _Vertebra
    canal: _Paint
    compartments: dict   # label -> _Blob (muscle outline)
    muscle_offset: np.ndarray  # marbling field offset per compartment label (index 0 unused)


def _harmonics(rng, amplitude, ks=(2, 3)):
    return tuple((k, float(amplitude * rng.uniform(0.3, 1.0)), float(rng.uniform(0, 2 * np.pi))) for k in ks)


def _build_anatomy(params: dict, rng: np.random.Generator) -> _Anatomy:
    """All structures in anatomical coordinates from the patient's parameters."""
    body_a, body_b = params["body_a_mm"], params["body_b_mm"]
    fat = params["subcut_fat_mm"]
    t_ant, t_lat, t_post = fat, 0.9 * fat, 0.8 * fat
    ms, ss = params["muscle_scale"], params["spine_scale"]

    outer = _Blob(0.0, 0.0, body_a, body_b, power=2.15, harmonics=_harmonics(rng, 0.025))
    inner_b = body_b - (t_ant + t_post) / 2
    inner_cy = (t_ant - t_post) / 2
    inner = _Blob(0.0, inner_cy, body_a - t_lat, inner_b, power=2.15, harmonics=_harmonics(rng, 0.02))
    posterior_fascia = inner_cy + inner_b             # v of the deep surface of posterior subcut fat

    # spine and back muscles hang from the posterior fascia
    ps_a, ps_b = 26.0 * ms, 22.0 * ms                   # paraspinal (erector spinae + multifidus)
    para_cy = posterior_fascia - ps_b - 1.0
    canal_cy = para_cy - 33.0 * ss
    vb_a, vb_b = 25.0 * ss, 17.0 * ss
    vb_cy = canal_cy - vb_b - 9.0 * ss

    wall = 9.0 + 2.0 * rng.standard_normal()
    cavity_post = vb_cy + 25.0
    cavity_ant = -(inner_b - inner_cy) + wall
    cavity = _Blob(0.0, (cavity_ant + cavity_post) / 2, body_a - t_lat - wall - 4.0,
                   (cavity_post - cavity_ant) / 2, power=2.1, harmonics=_harmonics(rng, 0.03))
    # a 12 mm carbon-fibre table under the patient's back, curved like the couch
    table = _Blob(0.0, body_b + 7.0, 230.0, 6.0, power=4.0)

    base = [_Paint(table, TABLE), _Paint(outer, SUBCUT_FAT), _Paint(inner, WALL_MUSCLE),
            _Paint(cavity, VISCERA)]

    layers = []
    # visceral fat and bowel gas: ellipsoids in the cavity
    n_fat = int(np.clip(rng.poisson(6 + 1.2 * max(params["bmi"] - 18, 0)), 3, 30))
    for _ in range(n_fat):
        r = rng.uniform(6, 22)
        layers.append(_Paint(_Blob(rng.uniform(-0.8, 0.8) * cavity.a, cavity.cy + rng.uniform(-0.8, 0.6) * cavity.b,
                                   r * rng.uniform(0.7, 1.3), r * rng.uniform(0.7, 1.3), angle=rng.uniform(0, np.pi),
                                   zc=rng.uniform(-35, 35), zr=rng.uniform(15, 40)),
                             VISCERAL_FAT, only_on=(VISCERA,)))
    for _ in range(int(rng.integers(3, 9))):
        r = rng.uniform(4, 13)
        layers.append(_Paint(_Blob(rng.uniform(-0.7, 0.7) * cavity.a, cavity.cy + rng.uniform(-0.9, 0.0) * cavity.b,
                                   r, r * rng.uniform(0.6, 1.0), angle=rng.uniform(0, np.pi),
                                   zc=rng.uniform(-35, 35), zr=rng.uniform(8, 25)),
                             GAS, only_on=(VISCERA, VISCERAL_FAT)))
    soft = (VISCERA, VISCERAL_FAT, GAS, WALL_MUSCLE)
    retro = _Blob(0.0, vb_cy + 6.0, (vb_a + 55.0) * params["retro_scale"], 34.0 * params["retro_scale"],
                  harmonics=_harmonics(rng, 0.05))
    layers.append(_Paint(retro, RETRO_FAT, only_on=(VISCERA, VISCERAL_FAT, GAS)))
    layers.append(_Paint(_Blob(9.0 * ss, vb_cy - vb_b - 11.0, 9.5, 9.5), VESSEL, only_on=soft + (RETRO_FAT,)))   # aorta
    layers.append(_Paint(_Blob(-17.0 * ss, vb_cy - vb_b - 8.0, 12.0, 8.0, angle=0.2), VESSEL,
                         only_on=soft + (RETRO_FAT,)))   # IVC

    comps = {}
    pso_a, pso_b = 21.0 * ms, 17.0 * ms
    for label, side in ((1, 1.0), (2, -1.0)):   # left = +u
        comps[label] = _Blob(side * (vb_a + 2.0 + 0.8 * pso_a), vb_cy + 3.0, pso_a, pso_b,
                             angle=side * rng.uniform(0.35, 0.6), harmonics=_harmonics(rng, 0.06),
                             cx_per_mm=-side * 0.15, scale_per_mm=-0.008)
    for label, side in ((3, 1.0), (4, -1.0)):
        comps[label] = _Blob(side * (4.0 + 0.95 * ps_a), para_cy, ps_a, ps_b, angle=side * rng.uniform(-0.1, 0.15),
                             power=2.4, harmonics=_harmonics(rng, 0.05), scale_per_mm=0.002)
    not_outside = (AIR, TABLE, SUBCUT_FAT)
    for label in (1, 2, 3, 4):                 # fat planes between the muscles and their neighbours
        layers.append(_Paint(comps[label].scaled(1.0, 2.0), RETRO_FAT, not_on=not_outside))
    for label in (1, 2, 3, 4):
        layers.append(_Paint(comps[label], MUSCLE, compartment=label, not_on=not_outside))

    # posterior elements at the disc level: lamina arch, facet joints, spinous process
    lamina = _Blob(0.0, canal_cy + 3.0, 21.0 * ss, 14.0 * ss)
    layers.append(_Paint(lamina, CORTICAL, not_on=not_outside))
    layers.append(_Paint(lamina.scaled(1.0, -2.0), CANCELLOUS, not_on=not_outside))
    for side in (1.0, -1.0):
        facet = _Blob(side * 17.0 * ss, canal_cy + 1.0, 7.0 * ss, 6.0 * ss, angle=side * 0.5)
        layers.append(_Paint(facet, CORTICAL, not_on=not_outside))
        layers.append(_Paint(facet.scaled(1.0, -1.5), CANCELLOUS, not_on=not_outside))
    spinous_len = 0.5 * (posterior_fascia - canal_cy - 12.0)
    spinous = _Blob(0.0, canal_cy + 12.0 + spinous_len, 3.5 * ss, spinous_len, power=6.0)
    layers.append(_Paint(spinous, CORTICAL, not_on=not_outside))
    layers.append(_Paint(spinous.scaled(1.0, -1.5), CANCELLOUS, not_on=not_outside))

    vertebra = _Vertebra(
        body=_Blob(0.0, vb_cy, vb_a, vb_b, power=2.4, harmonics=((2, -0.04, 0.0),)),
        cortex_mm=1.5, disc_half_mm=params["disc_half_mm"], tilt=math.tan(params["disc_tilt_rad"]),
        centre_v=vb_cy)
    canal = _Paint(_Blob(0.0, canal_cy, 11.0 * ss, 8.0 * ss), CSF)
    offset = np.zeros(5, dtype=np.float32)
    offset[1:3] = -0.3   # psoas marbles less than the paraspinals in the elderly
    offset[3:5] = 0.3
    return _Anatomy(base, layers, vertebra, canal, comps, offset)


def _apply(paint: _Paint, tissue, comp, u, v, w):
    hit = paint.blob.mask(u, v, w)
    if hit is None:
        return
    rows, cols, inside = hit
    t = tissue[rows, cols]
    if paint.only_on is not None:
        inside = inside & np.isin(t, paint.only_on)
    elif paint.not_on is not None:
        inside = inside & ~np.isin(t, paint.not_on)
    t[inside] = paint.tissue
    comp[rows, cols][inside] = paint.compartment


def _paint_vertebral_body(vert: _Vertebra, tissue, comp, u, v, w):
    bulge = vert.body.scaled(1.04)
    hit = bulge.mask(u, v, w)
    if hit is None:
        return
    rows, cols, in_bulge = hit
    vv = v[rows].astype(np.float32)[:, None]
    local_w = np.abs(w - vert.tilt * (vv - vert.centre_v))          # (rows, 1)
    disc = local_w <= vert.disc_half_mm
    endplate = (local_w > vert.disc_half_mm) & (local_w <= vert.disc_half_mm + 1.0)
    body = ~(disc | endplate)
    # the same bounding box for the three outlines: pad the bulge's box with their masks
    outer = _mask_on(vert.body, u, v, w, rows, cols)
    inner = _mask_on(vert.body.scaled(1.0, -vert.cortex_mm), u, v, w, rows, cols)
    t = tissue[rows, cols]
    c = comp[rows, cols]
    sel = in_bulge & disc
    t[sel] = DISC
    c[sel] = 0
    sel = outer & ~disc
    t[sel] = CORTICAL
    c[sel] = 0
    t[inner & body] = CANCELLOUS


def _mask_on(blob: _Blob, u, v, w, rows, cols):
    out = np.zeros((rows.stop - rows.start, cols.stop - cols.start), dtype=bool)
    hit = blob.mask(u[cols], v[rows], w)
    if hit is not None:
        r, c, inside = hit
        out[r, c] = inside
    return out


def _paint_base(anat: _Anatomy, u, v):
    tissue = np.zeros((v.size, u.size), dtype=np.uint8)
    comp = np.zeros_like(tissue)
    for paint in anat.base:
        _apply(paint, tissue, comp, u, v, 0.0)
    return tissue


def _paint_plane(anat: _Anatomy, base, u, v, w):
    """Tissue and compartment label of every (v, u) point of the plane at w; both (V, U) uint8."""
    tissue = base.copy()
    comp = np.zeros_like(tissue)
    for paint in anat.layers:
        _apply(paint, tissue, comp, u, v, w)
    _paint_vertebral_body(anat.vertebra, tissue, comp, u, v, w)
    _apply(anat.canal, tissue, comp, u, v, w)
    return tissue, comp


# =========================================================================================
# Intramuscular fat: a thresholded smooth random field
# =========================================================================================
@dataclass
class _FatField:
    values: np.ndarray        # (W, V, U) float32, unit SD
    origin: tuple             # (w0, v0, u0) mm
    step_mm: float
    threshold: float
    offset: np.ndarray

    def sample(self, u, v, w):
        """Field value (trilinear) at points (u, v, w); ``w`` a scalar or an array like ``u``."""
        coords = np.stack([np.broadcast_to((np.asarray(w, dtype=np.float32) - self.origin[0]) / self.step_mm, u.shape),
                           ((v - self.origin[1]) / self.step_mm).astype(np.float32),
                           ((u - self.origin[2]) / self.step_mm).astype(np.float32)])
        return ndimage.map_coordinates(self.values, coords, order=1, mode="nearest", prefilter=False)

    def is_fat(self, u, v, w, labels):
        """Marbled fat at points (u, v) of plane w inside compartments ``labels`` (1D arrays)."""
        return self.sample(u, v, w) + self.offset[labels] > self.threshold


def _build_fat_field(anat: _Anatomy, target_fraction: float, rng: np.random.Generator) -> _FatField:
    step = 1.0
    lo_u, hi_u, lo_v, hi_v = np.inf, -np.inf, np.inf, -np.inf
    for blob in anat.compartments.values():
        for w_end in (-_FIELD_HALF_EXTENT_MM, _FIELD_HALF_EXTENT_MM):
            cx, cy, a, b = blob.section(w_end)
            reach = math.hypot(a, b) * 1.2 + 4.0
            lo_u, hi_u = min(lo_u, cx - reach), max(hi_u, cx + reach)
            lo_v, hi_v = min(lo_v, cy - reach), max(hi_v, cy + reach)
    u = np.arange(math.floor(lo_u), math.ceil(hi_u) + step, step)
    v = np.arange(math.floor(lo_v), math.ceil(hi_v) + step, step)
    w = np.arange(-_FIELD_HALF_EXTENT_MM, _FIELD_HALF_EXTENT_MM + step, step)
    shape = (w.size, v.size, u.size)
    # marbling: streaks elongated along the fibres (z), plus patchy low-frequency infiltration
    fine = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), (3.0, 1.1, 1.1), mode="wrap")
    coarse = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), (6.0, 5.0, 5.0), mode="wrap")
    values = fine / fine.std() + 0.6 * coarse / coarse.std()
    values = (values / values.std()).astype(np.float32)

    # threshold so that the marbled fraction of the compartments within |w| <= 10 mm is the target
    base = _paint_base(anat, u, v)
    # sampled at points jittered within the lattice cells: the renderers interpolate between
    # lattice nodes, which narrows the distribution, so node values alone would bias the fraction
    field = _FatField(values, (float(w[0]), float(v[0]), float(u[0])), step, 0.0, anat.muscle_offset)
    samples = []
    for k in np.flatnonzero(np.abs(w) <= _ROI_HALF_EXTENT_MM):
        _, comp = _paint_plane(anat, base, u, v, float(w[k]))
        rows, cols = np.nonzero(comp)
        jitter = rng.uniform(-0.5 * step, 0.5 * step, (3, rows.size))
        samples.append(field.sample(u[cols] + jitter[0], v[rows] + jitter[1], w[k] + jitter[2])
                       + anat.muscle_offset[comp[rows, cols]])
    field.threshold = float(np.quantile(np.concatenate(samples), 1.0 - target_fraction))
    return field


# =========================================================================================
# Rendering
# =========================================================================================
@dataclass
class _Grid:
    """An axial voxel grid, identity direction; centres in anatomical and LPS coordinates."""

    u: np.ndarray          # (X,) anatomical mm of the column centres
    v: np.ndarray          # (Y,) of the row centres
    w: np.ndarray          # (Z,) of the slice centres
    spacing_mm: tuple      # (x, y, z)
    origin_mm: tuple       # LPS of voxel (0, 0, 0)
    thickness_mm: float


def _make_grid(matrix: int, pixel_mm: float, n_slices: int, slice_step_mm: float, thickness_mm: float,
               centre_uv: tuple, frame_offset: tuple, z_shift: float) -> _Grid:
    """``centre_uv``: the anatomical point at the FOV centre; ``frame_offset``: LPS of the
    anatomical origin (body centre at the disc)."""
    pixel_mm = round(pixel_mm, 4)
    half = (matrix - 1) / 2.0
    # round the LPS origin to 0.01 mm so that DICOM decimal strings carry it exactly
    ox = round(frame_offset[0] + centre_uv[0] - half * pixel_mm, 2)
    oy = round(frame_offset[1] + centre_uv[1] - half * pixel_mm, 2)
    oz = round(frame_offset[2] + z_shift - (n_slices - 1) / 2.0 * slice_step_mm, 2)
    idx = np.arange(matrix, dtype=np.float64)
    u = ox + idx * pixel_mm - frame_offset[0]
    v = oy + idx * pixel_mm - frame_offset[1]
    w = oz + np.arange(n_slices, dtype=np.float64) * slice_step_mm - frame_offset[2]
    return _Grid(u, v, w, (pixel_mm, pixel_mm, slice_step_mm), (ox, oy, oz), thickness_mm)


@dataclass
class _Rendered:
    mean: np.ndarray        # (Z, Y, X) float32 slice-averaged tissue mean (no texture, no noise)
    texture_gain: np.ndarray  # (Z, Y, X) float32 slice-averaged texture amplitude
    tissue: np.ndarray      # (Z, Y, X) uint8 tissue at the voxel centres
    compartment: np.ndarray  # (Z, Y, X) uint8 muscle compartment at the voxel centres


def _render(anat: _Anatomy, field: _FatField, grid: _Grid, subsamples, lut_mean, lut_texture) -> _Rendered:
    shape = (grid.w.size, grid.v.size, grid.u.size)
    mean = np.zeros(shape, dtype=np.float32)
    gain = np.zeros(shape, dtype=np.float32)
    tissue_c = np.zeros(shape, dtype=np.uint8)
    comp_c = np.zeros(shape, dtype=np.uint8)
    base = _paint_base(anat, grid.u, grid.v)
    weight = np.float32(1.0 / len(subsamples))
    for k, w_centre in enumerate(grid.w):
        for dz in subsamples:
            w = float(w_centre + dz)
            tissue, comp = _paint_plane(anat, base, grid.u, grid.v, w)
            rows, cols = np.nonzero(comp)
            if rows.size:
                fat = field.is_fat(grid.u[cols], grid.v[rows], w, comp[rows, cols])
                tissue[rows[fat], cols[fat]] = IM_FAT
            mean[k] += lut_mean[tissue]
            gain[k] += lut_texture[tissue]
            if dz == 0.0:
                tissue_c[k] = tissue
                comp_c[k] = comp
        mean[k] *= weight
        gain[k] *= weight
    return _Rendered(mean, gain, tissue_c, comp_c)


def _texture(shape, sigma_px: float, rng) -> np.ndarray:
    """In-plane correlated unit-SD texture, (Z, Y, X) float32."""
    tex = rng.standard_normal(shape, dtype=np.float32)
    tex = ndimage.gaussian_filter(tex, (0.0, sigma_px, sigma_px))
    tex /= np.float32(tex.std())
    return tex


def _reader_roi(rendered: _Rendered, grid: _Grid, rng) -> tuple[np.ndarray, str]:
    """The reader's label map: compartments on |w| <= 10 mm, each muscle independently eroded
    (p = 0.15), kept (0.7) or dilated (0.15) by one voxel in-plane.

    Returns the (Z, Y, X) uint8 label map and the operations as text, one letter per label
    1..4: ``e`` eroded, ``k`` kept as drawn, ``d`` dilated (e.g. ``"kkdk"``).
    """
    roi = rendered.compartment.copy()
    roi[np.abs(grid.w) > _ROI_HALF_EXTENT_MM] = 0
    ops = [int(op) for op in rng.choice([-1, 0, 1], size=len(ROI_LABELS), p=[0.15, 0.7, 0.15])]
    text = "".join("ekd"[op + 1] for op in ops)
    if not any(ops) or not roi.any():
        return roi, text
    zz, yy, xx = np.nonzero(roi)
    box = (slice(zz.min(), zz.max() + 1), slice(max(yy.min() - 2, 0), yy.max() + 3),
           slice(max(xx.min() - 2, 0), xx.max() + 3))
    sub = roi[box]
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    out = sub.copy()
    body = rendered.tissue[box] != AIR
    for label, op in zip(sorted(ROI_LABELS), ops, strict=True):    # erode first, then grow into what is free
        if op < 0:
            drawn = sub == label
            out[drawn & ~ndimage.binary_erosion(drawn, structure)] = 0
    for label, op in zip(sorted(ROI_LABELS), ops, strict=True):
        if op > 0:
            grown = ndimage.binary_dilation(sub == label, structure) & (out == 0) & (sub == 0) & body
            out[grown] = label
    roi[box] = out
    return roi, text


# =========================================================================================
# Patient parameters
# =========================================================================================
def _labels_block(seed: int, block: int) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5A4C, block]))
    return (rng.permutation(_PREVALENCE_BLOCK) < _PREVALENCE_POSITIVES).astype(int)


def _patient_label(seed: int, index: int) -> int:
    return int(_labels_block(seed, index // _PREVALENCE_BLOCK)[index % _PREVALENCE_BLOCK])


def _clinical(label: int, rng) -> dict:
    d = _CLINICAL[label]

    def normal(key, lo, hi):
        m, s = d[key]
        return float(np.clip(rng.normal(m, s), lo, hi))

    wbc_m, wbc_s = d["wbc"]
    sigma2 = math.log(1 + (wbc_s / wbc_m) ** 2)
    wbc = float(np.exp(rng.normal(math.log(wbc_m) - sigma2 / 2, math.sqrt(sigma2))))
    counts = np.asarray(d["occupation"], dtype=float)
    return {
        "age": int(round(normal("age", 50, 95))),
        "sex": "F" if rng.random() < d["female"] else "M",
        "bmi": round(normal("bmi", 15.0, 40.0), 1),
        "albumin": round(normal("albumin", 22.0, 50.0), 1),
        "hemoglobin": int(round(normal("hemoglobin", 70, 190))),
        "rbc": round(normal("rbc", 2.5, 6.5), 2),
        "wbc": round(min(max(wbc, 2.0), 20.0), 2),
        "hypertension": "yes" if rng.random() < d["hypertension"] else "no",
        "diabetes": "yes" if rng.random() < d["diabetes"] else "no",
        "smoking": "yes" if rng.random() < d["smoking"] else "no",
        "occupation": _OCCUPATIONS[int(rng.choice(len(_OCCUPATIONS), p=counts / counts.sum()))],
    }


def _anatomy_params(label: int, clinical: dict, rng) -> dict:
    female = clinical["sex"] == "F"
    bmi = clinical["bmi"]
    sarc = label == 1
    effects = _SARCOPENIA_EFFECTS
    target = rng.beta(*effects["imf_beta"][label])
    body_a = 150.0 * math.sqrt(bmi / 24.0) * (0.95 if female else 1.0) * float(rng.normal(1.0, 0.03))
    return {
        "bmi": bmi,
        "imf_target_fraction": float(np.clip(target, 0.01, 0.6)),
        "muscle_hu": float(rng.normal(effects["muscle_hu"][label], 4.0)),
        "fat_hu": float(rng.normal(-95.0, 4.0)),
        "cancellous_hu": float(rng.normal(230.0, 40.0) - (20.0 if sarc else 0.0)),
        "cortical_hu": float(rng.normal(700.0, 50.0)),
        "disc_hu": float(rng.normal(80.0, 6.0)),
        "muscle_scale": (0.88 if female else 1.0) * (effects["muscle_scale"] if sarc else 1.0)
        * float(rng.normal(1.0, 0.06))
        * (bmi / 24.0) ** 0.15,
        "spine_scale": (0.94 if female else 1.0) * float(rng.normal(1.0, 0.04)),
        "body_a_mm": body_a,                                   # half-width, mm
        "body_b_mm": body_a * float(rng.normal(0.74, 0.04)),   # half-depth, mm
        "subcut_fat_mm": float(np.clip((4.0 + 1.2 * max(bmi - 16.0, 0.0)) * (1.25 if female else 0.9)
                                       * rng.normal(1.0, 0.15), 4.0, 45.0)),
        "retro_scale": float(np.clip(rng.normal(1.0, 0.1) * (bmi / 24.0) ** 0.5, 0.7, 1.4)),
        "disc_half_mm": float(rng.uniform(3.5, 5.5)),
        "disc_tilt_rad": float(np.deg2rad(rng.uniform(-8.0, 8.0))),
    }


def _phi(clinical: dict, index: int, rng) -> tuple[dict, dict]:
    """Fake identifiers of the CT and the MR study (same person, two studies)."""
    first = _FIRST_F if clinical["sex"] == "F" else _FIRST_M
    name = f"{_LAST_NAMES[(index + int(rng.integers(len(_LAST_NAMES)))) % len(_LAST_NAMES)]}^" \
           f"{first[int(rng.integers(len(first)))]}"
    mrn = f"MRN{int(rng.integers(10**7, 10**8)):08d}"
    ct_date = _dt.date(2019, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 5 * 365)))
    mr_date = ct_date + _dt.timedelta(days=int(rng.integers(1, 30)))
    birth = _dt.date(ct_date.year - clinical["age"] - 1, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 365)))
    common = {"PatientName": name, "PatientID": mrn, "PatientBirthDate": birth.strftime("%Y%m%d"),
              "PatientSex": clinical["sex"], "InstitutionName": _INSTITUTION}
    ct = dict(common, AccessionNumber=f"ACC{int(rng.integers(10**6, 10**7)):07d}",
              StudyDate=ct_date.strftime("%Y%m%d"))
    mr = dict(common, AccessionNumber=f"ACC{int(rng.integers(10**6, 10**7)):07d}",
              StudyDate=mr_date.strftime("%Y%m%d"))
    return ct, mr


def _planted_strings(*headers: dict) -> list[str]:
    keys = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName", "StudyDate")
    return sorted({str(h[k]) for h in headers for k in keys})


# =========================================================================================
# One patient
# =========================================================================================
def _uid(seed: int, index: int, what: str) -> str:

    return str(generate_uid(entropy_srcs=["sarco-engine synth", str(seed), str(index), what]))


def _muscle_areas(anat: _Anatomy) -> dict:
    """Cross-sectional area (mm^2) of each compartment at the disc plane on a 0.25 mm grid."""
    step = 0.25
    lo_u = min(b.cx - math.hypot(b.a, b.b) * 1.2 for b in anat.compartments.values())
    hi_u = max(b.cx + math.hypot(b.a, b.b) * 1.2 for b in anat.compartments.values())
    lo_v = min(b.cy - math.hypot(b.a, b.b) * 1.2 for b in anat.compartments.values())
    hi_v = max(b.cy + math.hypot(b.a, b.b) * 1.2 for b in anat.compartments.values())
    u = np.arange(lo_u, hi_u, step)
    v = np.arange(lo_v, hi_v, step)
    _, comp = _paint_plane(anat, _paint_base(anat, u, v), u, v, 0.0)
    counts = np.bincount(comp.ravel(), minlength=5)
    return {name: float(counts[label]) * step * step for label, name in ROI_LABELS.items()}


def _simulate(seed: int, index: int, size: str, lean: bool = False, spine_fov: bool = False) -> dict:
    """Everything about one patient, in memory: parameters, grids, images, ROIs, truth.

    ``lean``: no intramuscular fat at all (target 0, the marbling field never crosses its
    threshold); every random draw is still made, so the rest of the patient is unchanged.
    ``spine_fov``: the MRI is a spine protocol's 160-200 mm FOV (:func:`_spine_fov_acquisition`).
    Each step draws from its own random stream (:func:`_rng`), so their order does not matter.
    """
    cfg = _SIZES[size]
    label = _patient_label(seed, index)
    clinical = _clinical(label, _rng(seed, index, _S_CLINICAL))
    rng = _rng(seed, index, _S_ANATOMY)
    params = _anatomy_params(label, clinical, rng)
    if spine_fov and _spine_fov_obese(index):
        params = _obese_params(params)
    anat = _build_anatomy(params, rng)
    field = _build_fat_field(anat, params["imf_target_fraction"], _rng(seed, index, _S_FIELD))
    if lean:
        params["imf_target_fraction"] = 0.0
        field.threshold = math.inf
    ct_phi, mr_phi = _phi(clinical, index, _rng(seed, index, _S_PHI))
    return {
        "index": index,
        "label": label,
        "clinical": clinical,
        "params": params,
        "ct": _simulate_ct(anat, field, params, cfg, (seed, index), ct_phi),
        "mr": _simulate_mr(anat, field, label, cfg, (seed, index), mr_phi, spine_fov),
        "areas": _muscle_areas(anat),
        "vertebra": anat.vertebra,  # issue 17: the TotalSegmentator writer splits L3/L4 at its disc
    }


def _ct_tables(params: dict) -> tuple[np.ndarray, np.ndarray]:
    """(mean HU, texture SD HU) per tissue label of this patient's CT."""
    lut = np.zeros(_N_TISSUES, dtype=np.float32)
    lut[[AIR, GAS, TABLE]] = (-1000.0, -850.0, 150.0)
    lut[[SUBCUT_FAT, VISCERAL_FAT, RETRO_FAT, IM_FAT]] = params["fat_hu"]
    lut[[WALL_MUSCLE, MUSCLE]] = params["muscle_hu"]
    lut[[VISCERA, VESSEL, CSF, DISC]] = (35.0, 40.0, 10.0, params["disc_hu"])
    lut[[CORTICAL, CANCELLOUS]] = (params["cortical_hu"], params["cancellous_hu"])
    tex = np.zeros(_N_TISSUES, dtype=np.float32)
    tex[[WALL_MUSCLE, MUSCLE]] = 12.0
    tex[[SUBCUT_FAT, VISCERAL_FAT, RETRO_FAT, IM_FAT]] = 8.0
    tex[[VISCERA, CANCELLOUS, GAS]] = (15.0, 40.0, 30.0)
    return lut, tex


def _simulate_ct(anat, field, params: dict, cfg: dict, patient: tuple[int, int], phi: dict) -> dict:
    """The CT study of one patient (``patient``: (seed, index)): grid, stored values, reader ROI."""
    seed, index = patient
    rng = _rng(seed, index, _S_CT)
    ct_pixel = rng.uniform(*cfg["ct_pixel"])
    ct_frame = (rng.normal(0.0, 10.0), rng.normal(0.0, 15.0), rng.uniform(-260.0, -120.0))
    ct_grid = _make_grid(cfg["ct_matrix"], ct_pixel, _CT_SLICES, _CT_SLICE_MM, _CT_SLICE_MM,
                         (rng.uniform(-6, 6), rng.uniform(-6, 6)), ct_frame, rng.uniform(-1.5, 1.5))
    ct = _render(anat, field, ct_grid, _CT_SUBSAMPLES_MM, *_ct_tables(params))
    ct_noise_sd = float(rng.uniform(10.0, 15.0))
    shape = ct.mean.shape
    hu = ct.mean
    hu += ct.texture_gain * _texture(shape, 0.8 / ct_grid.spacing_mm[0], rng)
    hu += rng.standard_normal(shape, dtype=np.float32) * np.float32(ct_noise_sd)
    ct_stored = np.clip(np.rint(hu + 1024.0), 0, 4095).astype(np.uint16)
    ct_roi, ct_reader_op = _reader_roi(ct, ct_grid, _rng(seed, index, _S_READER_CT))
    return {"grid": ct_grid, "stored": ct_stored, "roi": ct_roi, "rendered": ct, "reader_op": ct_reader_op,
            "noise_sd": ct_noise_sd, "phi": phi, "disc_z_mm": round(ct_frame[2], 3)}


def _mr_acquisition(anat, cfg: dict, rng, patient: tuple[int, int], spine_fov: bool):
    """(vendor, grid, z of the disc in the scanner frame) of one patient's T2 MRI."""
    seed, index = patient
    vendor = _VENDORS[index % 2]
    lo, hi = cfg["mr_pixel"]
    if cfg["mr_matrix"] is None:
        mr_pixel = rng.uniform(lo, hi)
        mr_matrix = int(np.clip(round(rng.uniform(200.0, 260.0) / mr_pixel / 16.0) * 16, 256, 512))
    else:
        mr_matrix = int(rng.choice(cfg["mr_matrix"]))
        mr_pixel = rng.uniform(max(lo, 190.0 / mr_matrix), min(hi, 280.0 / mr_matrix))
    mr_frame = (rng.normal(0.0, 10.0), rng.normal(0.0, 15.0), rng.uniform(-80.0, 80.0))
    mr_centre = (rng.uniform(-5, 5), anat.canal.blob.cy - 10.0 + rng.uniform(-5, 5))
    mr_z_shift = rng.uniform(-1.5, 1.5)
    if spine_fov:   # issue 24: a spine protocol's small FOV (its own stream: the rest is unchanged)
        mr_matrix, mr_pixel, mr_centre = _spine_fov_acquisition(anat, cfg, _rng(seed, index, _S_SPINE_FOV),
                                                                  _spine_fov_obese(index))
    mr_grid = _make_grid(mr_matrix, mr_pixel, _MR_SLICES, _MR_SPACING_MM, _MR_THICKNESS_MM, mr_centre, mr_frame,
                         mr_z_shift)
    return vendor, mr_grid, mr_frame[2]


def _mr_tables(label: int, vendor: str, rng) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(mean signal, texture SD) per tissue label of one T2 MRI, its muscle signal and fat/muscle ratio."""
    muscle_signal = float(rng.normal(300.0, 30.0) if vendor == "SIEMENS" else rng.normal(900.0, 80.0))
    fat_ratio = float(rng.uniform(2.7, 3.3))
    rel = np.zeros(_N_TISSUES, dtype=np.float32)
    rel[[AIR, GAS, TABLE]] = (0.0, 0.02, 0.0)
    rel[[SUBCUT_FAT, VISCERAL_FAT, RETRO_FAT, IM_FAT]] = fat_ratio
    # T2 of fatty-degenerated muscle: a little lower
    rel[[WALL_MUSCLE, MUSCLE]] = _SARCOPENIA_EFFECTS["mri_muscle_t2"] if label == 1 else 1.0
    rel[[VISCERA, VESSEL, CSF, DISC, CORTICAL, CANCELLOUS]] = (1.3, 0.25, 3.6, float(rng.uniform(1.3, 2.2)),
                                                             0.12, float(rng.uniform(1.5, 2.2)))
    lut = rel * np.float32(muscle_signal)
    tex = np.zeros(_N_TISSUES, dtype=np.float32)
    tex[[WALL_MUSCLE, MUSCLE]] = 0.06 * muscle_signal
    tex[[SUBCUT_FAT, VISCERAL_FAT, RETRO_FAT, IM_FAT]] = 0.04 * fat_ratio * muscle_signal
    tex[[VISCERA, CANCELLOUS]] = (0.12 * muscle_signal, 0.1 * muscle_signal)
    return lut, tex, muscle_signal, fat_ratio


def _simulate_mr(anat, field, label: int, cfg: dict, patient: tuple[int, int], phi: dict, spine_fov: bool) -> dict:
    """The T2 MRI study of one patient (``patient``: (seed, index)): grid, stored values, reader ROI."""
    seed, index = patient
    rng = _rng(seed, index, _S_MR)
    vendor, mr_grid, disc_z = _mr_acquisition(anat, cfg, rng, patient, spine_fov)
    lut, tex, muscle_signal, fat_ratio = _mr_tables(label, vendor, rng)
    mr = _render(anat, field, mr_grid, _MR_SUBSAMPLES_MM, lut, tex)
    shape = mr.mean.shape
    signal = mr.mean
    signal += mr.texture_gain * _texture(shape, 0.8 / mr_grid.spacing_mm[0], rng)
    np.maximum(signal, 0.0, out=signal)
    bias, bias_amp = _bias_field(mr_grid, rng)
    signal *= bias
    noise_sd = float(rng.uniform(0.03, 0.05)) * muscle_signal
    real = signal + rng.standard_normal(shape, dtype=np.float32) * np.float32(noise_sd)
    imag = rng.standard_normal(shape, dtype=np.float32) * np.float32(noise_sd)
    magnitude = np.sqrt(real * real + imag * imag)            # Rician
    mr_bits = 12 if vendor == "SIEMENS" else 16
    mr_stored = np.clip(np.rint(magnitude), 0, 2 ** mr_bits - 1).astype(np.uint16)
    mr_roi, mr_reader_op = _reader_roi(mr, mr_grid, _rng(seed, index, _S_READER_MR))
    return {"grid": mr_grid, "stored": mr_stored, "roi": mr_roi, "rendered": mr, "reader_op": mr_reader_op,
            "noise_sd": noise_sd, "phi": phi, "disc_z_mm": round(disc_z, 3), "vendor": vendor,
            "muscle_signal": muscle_signal, "fat_ratio": fat_ratio, "bias_amplitude": bias_amp, "bits": mr_bits,
            "fov_mm": float(mr_grid.u.size * mr_grid.spacing_mm[0]),
            "air_fraction": float(np.mean(mr.tissue == AIR))}


# =========================================================================================
# Issue 24: a spine protocol's MRI field of view (kept apart for easy merging)
# =========================================================================================
_SPINE_FOV_MM = (160.0, 200.0)
#: Obese patients' posterior subcutaneous fat (mm) and body growth: no air in a spine FOV.
_OBESE_SUBCUT_MM, _OBESE_BODY_SCALE = 40.0, 1.15
_OBESE_MIN_BODY_MM = (180.0, 140.0)   # half-width, half-depth: deeper than any spine FOV


def _spine_fov_obese(index: int) -> bool:
    """Every third patient of a spine-FOV cohort is obese (no air in the field of view)."""
    return index % 3 == 2


def _obese_params(params: dict) -> dict:
    """The patient's anatomy with a thick subcutaneous fat layer and a larger body outline."""
    out = dict(params)
    out["subcut_fat_mm"] = max(params["subcut_fat_mm"], _OBESE_SUBCUT_MM)
    out["body_a_mm"] = max(params["body_a_mm"] * _OBESE_BODY_SCALE, _OBESE_MIN_BODY_MM[0])
    out["body_b_mm"] = max(params["body_b_mm"] * _OBESE_BODY_SCALE, _OBESE_MIN_BODY_MM[1])
    return out


def _spine_fov_acquisition(anat: _Anatomy, cfg: dict, rng, obese: bool) -> tuple[int, float, tuple]:
    """(matrix, pixel mm, FOV centre (u, v) mm) of a 160-200 mm axial T2 centred on the spine.

    The centre lies on the canal or up to 20 mm anterior to it (towards the vertebral body, as
    spine protocols plan it); the FOV never reaches beyond the posterior skin of an obese patient
    (its posterior edge stays 3 mm inside the body outline), so such a patient has no air at all.
    """
    fov = float(rng.uniform(*_SPINE_FOV_MM))
    matrix = int(cfg["mr_matrix"][0]) if cfg["mr_matrix"] else int(round(fov / 0.7 / 16.0) * 16)
    pixel = fov / matrix
    canal_v = anat.canal.blob.cy
    centre_v = canal_v - float(rng.uniform(0.0, 20.0))
    outer = anat.base[1].blob     # the body outline (subcutaneous fat's outer surface)
    if obese:   # keep the FOV's posterior corners inside the skin: no air
        half = fov / 2.0 + 5.0
        corner_skin_v = outer.b * (1.0 - (half / outer.a) ** outer.power) ** (1.0 / outer.power)
        centre_v = min(centre_v, 0.93 * corner_skin_v - 3.0 - fov / 2.0)
    return matrix, pixel, (float(rng.uniform(-5.0, 5.0)), centre_v)


def _bias_field(grid: _Grid, rng) -> tuple[np.ndarray, float]:
    """Smooth multiplicative field: quadratic polynomial over the FOV, brighter near the posterior
    (spine) coil, peak deviation 20-30 %."""
    xn = np.linspace(-1.0, 1.0, grid.u.size, dtype=np.float32)[None, None, :]
    yn = np.linspace(-1.0, 1.0, grid.v.size, dtype=np.float32)[None, :, None]
    zn = np.linspace(-1.0, 1.0, grid.w.size, dtype=np.float32)[:, None, None]
    c = rng.normal(0.0, 1.0, 6).astype(np.float32)
    c[1] = abs(c[1]) + 1.0    # posterior (+y) brighter
    poly = c[0] * xn + c[1] * yn + c[2] * xn * xn + c[3] * yn * yn + c[4] * xn * yn + 0.2 * c[5] * zn
    poly = poly - poly.mean()
    amplitude = float(rng.uniform(0.2, 0.3))
    poly *= np.float32(amplitude / np.abs(poly).max())
    return (1.0 + poly).astype(np.float32), amplitude


def _truth_fractions(rendered: _Rendered, roi: np.ndarray, grid: _Grid) -> dict:
    in_roi = roi > 0
    n = int(in_roi.sum())
    fat = _FAT_TISSUES[rendered.tissue[in_roi]]
    slab = np.abs(grid.w) <= _ROI_HALF_EXTENT_MM
    comp = rendered.compartment[slab] > 0
    imf = rendered.tissue[slab][comp] == IM_FAT
    voxel_mm3 = grid.spacing_mm[0] * grid.spacing_mm[1] * grid.spacing_mm[2]
    return {
        "true_fat_fraction": float(fat.mean()) if n else float("nan"),
        "true_imf_fraction": float(imf.mean()) if imf.size else float("nan"),
        "roi_voxels": n,
        "roi_volume_mm3": n * voxel_mm3,
    }


def _write_patient(out_dir: Path, seed: int, index: int, size: str, lean: bool = False,
                   spine_fov: bool = False) -> tuple[dict, dict, list]:
    """Simulate and write one patient; returns (manifest row, truth row, planted PHI strings)."""

    sim = _simulate(seed, index, size, lean, spine_fov)
    pid = f"SYN{index + 1:04d}"
    pdir = out_dir / "patients" / pid
    if pdir.exists():
        shutil.rmtree(pdir)
    pdir.mkdir(parents=True)
    ct, mr = sim["ct"], sim["mr"]
    syntax, ct_files = _write_ct_series(pdir, ct, seed, index)
    _write_mr_series(pdir, mr, seed, index)
    (ct_format, ct_roi_path), (mr_format, mr_roi_path) = _write_rois(pdir, ct, mr, ct_files, index)

    rel = lambda p: Path(p).relative_to(out_dir).as_posix()  # noqa: E731
    manifest_row = {"patient_id": pid, "label": sim["label"], "split": "",
                    "ct_image": rel(pdir / "ct"), "ct_roi": rel(ct_roi_path),
                    "mri_image": rel(pdir / "mri"), "mri_roi": rel(mr_roi_path), **sim["clinical"]}
    manifest_row.update(_segmentation_cells(pdir, index, sim, rel))   # issue 17
    files = {"ct_transfer_syntax": syntax, "ct_roi_format": ct_format, "mri_roi_format": mr_format}
    return manifest_row, _truth_row(pid, sim, files), _planted_strings(ct["phi"], mr["phi"])


def _write_ct_series(pdir: Path, ct: dict, seed: int, index: int) -> tuple[str, list]:
    """The CT series (transfer syntax mixed across patients, falling back where unsupported):
    (the syntax written, its files)."""
    study_uid = _uid(seed, index, "ct-study")
    syntax = _CT_SYNTAXES[index % len(_CT_SYNTAXES)]
    g = ct["grid"]
    ct_kwargs = dict(
        spacing_mm=g.spacing_mm,
        origin_mm=g.origin_mm,
        modality="CT",
        rescale_slope=1.0,
        rescale_intercept=-1024.0,
        bits_stored=12,
        slice_thickness_mm=g.thickness_mm,
        patient=ct["phi"],
        series_description="AX ABD L3-L4 3mm",
        series_uid=_uid(seed, index, "ct-series"),
        study_uid=study_uid,
        series_number=2,
        manufacturer="SYNTHETIC CT",
        shuffle_seed=_stream_int(seed, index, 101),
    )
    try:
        ct_files = write_dicom_series(pdir / "ct", ct["stored"], transfer_syntax=syntax, **ct_kwargs)
    except NotImplementedError:
        syntax = "explicit_le"
        shutil.rmtree(pdir / "ct", ignore_errors=True)
        ct_files = write_dicom_series(pdir / "ct", ct["stored"], transfer_syntax=syntax, **ct_kwargs)
    return syntax, ct_files


def _write_mr_series(pdir: Path, mr: dict, seed: int, index: int) -> None:
    """The T2 MRI series, with its vendor's description and scanner header."""
    g = mr["grid"]
    description = "t2_tse_tra_L3-4" if mr["vendor"] == "SIEMENS" else "T2W_TSE_TRA L3-4"
    write_dicom_series(pdir / "mri", mr["stored"], spacing_mm=g.spacing_mm, origin_mm=g.origin_mm, modality="MR",
                       bits_stored=mr["bits"], slice_thickness_mm=g.thickness_mm, patient=mr["phi"],
                       series_description=description, series_uid=_uid(seed, index, "mr-series"),
                       study_uid=_uid(seed, index, "mr-study"), series_number=5, manufacturer=mr["vendor"],
                       header=_mr_scanner_header(mr["vendor"]),
                       shuffle_seed=_stream_int(seed, index, 102))


def _write_rois(pdir: Path, ct: dict, mr: dict, ct_files: list, index: int) -> tuple[tuple[str, Path], ...]:
    """The ROI masks, formats cycling across patients (DICOM-SEG now and then for CT):
    ((CT format, path), (MRI format, path))."""
    ct_format = "dcm" if index % 7 == 3 else _ROI_FORMATS[index % 3]
    ct_roi_path = None
    if ct_format == "dcm":
        try:
            ct_roi_path = write_dicom_seg(pdir / "ct_roi.dcm", ct["roi"], ct_files, segment_names=_SEGMENT_NAMES)
        except (NotImplementedError, ImportError):
            ct_format = _ROI_FORMATS[index % 3]
    if ct_roi_path is None:
        g = ct["grid"]
        ct_roi_path = write_mask(pdir / f"ct_roi.{ct_format}", ct["roi"], spacing_mm=g.spacing_mm,
                                 origin_mm=g.origin_mm, segment_names=_SEGMENT_NAMES)
    mr_format = _ROI_FORMATS[(index + 1) % 3]
    g = mr["grid"]
    mr_roi_path = write_mask(pdir / f"mri_roi.{mr_format}", mr["roi"], spacing_mm=g.spacing_mm,
                             origin_mm=g.origin_mm, segment_names=_SEGMENT_NAMES)
    return (ct_format, Path(ct_roi_path)), (mr_format, Path(mr_roi_path))


def _truth_row(pid: str, sim: dict, files: dict) -> dict:
    """The patient's row of truth.csv (floats to 6 decimals); ``files``: what was written, by column."""
    ct, mr, p, areas = sim["ct"], sim["mr"], sim["params"], sim["areas"]
    ct_truth = _truth_fractions(ct["rendered"], ct["roi"], ct["grid"])
    mr_truth = _truth_fractions(mr["rendered"], mr["roi"], mr["grid"])
    truth_row = {
        "patient_id": pid, "label": sim["label"],
        "imf_target_fraction": p["imf_target_fraction"],
        "ct_true_fat_fraction": ct_truth["true_fat_fraction"],
        "mri_true_fat_fraction": mr_truth["true_fat_fraction"],
        "ct_true_imf_fraction": ct_truth["true_imf_fraction"],
        "mri_true_imf_fraction": mr_truth["true_imf_fraction"],
        "ct_muscle_hu": p["muscle_hu"], "ct_fat_hu": p["fat_hu"], "ct_noise_sd_hu": ct["noise_sd"],
        "muscle_csa_mm2": sum(areas.values()),
        "psoas_csa_mm2": areas["left_psoas"] + areas["right_psoas"],
        "paraspinal_csa_mm2": areas["left_paraspinal"] + areas["right_paraspinal"],
        "subcut_fat_mm": p["subcut_fat_mm"],
        "ct_roi_voxels": ct_truth["roi_voxels"], "ct_roi_volume_mm3": ct_truth["roi_volume_mm3"],
        "mri_roi_voxels": mr_truth["roi_voxels"], "mri_roi_volume_mm3": mr_truth["roi_volume_mm3"],
        "ct_pixel_mm": ct["grid"].spacing_mm[0], "mri_pixel_mm": mr["grid"].spacing_mm[0],
        "mri_matrix": int(mr["grid"].u.size),
        "mri_vendor": mr["vendor"], "mri_muscle_signal": mr["muscle_signal"],
        "mri_fat_to_muscle": mr["fat_ratio"], "mri_noise_sd": mr["noise_sd"],
        "mri_bias_amplitude": mr["bias_amplitude"],
        "mri_fov_mm": mr["fov_mm"], "mri_air_fraction": mr["air_fraction"],
        "ct_transfer_syntax": files["ct_transfer_syntax"], "ct_roi_format": files["ct_roi_format"],
        "mri_roi_format": files["mri_roi_format"],
        "ct_reader_ops": ct["reader_op"], "mri_reader_ops": mr["reader_op"],
        "ct_disc_z_mm": ct["disc_z_mm"], "mri_disc_z_mm": mr["disc_z_mm"],
    }
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in truth_row.items()}


# =========================================================================================
# Issue 17: TotalSegmentator-format whole-body segmentations (kept apart for easy merging)
# =========================================================================================
#: ROI label (1..4 = ROI_LABELS) -> the TotalSegmentator structure the muscle belongs to.
_TS_MUSCLES = {1: "iliopsoas_left", 2: "iliopsoas_right", 3: "autochthon_left", 4: "autochthon_right"}
#: Vertebra files of the per-structure folder: L3 and L4, and L2 for its stray voxels (issue 23).
_TS_VERTEBRAE = ("vertebrae_L2", "vertebrae_L3", "vertebrae_L4")


def _totalsegmentator_labels(rendered: _Rendered, grid: _Grid, vertebra: _Vertebra) -> np.ndarray:
    """A TotalSegmentator "total" v2 label map of the phantom on ``grid``, (Z, Y, X) uint8.

    The four muscles on every slice (not just the ROI's slab: a whole-body segmentation covers
    the whole scan), then the vertebrae as a real TotalSegmentator map labels them (issue 23):
    :func:`_vertebra_labels`. The grid spans about 48 mm around the disc, so L3 and L4 are the
    vertebrae in it.
    """

    labels = np.zeros(rendered.tissue.shape, dtype=np.uint8)
    for roi_label, structure in _TS_MUSCLES.items():
        labels[rendered.compartment == roi_label] = ids[structure]
    _vertebra_labels(labels, rendered, grid, vertebra)
    return labels


# ----------------------------------------------------------------------------------------
# Issue 23: vertebra labels shaped like real TotalSegmentator masks
# ----------------------------------------------------------------------------------------
#: The caudal reach (mm below the disc mid-plane) of the cranial vertebra's posterior elements
#: grows from the back of the body to the tip of the spinous process: a real L3 label's
#: laminae, inferior articular and spinous processes hang 10-15 mm below its body.
_POSTERIOR_DROP_MM = (2.0, 0.2, 12.0)          # at the body's back, per mm posterior, at most
#: Stray components of a neighbouring vertebra's label (a few hundred T11 voxels inside T12's
#: body on a real case): (vertebra labelled, placed in the body of, w of centre past the
#: disc's half height in mm (signed, + cranial), semi-axes u, v, w in mm).
_STRAYS = (("vertebrae_L3", "vertebrae_L4", -9.0, (6.0, 5.0, 4.0)),
           ("vertebrae_L2", "vertebrae_L3", 9.0, (5.0, 5.0, 4.0)))


def _posterior_drop_mm(v_behind_body: np.ndarray) -> np.ndarray:
    first, per_mm, most = _POSTERIOR_DROP_MM
    return np.clip(first + per_mm * v_behind_body, first, most)


def _vertebra_labels(labels: np.ndarray, rendered: _Rendered, grid: _Grid, vertebra: _Vertebra) -> None:
    """Label the bone of the phantom L3 or L4 as a real TotalSegmentator map does, in place.

    * the vertebral bodies are split by the tilted disc mid-plane (the truth: the disc plane at
      the body's centre column is ``w = 0``, the series' ``disc_z_mm``);
    * the posterior elements (every bone voxel behind the body) of L3 reach caudally past the
      disc, by :data:`_POSTERIOR_DROP_MM`;
    * pedicles join each body to its posterior elements, as they do in a real label;
    * small stray components of a neighbour's label sit inside a body (:data:`_STRAYS`).
    """

    shape = labels.shape
    bone = np.isin(rendered.tissue, (CORTICAL, CANCELLOUS))
    local_w = (grid.w[:, None] - vertebra.tilt * (grid.v[None, :] - vertebra.centre_v))[:, :, None]   # (Z, Y, 1)
    body_back = vertebra.centre_v + vertebra.body.b
    behind = (grid.v - body_back)[None, :, None]                                                       # (1, Y, 1)
    posterior = np.broadcast_to(behind > 0.0, shape)
    upper = np.where(posterior, local_w > -_posterior_drop_mm(np.maximum(behind, 0.0)), local_w > 0.0)
    labels[bone & upper] = ids["vertebrae_L3"]
    labels[bone & ~upper] = ids["vertebrae_L4"]
    _pedicle_labels(labels, rendered, grid, vertebra, local_w, ids)
    for structure, host, w_past_half, semi_axes in _STRAYS:
        centre_w = w_past_half + math.copysign(vertebra.disc_half_mm, w_past_half)
        _stray_labels(labels, grid, vertebra, ids[structure], ids[host], centre_w, semi_axes)


def _pedicle_labels(labels, rendered, grid, vertebra, local_w, ids) -> None:
    """Two bars from the back of each body to its arch, over the body's height (never the disc's)."""
    u = grid.u[None, None, :]
    v = grid.v[None, :, None]
    back = vertebra.centre_v + vertebra.body.b
    bar = ((np.abs(u) >= 0.5 * vertebra.body.a) & (np.abs(u) <= 0.72 * vertebra.body.a)
           & (v >= back - 2.0) & (v <= back + 10.0))
    free = (labels == 0) & (rendered.tissue != CSF)
    clear = vertebra.disc_half_mm + 2.0
    labels[bar & free & (local_w > clear)] = ids["vertebrae_L3"]
    labels[bar & free & (local_w < -clear)] = ids["vertebrae_L4"]


def _stray_labels(labels, grid, vertebra, value: int, host: int, centre_w: float, semi_axes) -> None:
    """An ellipsoid of label ``value`` where ``host`` is, centred in the body at ``centre_w``."""
    a, b, c = semi_axes
    u = grid.u[None, None, :] / a
    v = (grid.v[None, :, None] - vertebra.centre_v + 0.3 * vertebra.body.b) / b
    w = (grid.w[:, None, None] - centre_w) / c
    labels[(u * u + v * v + w * w <= 1.0) & (labels == host)] = value


def _storage(labels: np.ndarray, grid: _Grid, ras: bool) -> tuple[np.ndarray, dict]:
    """The label array and its geometry as stored: LPS/DICOM order, or RAS as TotalSegmentator writes.

    RAS storage (nibabel's canonical orientation, which TotalSegmentator's NIfTI output has):
    the first two array axes run towards patient right and anterior, so the array is flipped
    along x and y and the origin is the voxel that was the last column and row; every voxel
    keeps its physical place.
    """
    if not ras:
        return labels, {"spacing_mm": grid.spacing_mm, "origin_mm": grid.origin_mm}
    nz, ny, nx = labels.shape
    sx, sy, _ = grid.spacing_mm
    ox, oy, oz = grid.origin_mm
    return (np.ascontiguousarray(labels[:, ::-1, ::-1]),
            {"spacing_mm": grid.spacing_mm, "origin_mm": (ox + (nx - 1) * sx, oy + (ny - 1) * sy, oz),
             "direction": (-1, 0, 0, 0, -1, 0, 0, 0, 1)})


def _write_totalsegmentator(pdir: Path, modality: str, labels: np.ndarray, grid: _Grid,
                            ras: bool = False) -> tuple[Path, Path]:
    """Both TotalSegmentator output forms: the ``--ml`` multilabel NIfTI and the per-structure folder.

    Returns (multilabel file, folder). The folder holds one file per structure the phantom has
    (every other TotalSegmentator structure would be an empty mask; they are left out). ``ras``:
    stored as TotalSegmentator writes (RAS), else in the DICOM series' LPS order.
    """

    stored, geometry = _storage(labels, grid, ras)
    ml = write_mask(pdir / f"{modality}_totalseg.nii.gz", stored, **geometry)
    folder = pdir / f"{modality}_totalseg"
    for structure in (*_TS_VERTEBRAE, *_TS_MUSCLES.values()):
        write_mask(folder / f"{structure}.nii.gz", (stored == ids[structure]).astype(np.uint8), **geometry)
    return ml, folder


def segmentation_storage_is_ras(index: int) -> bool:
    """Patients 2, 3, 6, 7, ... store their segmentations as RAS, the others in LPS order (issue 23).

    With the multilabel/folder alternation (even/odd), each form comes in both orientations.
    """
    return (index // 2) % 2 == 1


def _segmentation_cells(pdir: Path, index: int, sim: dict, rel) -> dict:
    """Write each modality's TotalSegmentator output; the manifest cells name one form, alternating."""
    anat_vertebra = sim["vertebra"]
    cells = {}
    for modality, key in (("ct", "ct"), ("mri", "mr")):
        grid = sim[key]["grid"]
        labels = _totalsegmentator_labels(sim[key]["rendered"], grid, anat_vertebra)
        ml, folder = _write_totalsegmentator(pdir, modality, labels, grid, ras=segmentation_storage_is_ras(index))
        cells[f"{modality}_segmentation"] = rel(ml if index % 2 == 0 else folder)
    return cells


def _stream_int(seed: int, index: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, index, stream]).generate_state(1)[0])


# =========================================================================================
# Cohort
# =========================================================================================
def _csv_text(rows: list[dict], columns) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _assign_splits(rows: list[dict], seed: int) -> list[str]:
    """The engine's own seeded, stratified 6:4 train/validation split (:func:`engine.inputs.manifest.assign_splits`)."""

    table = pd.DataFrame({"split": [""] * len(rows), "label": [float(r["label"]) for r in rows]},
                         index=[r["patient_id"] for r in rows])
    split = assign_splits(table, train_fraction=0.6, seed=seed)
    return [split[r["patient_id"]] for r in rows]


def synthesize_cohort(out_dir, *, n_patients: int, seed: int = 0, size: str = "clinical", workers: int = 1,
                      progress: Callable[[int, int], None] | None = None, splits: bool = False,
                      lean: bool = False, spine_fov: bool = False) -> Path:
    """Write a synthetic lumbar CT + T2 MRI sarcopenia cohort with known truth.

    Parameters
    ----------
    out_dir : str or Path
        Folder to write into (created). Existing ``patients/<id>`` folders of the generated ids
        are replaced.
    n_patients : int
        Number of patients (``SYN0001`` ...). Patient ``i`` is the same whatever ``n_patients``.
    seed : int, default 0
        Non-negative. Same seed: identical CSVs and byte-identical pixel data.
    size : {"clinical", "small"}
        ``clinical``: CT 512 x 512 at 0.68-0.78 mm, MRI 0.5-0.9 mm (256-512 matrix).
        ``small``: CT 256 x 256 at 1.40-1.50 mm, MRI 1.0-1.8 mm (128-192 matrix); for tests.
        Both: CT 17 slices of 3 mm (48 mm between outer slice centres, disc within 1.5 mm of the
        middle), MRI 10 slices of 4 mm at 4.4 mm.
    workers : int, default 1
        Processes; patients are seeded independently so the output does not depend on it.
    progress : callable(done, n), optional
        Called in the calling process after each patient is written (``done`` from 1 to n).
    splits : bool, default False
        False leaves ``split`` empty (the engine makes its seeded 6:4 split); True fills a
        stratified seeded 6:4 ``train``/``validation`` split.
    lean : bool, default False
        True: lean muscle only, no intramuscular fat in any patient (``imf_target_fraction`` 0);
        the ROI still takes in the thin fat planes at the muscle borders, as a reader's ROI does.
        The cohort on which a two-class split divides one tissue (issue 18). False (default):
        the output is unchanged.
    spine_fov : bool, default False
        True (issue 24): the MRI is acquired the way a lumbar spine protocol does, a 160-200 mm
        field of view centred on the spinal canal that cuts the flanks and part of the back's
        subcutaneous fat; every third patient (index 2, 5, ...) is obese with no air anywhere in
        that field of view. CT and everything else are unchanged. False (default): unchanged.

    Returns
    -------
    Path
        ``out_dir / "manifest.csv"``. Also written: ``truth.csv``, ``phi_planted.json``.
    """
    if size not in _SIZES:
        raise ValueError(f"size must be one of {sorted(_SIZES)}, got {size!r}")
    if not isinstance(n_patients, (int, np.integer)) or n_patients < 1:
        raise ValueError(f"n_patients must be a positive integer, got {n_patients!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    out_dir = Path(out_dir).resolve()
    (out_dir / "patients").mkdir(parents=True, exist_ok=True)
    n_patients, seed = int(n_patients), int(seed)

    results: dict[int, tuple] = {}
    if workers == 1 or n_patients == 1:
        for i in range(n_patients):
            results[i] = _write_patient(out_dir, seed, i, size, lean, spine_fov)
            if progress is not None:
                progress(len(results), n_patients)
    else:
        # spawn: no inherited locks or threads from the caller (Dask, BLAS pools)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, n_patients), mp_context=context) as pool:
            futures = {pool.submit(_write_patient, out_dir, seed, i, size, lean, spine_fov): i
                       for i in range(n_patients)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                if progress is not None:
                    progress(len(results), n_patients)

    manifest_rows = [results[i][0] for i in range(n_patients)]
    truth_rows = [results[i][1] for i in range(n_patients)]
    if splits:
        for row, split in zip(manifest_rows, _assign_splits(manifest_rows, seed), strict=True):
            row["split"] = split
    planted = sorted({s for i in range(n_patients) for s in results[i][2]})

    manifest_path = out_dir / "manifest.csv"
    write_text(out_dir / "truth.csv", _csv_text(truth_rows, truth_rows[0].keys()))
    write_text(out_dir / "phi_planted.json", json.dumps(planted, indent=1) + "\n")
    write_text(manifest_path, _csv_text(manifest_rows, MANIFEST_COLUMNS + SEGMENTATION_COLUMNS))
    return manifest_path
