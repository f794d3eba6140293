"""Every CT and MR file shipped with pydicom and pydicom-data reads as pydicom decodes it.

The file list is built from the headers of pydicom's own test folder and the installed
``pydicom-data`` store (never from the network: ``get_testdata_files('*')`` would try to
download). The reference is pydicom's ``pixel_array`` with ``apply_rescale``; for enhanced
multi-frame objects the rescale of the Pixel Value Transformation functional group (which
``apply_rescale`` does not read) is applied to the same decoded frames, in the order of the
frames' positions along the slice normal.

Files that are deliberately broken (truncated pixel data, multi-frame objects without any
frame position) must raise InputError instead.
"""

from __future__ import annotations

import pathlib
import warnings

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.pixels import apply_rescale

from engine.errors import InputError
from engine.io import inspect_path, read_dicom_series, read_image, scan_dicom_folder


def _roots() -> list[pathlib.Path]:
    roots = [pathlib.Path(pydicom.__file__).parent / "data" / "test_files"]
    try:
        from data_store import DataStore  # the pydicom-data package

        roots.append(pathlib.Path(DataStore().data_path))
    except Exception:  # noqa: BLE001 - the test of the count below says what is missing
        pass
    return roots


def _header(path: pathlib.Path):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path, stop_before_pixels=True, force=False)
    except Exception:  # noqa: BLE001 - not DICOM, or not readable: not a candidate
        return None


def _has_frame_positions(header) -> bool:
    groups = header.get("PerFrameFunctionalGroupsSequence")
    return bool(groups) and all(item.get("PlanePositionSequence") for item in groups)


def _collect():
    """(id, path, expectation) for every CT/MR grayscale image file; expectation is 'read' or 'error'."""
    cases = []
    for root in _roots():
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            header = _header(path)
            if header is None or str(header.get("Modality", "")).upper() not in ("CT", "MR"):
                continue
            if header.get("Rows") is None or int(header.get("SamplesPerPixel", 1) or 1) != 1:
                continue  # no image (DICOMDIR test stubs) or colour
            frames = int(header.get("NumberOfFrames", 1) or 1)
            broken = any(word in path.name.lower() for word in ("truncated", "too_short"))
            unplaceable = frames > 1 and not _has_frame_positions(header)
            no_geometry = frames == 1 and (
                header.get("ImagePositionPatient") is None or header.get("ImageOrientationPatient") is None
            )
            expectation = "error" if (broken or unplaceable or no_geometry) else "read"
            cases.append(pytest.param(path, expectation, id=f"{root.name}/{path.relative_to(root)}"))
    return cases


CASES = _collect()


def test_the_file_list_is_not_trivial():
    readable = [c for c in CASES if c.values[1] == "read"]
    names = {c.values[0].name for c in CASES}
    assert len(readable) >= 40, f"only {len(readable)} readable CT/MR files found"
    # the transfer syntaxes PACS exports use are all represented
    for expected in (
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_RLE.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "CT_small.dcm",
        "MR2_J2KR.dcm",
        "693_J2KR.dcm",
        "bad_sequence.dcm",
        "eCT_Supplemental.dcm",
        "MR_truncated.dcm",
        "emri_small.dcm",
    ):
        assert expected in names, f"{expected} missing: is pydicom-data installed?"
    syntaxes = {str(_header(c.values[0]).file_meta.TransferSyntaxUID) for c in readable}
    for uid in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.5",
                "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"):
        assert uid in syntaxes, f"no readable file in transfer syntax {uid}"


def _reference(path: pathlib.Path) -> np.ndarray:
    """pydicom's own decode and rescale, as (Z, Y, X) float32 sorted along the slice normal."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1:
        return np.asarray(apply_rescale(stored, ds), dtype=np.float64).astype(np.float32)[None]
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else pydicom.Dataset()
    out, keys = [], []
    for index, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        def find(sequence, keyword, default, item=item):
            for group in (item, shared):
                if sequence in group and keyword in group[sequence][0]:
                    return group[sequence][0][keyword].value
            return default
        slope = float(find("PixelValueTransformationSequence", "RescaleSlope", 1.0))
        intercept = float(find("PixelValueTransformationSequence", "RescaleIntercept", 0.0))
        iop = np.asarray(find("PlaneOrientationSequence", "ImageOrientationPatient", None), dtype=float)
        ipp = np.asarray(find("PlanePositionSequence", "ImagePositionPatient", None), dtype=float)
        keys.append(float(ipp @ np.cross(iop[:3], iop[3:])))
        out.append((stored[index].astype(np.float64) * slope + intercept).astype(np.float32))
    return np.stack([out[i] for i in np.argsort(keys, kind="stable")])


@pytest.mark.parametrize("path, expectation", CASES)
def test_pydicom_test_file(path, expectation):
    if expectation == "error":
        with pytest.raises(InputError) as error:
            read_image(path)
        assert error.value.stage == "ingest"
        inspected = inspect_path(path)
        assert inspected.get("error"), "inspect must report why the engine refuses the file"
        return
    image, info = read_image(path)
    values = sitk.GetArrayFromImage(image)
    reference = _reference(path)
    assert image.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(values, reference)

    header = _header(path)
    if "PixelSpacing" in header:
        row_spacing, col_spacing = (float(v) for v in header.PixelSpacing)
        np.testing.assert_allclose(image.GetSpacing()[:2], (col_spacing, row_spacing), rtol=1e-9)
    if "ImagePositionPatient" in header and values.shape[0] == 1:
        np.testing.assert_allclose(image.GetOrigin(), [float(v) for v in header.ImagePositionPatient], atol=1e-9)
        iop = [float(v) for v in header.ImageOrientationPatient]
        direction = np.asarray(image.GetDirection()).reshape(3, 3)
        np.testing.assert_allclose(direction[:, 0], iop[:3], atol=1e-4)  # cosines are normalised
        np.testing.assert_allclose(direction[:, 1], iop[3:], atol=1e-4)

    inspected = inspect_path(path)
    assert "error" not in inspected
    assert inspected["min"] == float(reference.min()) and inspected["max"] == float(reference.max())
    assert inspected["size"] == [reference.shape[2], reference.shape[1], reference.shape[0]]
    assert inspected["modality"] == str(header.Modality)


def test_dicomdir_series_sorted_by_position():
    """The 5-slice CT series of pydicom's DICOMDIR fixture, read through the DICOMDIR."""
    folder = pathlib.Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"
    series = scan_dicom_folder(folder)
    assert len([s for s in series if s.is_image]) == 13
    smart = next(s for s in series if s.description.startswith("SmartScore"))
    image, info = read_dicom_series(folder, series_uid=smart.series_uid)
    datasets = [pydicom.dcmread(f) for f in smart.files]
    normal = np.cross(*np.asarray(datasets[0].ImageOrientationPatient, dtype=float).reshape(2, 3))
    datasets.sort(key=lambda ds: float(np.asarray(ds.ImagePositionPatient, dtype=float) @ normal))
    expected = np.stack([apply_rescale(ds.pixel_array, ds).astype(np.float32) for ds in datasets])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), expected)
    np.testing.assert_allclose(image.GetOrigin(), [float(v) for v in datasets[0].ImagePositionPatient])
    assert info.n_files == 5
