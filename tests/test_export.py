"""``sarco export`` from sources the engine did not write, from apply folders, and without identifiers left behind.

One small CT run is shared by every test here: a synthetic patient (SYN0001), the same CT rewritten
by another writer (SimpleITK/GDCM: a minimal header), and a real anonymised Siemens CT from
``../shared/realdata`` (empty Study, Series and SOP Instance UIDs in the data set) with a hand ROI
taken from TotalSegmentator's autochthon labels. The objects are built in-process and checked by
independent readers: dicom3tools' ``dciodvfy`` (no error), highdicom (reads each back), and the
standard's own module tables (the ablation deletes and empties every attribute of the copied
modules that is not Type 1, one at a time).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image

from engine.batch.pipeline import run
from engine.cli import main
from engine.config import load_config
from engine.contract import EXPORT_LOG_CSV, FEATURES_CSV, MODEL_JSON, THRESHOLDS_JSON
from engine.exporters import EXPORTERS, build_objects, builds_inline, export_run
from engine.exporters.source import (
    ExportError,
    ExportRun,
    PatientResult,
    SourceSeries,
    copied_modules,
    habitats_on_source,
    read_source,
)
from engine.qa.panel import BACKGROUND_RGB, TITLE_BAND_PX
from tests import cohorts
from tests import corruptions as corpus
from tests.realct import SIEMENS, siemens_roi

needs_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools (dciodvfy) is not installed")
needs_siemens = pytest.mark.skipif(not SIEMENS.is_dir(), reason="../shared/realdata is not there")
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _write_sitk_series(source: Path, out: Path) -> None:
    """The CT rewritten slice by slice by SimpleITK's GDCM writer: only the tags given here plus GDCM's own."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(source)))
    image = reader.Execute()
    out.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    study, series, frame = (str(pydicom.uid.generate_uid()) for _ in range(3))
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        for tag, value in (("0020|000d", study), ("0020|000e", series), ("0020|0052", frame), ("0008|0060", "CT"),
                           ("0008|0016", CT_IMAGE_STORAGE), ("0008|0018", str(pydicom.uid.generate_uid())),
                           ("0020|0013", str(k + 1)), ("0028|1052", "0"), ("0028|1053", "1"),
                           ("0020|0032", "\\".join(f"{v:f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))),
                           ("0020|0037", "\\".join(f"{v:f}" for v in (*image.GetDirection()[0::3],
                                                                       *image.GetDirection()[1::3])))):
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(out / f"slice{k:03d}.dcm"))
        writer.Execute(plane)


@pytest.fixture(scope="module")
def export_case(tmp_path_factory):
    """(manifest, run folder): SYN0001, its SimpleITK rewrite GDCM0001 and, when present, the Siemens REAL0001."""
    cohort_manifest = cohorts.few_patients(tmp_path_factory, 1, "export")
    _, rows = corpus.read_rows(cohort_manifest)
    work = tmp_path_factory.mktemp("export_case")
    synthetic = (cohort_manifest.parent / rows[0]["ct_image"]).resolve()
    roi = str((cohort_manifest.parent / rows[0]["ct_roi"]).resolve())
    _write_sitk_series(synthetic, work / "gdcm_ct")
    table = [{"patient_id": "SYN0001", "label": "0", "split": "train", "ct_image": str(synthetic), "ct_roi": roi},
             {"patient_id": "GDCM0001", "label": "1", "split": "train", "ct_image": str(work / "gdcm_ct"),
              "ct_roi": roi}]
    if SIEMENS.is_dir():
        table.append({"patient_id": "REAL0001", "label": "1", "split": "train",
                      "ct_image": str(SIEMENS / "dicom"), "ct_roi": str(siemens_roi(work / "siemens_roi.nii.gz"))})
    manifest = corpus.write_rows(work / "manifest.csv", list(table[0]), table)
    config = load_config(overrides={"run": {"backend": "cpu", "scheduler": "inline", "report": False, "qa": True},
                                    "stats": {"enabled": False}})
    out = work / "run"
    result = run(manifest, out_dir=out, config=config)
    assert result.errors.empty, result.errors.to_string()
    return manifest, out


@pytest.fixture(scope="module")
def exported(export_case, tmp_path_factory):
    """``sarco export RUN --manifest M --dicom OUT --new-study`` of the shared run: (folder, stderr)."""
    manifest, out = export_case
    folder = tmp_path_factory.mktemp("exported")
    console = io.StringIO()
    with contextlib.redirect_stderr(console):
        status = main(["export", str(out), "--manifest", str(manifest), "--dicom", str(folder), "--new-study"])
    assert status == 0, console.getvalue()
    return folder, console.getvalue()


@pytest.fixture(scope="module")
def synthetic_result(export_case):
    """SYN0001's result with its source series read (the ablation copies and edits its headers)."""
    manifest, out = export_case
    folder = ExportRun.open(out, manifest)
    result = folder.result("SYN0001", "ct")
    result.source = read_source(folder, "SYN0001", "ct")
    return result


def _validate(built: dict, folder: Path) -> list[str]:
    """dciodvfy's errors and highdicom's refusals of each built object (written to ``folder``)."""
    problems = []
    folder.mkdir(parents=True, exist_ok=True)
    readers = {"seg": hd.seg.segread, "sr": hd.sr.srread, "sc": pydicom.dcmread}
    for kind, dataset in built.items():
        path = folder / f"{kind}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        try:
            readers[kind](path)
        except Exception as exc:  # noqa: BLE001 - any refusal is the finding
            problems.append(f"{kind}: highdicom: {type(exc).__name__}: {exc}")
        if shutil.which("dciodvfy"):
            report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
            problems += [f"{kind}: {line}" for line in (report.stdout + report.stderr).splitlines()
                         if line.startswith("Error")]
    return problems


#: The modules whose attributes the exports copy or read (PS3.3 via highdicom's tables), for a CT
#: image. Optional modules with a Type 1 attribute (Clinical Trial) are left out: half of one is not
#: a valid source to begin with.
ABLATED_MODULES = [(key, attributes) for key, _, attributes in copied_modules(CT_IMAGE_STORAGE)
                   if not key.startswith("clinical-trial")]


#: Type 3 attributes whose presence makes a Type 1C one required (PS3.3 C.7.1.1): a date in an
#: alternative calendar (Patient's Alternative Calendar), a strain or genetic modification (a
#: non-human patient: Patient Species), Patient Identity Removed (De-identification Method). Added
#: alone, the source itself would be invalid.
CONDITIONS = {"PatientBirthDateInAlternativeCalendar", "PatientDeathDateInAlternativeCalendar", "StrainDescription",
              "StrainNomenclature", "StrainStockSequence", "StrainAdditionalInformation", "StrainCodeSequence",
              "GeneticModificationsSequence", "PatientIdentityRemoved"}


def _copy(ds):
    """A deep copy of a header, through its encoding (several times faster than ``copy.deepcopy``)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def _ablated(result, keywords, how: str):
    """A copy of ``result`` (Otsu only: the headers are what is tested) whose every source header has
    ``keywords`` deleted or emptied (added empty where absent)."""
    datasets = [_copy(ds) for ds in result.series.datasets]
    for ds in datasets:
        for keyword in [keywords] if isinstance(keywords, str) else keywords:
            if how == "deleted":
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, None)
    return dataclasses.replace(result, source=dataclasses.replace(result.series, datasets=datasets), extras={},
                               methods=result.methods[:1])


def _ablation_cases(attributes: dict[str, str], present: set[str], how: str) -> list[list[str]]:
    """One case per attribute the source has and per Type 2 attribute; the absent Type 3 ones, which
    highdicom copies one by one as they are, emptied together in one case (deleting them is a no-op).
    An absent conditional one (1C, 2C: a non-human patient's breed, say) is not added: its condition
    would not hold, and adding it would make the source itself invalid; so is one whose presence
    is the condition of a Type 1C (:data:`CONDITIONS`)."""
    cases = [[kw] for kw, kind in attributes.items() if kind != "1" and (kw in present or kind == "2")]
    absent = [kw for kw, kind in attributes.items() if kind == "3" and kw not in present and kw not in CONDITIONS]
    return cases + ([absent] if absent and how == "emptied" else [])


def test_the_ablation_covers_the_modules_the_issue_names():
    """Positive control: the standard's tables give the attributes another writer drops (issue 29)."""
    keywords = {kw for _, attributes in ABLATED_MODULES for kw, kind in attributes.items() if kind != "1"}
    assert {"PatientSex", "AccessionNumber", "StudyID", "StudyTime", "ReferringPhysicianName", "PatientBirthDate",
            "SeriesNumber", "Manufacturer", "PatientAge", "InstitutionName", "BodyPartExamined"} <= keywords
    assert {key for key, _ in ABLATED_MODULES} >= {"patient", "general-study", "patient-study", "general-series",
                                                  "general-equipment"}
    assert len(keywords) > 80


@needs_dciodvfy
@pytest.mark.parametrize("how", ["deleted", "emptied"])
@pytest.mark.parametrize("module", [key for key, _ in ABLATED_MODULES])
def test_a_source_without_any_one_attribute_exports_valid_objects(synthetic_result, module, how, tmp_path):
    """Issue 29: every attribute of the copied modules that is not Type 1, deleted, and emptied, in
    the source: the SEG, SR and SC are still dciodvfy-clean and read back by highdicom."""
    attributes = dict(ABLATED_MODULES)[module]
    present = {kw for kw in attributes if any(kw in ds for ds in synthetic_result.series.datasets)}
    problems = []
    for i, keywords in enumerate(_ablation_cases(attributes, present, how)):
        try:
            found = _validate(build_objects(_ablated(synthetic_result, keywords, how)), tmp_path / str(i))
        except Exception as exc:  # noqa: BLE001 - an export error is a finding here, not a crash
            found = [f"{type(exc).__name__}: {exc}"]
        problems += [f"{'+'.join(keywords)} {how}: {p}" for p in found]
    assert problems == []


@needs_dciodvfy
def test_a_source_missing_every_type2_attribute_at_once(synthetic_result, tmp_path):
    """Issue 29: PatientSex, AccessionNumber, StudyID, StudyTime, ReferringPhysicianName... all absent
    (gave 0 of 12 exported before: "'FileDataset' object has no attribute 'PatientSex'")."""
    ablated = synthetic_result
    for _, _, attributes in copied_modules(CT_IMAGE_STORAGE):
        for keyword, kind in attributes.items():
            if kind.startswith("2"):
                ablated = _ablated(ablated, keyword, "deleted")
    assert all("PatientSex" not in ds and "StudyID" not in ds for ds in ablated.series.datasets)
    built = build_objects(ablated)
    assert _validate(built, tmp_path) == []
    for keyword in ("PatientSex", "AccessionNumber", "StudyID", "ReferringPhysicianName"):  # Type 2: present, empty
        assert keyword in built["seg"] and keyword in built["sr"] and not built["seg"].get(keyword)


def test_a_source_without_a_frame_of_reference_is_one_clear_line(synthetic_result):
    """Issue 22: no Frame of Reference UID, no place for a SEG: the patient's export error, not a crash."""
    with pytest.raises(ExportError, match="no Frame of Reference UID"):
        build_objects(_ablated(synthetic_result, "FrameOfReferenceUID", "deleted"))


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID"])
@pytest.mark.parametrize("how", ["deleted", "emptied"])
def test_a_source_without_its_study_or_series_uid_is_one_clear_line(synthetic_result, keyword, how, tmp_path):
    """Issue 29: without a Study or Series Instance UID the objects cannot go into the source study:
    an export error naming the attribute and --new-study, never 'unexpected'; with --new-study, valid files."""
    ablated = _ablated(synthetic_result, keyword, how)
    with pytest.raises(ExportError) as caught:
        build_objects(ablated)
    assert caught.value.step == "source"
    assert keyword.replace("InstanceUID", " Instance UID") in caught.value.reason
    assert "--new-study" in caught.value.reason
    built = build_objects(_ablated(synthetic_result, keyword, how), new_study=True)
    original = synthetic_result.series.datasets[0]
    assert built["seg"].StudyInstanceUID not in ("", original.StudyInstanceUID)
    assert built["seg"].PatientID == original.PatientID  # the patient stays the source's
    if shutil.which("dciodvfy"):
        assert _validate(built, tmp_path) == []


def _export(argv: list[str], capsys) -> tuple[int, str]:
    status = main(argv)
    return status, capsys.readouterr().err


def _log(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False).set_index(["patient_id", "object"])


@needs_siemens
def test_the_real_anonymised_siemens_series(export_case, exported, tmp_path):
    """Issue 29: the real Siemens CT (empty Study/Series/SOP UIDs; "unexpected KeyError: ''" before) is
    one clear line per object; with --new-study its objects are written, valid, in a new study, and
    the sources that have their UIDs stay in their own studies."""
    manifest, out = export_case
    result = export_run(out, manifest=manifest, dicom_dir=tmp_path / "a", patients=["REAL0001"])
    log = result.log.set_index("object")
    assert set(log["status"]) == {"failed"}
    assert log.loc["seg", "reason"].startswith("[source] the source series has no Study Instance UID and no "
                                               "Series Instance UID")
    assert "--new-study" in log.loc["seg", "reason"]
    folder, err = exported
    # every patient exported, REAL0001 in a new study: stderr holds the progress lines only, no patient's line
    assert [line for line in err.splitlines() if not line.startswith("export: ")] == [], err
    seg = hd.seg.segread(folder / "REAL0001__ct_seg.dcm")
    assert seg.StudyInstanceUID and not seg.PatientID  # the anonymised patient, as the source has it
    sources = {pydicom.dcmread(str(p), stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID
               for p in (SIEMENS / "dicom").iterdir()}
    referenced = {i.ReferencedSOPInstanceUID for series in seg.ReferencedSeriesSequence
                  for i in series.ReferencedInstanceSequence}
    assert referenced and referenced <= sources  # the source images, by the UIDs of their file meta
    synthetic = pydicom.dcmread(str(folder / "SYN0001__ct_seg.dcm"), stop_before_pixels=True)
    first = next(Path(pd.read_csv(manifest)["ct_image"][0]).iterdir())
    assert synthetic.StudyInstanceUID == pydicom.dcmread(str(first), stop_before_pixels=True).StudyInstanceUID
    built = {kind: pydicom.dcmread(str(folder / f"REAL0001__ct_{kind}.dcm")) for kind in EXPORTERS}
    assert _validate(built, tmp_path / "check") == []


@needs_dciodvfy
def test_a_source_written_by_simpleitk_exports_valid_objects(exported, tmp_path):
    """Issue 29: DICOM written by another writer (SimpleITK/GDCM, a minimal header) exports cleanly."""
    folder, _ = exported
    built = {kind: pydicom.dcmread(str(folder / f"GDCM0001__ct_{kind}.dcm")) for kind in EXPORTERS}
    assert _validate(built, tmp_path / "check") == []


def _segment_volumes_cm3(seg_path: Path, voxel_mm3: float) -> dict[int, float]:
    """Segment number -> its voxels in the SEG (read by pydicom/highdicom, not the engine) times the voxel."""
    seg = hd.seg.segread(seg_path)
    pixels = seg.pixel_array.reshape(seg.pixel_array.shape[0], -1)
    numbers = [int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
               for f in seg.PerFrameFunctionalGroupsSequence]
    volumes: dict[int, float] = {}
    for frame, number in zip(pixels, numbers, strict=True):
        volumes[number] = volumes.get(number, 0.0) + float(frame.sum()) * voxel_mm3 / 1000.0
    return volumes


def _sr_groups(sr_path: Path) -> list[dict]:
    """Each measurement group's segment number, named numbers and coded evaluations (by code value)."""
    groups = []
    for group in pydicom.dcmread(str(sr_path)).ContentSequence:
        if getattr(group, "ConceptNameCodeSequence", [None])[0] is None or \
                group.ConceptNameCodeSequence[0].CodeValue != "126010":
            continue
        for item in group.ContentSequence:
            if item.ConceptNameCodeSequence[0].CodeValue != "125007":  # each Measurement Group
                continue
            found: dict = {}
            for entry in item.ContentSequence:
                code = entry.ConceptNameCodeSequence[0].CodeValue
                if entry.ValueType == "NUM":
                    found[code] = float(entry.MeasuredValueSequence[0].NumericValue)
                elif entry.ValueType == "CODE":
                    found[code] = entry.ConceptCodeSequence[0].CodeMeaning
                elif entry.ValueType == "IMAGE" and "ReferencedSegmentNumber" in entry.ReferencedSOPSequence[0]:
                    found["segment"] = int(entry.ReferencedSOPSequence[0].ReferencedSegmentNumber)
            groups.append(found)
    return groups


def test_the_sr_states_its_grid_and_the_seg_volumes(export_case, exported):
    """Issue 29: the SR's volumes are the 1 mm grid's (features.csv); it says so, and also carries each
    segment's volume on the source grid, which equals the SEG's voxels counted independently."""
    manifest, out = export_case
    tmp_path, _ = exported
    folder = Path(pd.read_csv(manifest)["ct_image"][0])
    source = [pydicom.dcmread(str(p), stop_before_pixels=True) for p in folder.iterdir()]
    first = source[0]
    dz = float(np.median(np.diff(sorted(float(ds.ImagePositionPatient[2]) for ds in source))))
    voxel_mm3 = float(first.PixelSpacing[0]) * float(first.PixelSpacing[1]) * dz
    seg_volumes = _segment_volumes_cm3(tmp_path / "SYN0001__ct_seg.dcm", voxel_mm3)
    groups = _sr_groups(tmp_path / "SYN0001__ct_sr.dcm")
    features = pd.read_csv(out / FEATURES_CSV, dtype={"patient_id": str}).set_index("patient_id").loc["SYN0001"]
    assert groups
    differences = []
    for group in groups:
        assert group["GRID"] == "Resampled grid 1 x 1 x 1 mm"
        assert group["SRCVOL"] == pytest.approx(seg_volumes.get(group["segment"], 0.0), rel=1e-9, abs=1e-9)
        differences.append(abs(group["118565006"] - group["SRCVOL"]) / max(group["118565006"], 1e-9))
    fat_otsu = features["ct_otsu_fat_volume"] / 1000.0
    assert any(g["118565006"] == pytest.approx(fat_otsu, rel=1e-9) for g in groups)
    assert max(differences) < 0.25  # the same tissue, counted on two grids
    # the fitted methods' groups carry the pooled histogram's verdict and Ashman's D, as thresholds.json has them
    diagnostic = json.loads((out / THRESHOLDS_JSON).read_text(encoding="utf-8"))["modalities"]["ct"]["diagnostic"]
    verdict = "Likely one tissue: fitted fat unreliable" if diagnostic["likely_one_tissue"] else "Two tissues"
    fitted = [g for g in groups if "ASHMAND" in g]
    assert fitted and all(g["BIMODAL"] == verdict for g in fitted)
    assert all(g["ASHMAND"] == pytest.approx(diagnostic["ashman_d"], rel=1e-12) for g in fitted)


def test_habitats_on_the_source_grid_equal_a_resampling_onto_the_whole_grid(export_case):
    """Only the box of the source grid that a habitat map reaches is resampled (issue: sarco export is slow);
    the labels equal SimpleITK's nearest-neighbour resampling onto the whole grid, for every source here."""
    manifest, out = export_case
    folder = ExportRun.open(out, manifest)
    for patient_id, modality in folder.series():
        result = folder.result(patient_id, modality)
        result.source = read_source(folder, patient_id, modality)
        reference = result.series.reference_image()
        labels = habitats_on_source(result)
        for method, path in result.habitats.items():
            whole = sitk.Resample(sitk.ReadImage(str(path)), reference, sitk.Transform(), sitk.sitkNearestNeighbor,
                                  0, sitk.sitkUInt8)
            np.testing.assert_array_equal(labels[method], sitk.GetArrayFromImage(whole), err_msg=patient_id)


@pytest.mark.parametrize("shift_mm", [(0.0, 0.0, 0.0), (-15.0, 10.0, 7.0), (200.0, 0.0, 0.0)],
                         ids=["inside", "across-the-edge", "outside"])
def test_an_oblique_habitat_map_on_the_source_grid_equals_the_whole_grid_resampling(tmp_path, shift_mm):
    """The box holds every source voxel a rotated map on another grid reaches, at an edge of the source and
    beyond it (nothing there: all outside_roi)."""
    plane = pydicom.Dataset()
    plane.Columns, plane.Rows = 40, 36
    source = SourceSeries([plane] * 12, (0.8, 0.7, 2.5), (-20.0, -15.0, -10.0),
                          tuple(float(v) for v in np.eye(3).ravel()))
    angle = np.deg2rad(17.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    labels = np.random.default_rng(4).integers(0, 3, size=(9, 14, 11)).astype(np.uint8)
    habitat = sitk.GetImageFromArray(labels)
    habitat.SetSpacing((1.0, 1.1, 1.3))
    habitat.SetDirection(tuple(rotation.ravel()))
    habitat.SetOrigin(tuple(np.add((-8.0, -6.0, -4.0), shift_mm)))
    path = tmp_path / "habitat.nii.gz"
    sitk.WriteImage(habitat, str(path))
    result = PatientResult(patient_id="P", modality="ct", methods=["otsu"], features={}, thresholds={},
                           diagnostic=None, habitats={"otsu": path}, muscles=(), qa_png=None, identity="run/input",
                           source=source)
    on_source = habitats_on_source(result)["otsu"]
    whole = sitk.Resample(sitk.ReadImage(str(path)), source.reference_image(), sitk.Transform(),
                          sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    np.testing.assert_array_equal(on_source, sitk.GetArrayFromImage(whole))
    assert on_source.shape == (12, 36, 40)
    assert (on_source.any() if shift_mm[0] < 100 else not on_source.any())


def test_the_sc_carries_no_pseudonym_in_its_pixels(export_case, tmp_path, capsys):
    """Issue 29: the QA picture's title (the run's pseudonym) is blank in the SC; the rest is the picture."""
    manifest, out = export_case
    status, err = _export(["export", str(out), "--manifest", str(manifest), "--dicom", str(tmp_path),
                           "--objects", "sc"], capsys)
    # 1: the real Siemens series (no study UIDs, no --new-study) fails its line; the others are written
    assert status == 1 and "patient REAL0001" in err and "patient SYN0001" not in err, err
    capture = pydicom.dcmread(str(tmp_path / "SYN0001__ct_sc.dcm"))
    png = np.asarray(Image.open(next((out / "qa").rglob("SYN0001*ct*.png"))).convert("RGB"))
    assert (png[:TITLE_BAND_PX] != BACKGROUND_RGB).any()  # positive control: the PNG's title has text
    assert (capture.pixel_array[:TITLE_BAND_PX] == BACKGROUND_RGB).all()
    np.testing.assert_array_equal(capture.pixel_array[TITLE_BAND_PX:], png[TITLE_BAND_PX:])
    assert capture.BurnedInAnnotation == "NO"


def _identifiers(manifest: Path) -> set[bytes]:
    """Every UID of the sources (data set and file meta) and every absolute path of the inputs."""
    needles: set[bytes] = set()
    for row in pd.read_csv(manifest, dtype=str).itertuples():
        for column in ("ct_image", "ct_roi"):
            path = Path(getattr(row, column))
            needles |= {str(path).encode(), str(path.resolve()).encode(), str(path.parent.resolve()).encode()}
        for file in Path(row.ct_image).iterdir():
            ds = pydicom.dcmread(str(file), stop_before_pixels=True)
            for element in [*ds.iterall(), *ds.file_meta.iterall()]:
                if element.VR == "UI" and element.value and not str(element.value).startswith("1.2.840.10008"):
                    needles.add(str(element.value).encode())
    return needles


def test_no_file_of_the_run_folder_holds_a_source_uid_or_path(export_case, exported):
    """Issue 29: after a run and an export, no file of the run folder (cache/ included, compressed ones
    decompressed) holds a UID of its sources or an absolute path (provenance.json held both before)."""
    manifest, out = export_case
    needles = _identifiers(manifest) | {str(exported[0]).encode(), str(out.resolve()).encode()}
    assert len(needles) > 20  # positive control: the sources have UIDs to find
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".npz" for p in files) and any(p.suffix == ".parquet" for p in files)
    assert corpus.find_bytes(out, needles) == []
    canary = out / "cache" / "canary.json"  # the scan finds what it looks for
    canary.write_text(json.dumps({"x": next(iter(sorted(needles))).decode()}))
    try:
        assert corpus.find_bytes(out, needles)
    finally:
        canary.unlink()


def test_export_needs_the_manifest_and_checks_it(export_case, tmp_path, capsys):
    """Issue 29: without --manifest, one line and exit 2; a manifest pointing at other files fails that
    patient (its content is not what the run measured) instead of exporting onto the wrong images."""
    manifest, out = export_case
    status, err = _export(["export", str(out), "--dicom", str(tmp_path / "a")], capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1 and "--manifest" in err
    status, err = _export(["export", str(out), "--manifest", str(manifest), "--pacs", "ORTHANC@127.0.0.1:4242",
                           "--new-study"], capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1 and "--new-study" in err
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    swapped = table.copy()
    swapped.loc[swapped["patient_id"] == "SYN0001", "ct_image"] = table.loc[table["patient_id"] == "GDCM0001",
                                                                            "ct_image"].iloc[0]
    swapped.to_csv(tmp_path / "swapped.csv", index=False)
    _export(["export", str(out), "--manifest", str(tmp_path / "swapped.csv"), "--dicom", str(tmp_path / "b")], capsys)
    log = _log(tmp_path / "b" / EXPORT_LOG_CSV)
    assert "not the ones the run measured" in log.loc[("SYN0001", "seg"), "reason"]
    assert set(log.loc["GDCM0001", "status"]) == {"written"}


def test_apply_folders_export_the_frozen_thresholds_and_share_run_exit_statuses(export_case, tmp_path, capsys):
    """Issue 29: `sarco export` takes an apply folder and states the model's thresholds; apply exits 0
    when every patient is done and 1 when some failed (it exited 0 with 10 of 10 failed), saying how many."""
    manifest, out = export_case
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    night = table[table["patient_id"] == "SYN0001"].assign(split="")
    night.to_csv(tmp_path / "night.csv", index=False)
    apply_dir = tmp_path / "apply"
    base = ["apply", "--model", str(out / MODEL_JSON), "--scheduler", "inline", "--backend", "cpu"]
    assert main([*base, "--manifest", str(tmp_path / "night.csv"), "--out", str(apply_dir)]) == 0
    assert "0 failed" in capsys.readouterr().out
    status, err = _export(["export", str(apply_dir), "--manifest", str(tmp_path / "night.csv"), "--dicom",
                           str(tmp_path / "dicom"), "--objects", "seg,sr"], capsys)
    assert status == 0, err
    model = json.loads((out / MODEL_JSON).read_text(encoding="utf-8"))["thresholds"]["modalities"]["ct"]["methods"]
    stated = {g["segment"]: g["THRESH"] for g in _sr_groups(tmp_path / "dicom" / "SYN0001__ct_sr.dcm")}
    assert json.loads((apply_dir / THRESHOLDS_JSON).read_text(encoding="utf-8"))["modalities"]["ct"]["methods"] == model
    assert sorted(set(stated.values())) == pytest.approx(sorted({v["threshold"] for v in model.values()}))
    bad = pd.concat([night, night.assign(patient_id="GONE0001", ct_image=str(tmp_path / "no_such_series"))])
    bad.to_csv(tmp_path / "bad.csv", index=False)
    assert main([*base, "--manifest", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "apply_bad")]) == 1
    assert "1 failed patient-modality" in capsys.readouterr().out


def test_an_export_starts_a_local_cluster_only_where_its_start_pays():
    """Issue: sarco export is slow. A fresh cluster costs ~4.5 s before its first result and a series ~0.3 s:
    one worker is never worth it, two from 32 series, many from about 17 (the saving per series nears a build)."""
    assert all(builds_inline(n, 1) for n in (1, 100, 10_000))
    assert builds_inline(49, 2) and not builds_inline(50, 2)
    assert builds_inline(26, 16) and not builds_inline(27, 16)
    assert builds_inline(0, 64)


def test_an_export_built_on_a_dask_cluster_equals_the_inline_one(export_case, exported, tmp_path):
    """Issue 29: the objects built on a process cluster (an external scheduler, 2 worker processes)
    carry the same pixels and numbers as the inline export of the same run."""
    from distributed import LocalCluster

    manifest, out = export_case
    inline, _ = exported
    folder = tmp_path / "cluster"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        console = io.StringIO()
        with contextlib.redirect_stderr(console):
            status = main(["export", str(out), "--manifest", str(manifest), "--dicom", str(folder), "--new-study",
                           "--scheduler", cluster.scheduler_address])
    assert status == 0, console.getvalue()
    names = sorted(p.name for p in inline.glob("*.dcm"))
    assert names and sorted(p.name for p in folder.glob("*.dcm")) == names
    for name in names:
        ours, theirs = (pydicom.dcmread(str(f / name)) for f in (folder, inline))
        assert ours.SOPClassUID == theirs.SOPClassUID and ours.StudyInstanceUID == theirs.StudyInstanceUID
        if "PixelData" in theirs:
            assert np.array_equal(ours.pixel_array, theirs.pixel_array), name
        if name.endswith("_sr.dcm"):
            assert _sr_groups(folder / name) == _sr_groups(inline / name), name


#: A real CT series of pydicom's own test files (another writer, five 16 x 16 slices). Its MR
#: neighbour (98892003/MR700) mixes orientations: the reader refuses it, so it cannot be exported.
PYDICOM_CT = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "98892001" / "CT5N"


@needs_dciodvfy
def test_a_pydicom_test_series_exports_valid_objects_into_its_study(tmp_path):
    """Issue 29: a source the project did not write (a series of pydicom's test DICOMDIR) runs, exports,
    and its SEG, SR and SC are valid (dciodvfy, highdicom) and go into the source's own study."""
    source, modality = PYDICOM_CT, "ct"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(source)))
    image = reader.Execute()
    roi = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
    _, rows, cols = roi.shape
    roi[:, rows // 4: 3 * rows // 4, cols // 4: 3 * cols // 4] = 1
    mask = sitk.GetImageFromArray(roi)
    mask.CopyInformation(image)
    sitk.WriteImage(mask, str(tmp_path / "roi.nii.gz"))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"patient_id,label,split,{modality}_image,{modality}_roi\nPD0001,1,train,{source},roi.nii.gz\n",
                        encoding="utf-8")
    cfg = load_config(overrides={"run": {"backend": "cpu", "scheduler": "inline", "report": False, "qa": True},
                                 "stats": {"enabled": False}})
    result = run(manifest, out_dir=tmp_path / "run", config=cfg)
    assert result.errors.empty, result.errors.to_string()
    status = main(["export", str(tmp_path / "run"), "--manifest", str(manifest), "--dicom", str(tmp_path / "out")])
    assert status == 0
    built = {kind: pydicom.dcmread(str(tmp_path / "out" / f"PD0001__{modality}_{kind}.dcm")) for kind in EXPORTERS}
    assert _validate(built, tmp_path / "check") == []
    study = pydicom.dcmread(str(next(source.iterdir())), stop_before_pixels=True).StudyInstanceUID
    assert {str(ds.StudyInstanceUID) for ds in built.values()} == {str(study)}
