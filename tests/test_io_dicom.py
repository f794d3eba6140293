"""DICOM series ingest on synthetic series written by engine.synthetic.dicom_writer.

Each defect a PACS export can carry (missing, duplicated or tilted slices, several series,
stray files, corrupt headers, compressed transfer syntaxes) is written on purpose and must give
the volume back exactly, or an InputError saying what is wrong.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from engine.errors import InputError
from engine.io import dicom as dicom_module
from engine.io import (
    format_inspection,
    inspect_path,
    read_dicom_series,
    read_image,
    scan_dicom_folder,
)
from engine.synthetic import TRANSFER_SYNTAXES, write_dicom_seg, write_dicom_series, write_mask

SHAPE = (12, 64, 64)  # (Z, Y, X)
SPACING = (0.7, 0.8, 2.5)  # x, y, z mm
ORIGIN = (-20.0, 10.0, -20.0)
PHI = {
    "PatientName": "Zzyzx^Quetzal",
    "PatientID": "MRN-99887766",
    "PatientBirthDate": "19420817",
    "AccessionNumber": "ACC-55443322",
    "InstitutionName": "St Elsewhere Hospital",
    "StudyDate": "20230405",
}
PHI_STRINGS = ["Zzyzx", "Quetzal", "99887766", "19420817", "55443322", "Elsewhere", "20230405"]


def _stored(signed: bool = False, seed: int = 0, shape=SHAPE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 4096, size=shape)
    # a smooth component too, so compressors see real structure
    z, y, x = np.indices(shape)
    values = (values // 4 + 8 * x + 4 * y + 16 * z) % 4096
    if signed:
        return (values - 2048).astype(np.int16)
    return values.astype(np.uint16)


def _write(folder, stored=None, **kwargs):
    stored = _stored() if stored is None else stored
    options = dict(spacing_mm=SPACING, origin_mm=ORIGIN, rescale_intercept=-1024.0, patient=PHI)
    options.update(kwargs)
    return write_dicom_series(folder, stored, **options)


def _hu(stored, slope=1.0, intercept=-1024.0):
    return (stored.astype(np.float64) * slope + intercept).astype(np.float32)


def _edit(path, **changes):
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


def _assert_no_phi(text: str):
    for needle in PHI_STRINGS:
        assert needle not in text, f"PHI {needle!r} leaked into {text!r}"


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("signed", [False, True], ids=["uint16", "int16"])
@pytest.mark.parametrize("transfer_syntax", sorted(TRANSFER_SYNTAXES))
def test_round_trip_every_transfer_syntax(tmp_path, transfer_syntax, signed):
    stored = _stored(signed=signed)
    files = _write(tmp_path, stored, transfer_syntax=transfer_syntax, rescale_slope=0.5, shuffle_seed=7)
    assert all(
        pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[transfer_syntax]
        for f in files
    )

    image, info = read_dicom_series(tmp_path)

    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), _hu(stored, 0.5))
    assert image.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(image.GetSpacing(), SPACING, atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), ORIGIN, atol=1e-6)
    np.testing.assert_allclose(image.GetDirection(), np.eye(3).ravel(), atol=1e-9)
    assert info.n_files == SHAPE[0] and info.n_slices == SHAPE[0]
    assert (info.rows, info.cols) == SHAPE[1:]
    assert TRANSFER_SYNTAXES[transfer_syntax] in info.transfer_syntax
    assert info.modality == "CT"


@pytest.mark.parametrize("transfer_syntax", sorted(TRANSFER_SYNTAXES))
def test_gdcm_reads_what_we_read(tmp_path, transfer_syntax):
    """Independent reference: SimpleITK's GDCM series reader (its own decoders and slice sorter)."""
    stored = _stored(signed=True, seed=21)
    _write(tmp_path, stored, transfer_syntax=transfer_syntax, rescale_slope=0.5, shuffle_seed=3)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path)))
    gdcm_image = reader.Execute()
    ours, _ = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(gdcm_image).astype(np.float32))
    np.testing.assert_allclose(ours.GetOrigin(), gdcm_image.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(ours.GetSpacing(), gdcm_image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(ours.GetDirection(), gdcm_image.GetDirection(), atol=1e-6)


def test_writer_scrambles_instance_numbers_and_names(tmp_path):
    files = _write(tmp_path, shuffle_seed=3)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]  # slice order
    instance_numbers = [int(h.InstanceNumber) for h in headers]
    assert sorted(instance_numbers) == list(range(1, SHAPE[0] + 1))
    assert instance_numbers != sorted(instance_numbers) and instance_numbers != sorted(instance_numbers, reverse=True)
    names = [f.name for f in files]
    assert names != sorted(names) and names != sorted(names, reverse=True)
    assert not any(name.startswith(".") for name in os.listdir(tmp_path)), "temporary files left behind"


def test_shuffled_files_give_the_same_volume(tmp_path):
    stored = _stored(seed=4)
    _write(tmp_path / "ordered", stored)
    _write(tmp_path / "shuffled", stored, shuffle_seed=11)
    a, info_a = read_dicom_series(tmp_path / "ordered")
    b, info_b = read_dicom_series(tmp_path / "shuffled")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), _hu(stored))
    assert a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin() and a.GetDirection() == b.GetDirection()


def test_oblique_geometry_round_trip(tmp_path):
    angle = math.radians(20)
    # columns: x, y, z axes; rotation about the x axis (oblique axial), right-handed
    axes = np.array([[1, 0, 0], [0, math.cos(angle), -math.sin(angle)], [0, math.sin(angle), math.cos(angle)]])
    stored = _stored(seed=5)
    _write(tmp_path, stored, direction=tuple(axes.ravel()), shuffle_seed=1)
    image, _ = read_dicom_series(tmp_path)
    np.testing.assert_allclose(image.GetDirection(), axes.ravel(), atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), ORIGIN, atol=1e-5)
    np.testing.assert_allclose(image.GetSpacing(), SPACING, atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), _hu(stored))


def test_left_handed_stack_is_sorted_along_the_normal(tmp_path):
    # slices written towards -normal (z axis = -(row x col)): the reader must reverse them,
    # putting every voxel at the same physical point as written
    axes = np.diag([1.0, 1.0, -1.0])
    stored = _stored(seed=6)
    _write(tmp_path, stored, direction=tuple(axes.ravel()))
    image, _ = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), _hu(stored)[::-1])
    np.testing.assert_allclose(image.GetDirection(), np.eye(3).ravel(), atol=1e-9)
    last = np.asarray(ORIGIN) + (SHAPE[0] - 1) * SPACING[2] * axes[:, 2]
    np.testing.assert_allclose(image.GetOrigin(), last, atol=1e-6)


def test_mr_spacing_is_measured_not_slice_thickness(tmp_path):
    stored = _stored(seed=8, shape=(6, 32, 32))
    _write(tmp_path, stored, modality="MR", spacing_mm=(0.5, 0.5, 4.4), slice_thickness_mm=4.0, rescale_intercept=0.0)
    image, info = read_dicom_series(tmp_path)
    assert image.GetSpacing()[2] == pytest.approx(4.4, abs=1e-6)
    assert info.modality == "MR"
    header = pydicom.dcmread(next(tmp_path.iterdir()), stop_before_pixels=True)
    assert float(header.SliceThickness) == 4.0 and "RescaleSlope" not in header
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), stored.astype(np.float32))


# --------------------------------------------------------------------------- defects


def test_missing_middle_slice(tmp_path):
    files = _write(tmp_path, shuffle_seed=2)
    files[5].unlink()  # slice 5 is at z = -20 + 5 * 2.5 = -7.5
    with pytest.raises(InputError, match="missing slice") as error:
        read_dicom_series(tmp_path)
    assert error.value.stage == "ingest"
    assert "between z=-10.0 and z=-5.0 mm" in error.value.reason


def test_duplicated_slice(tmp_path):
    files = _write(tmp_path)
    shutil.copy(files[3], tmp_path / "copy_of_a_slice.dcm")
    with pytest.raises(InputError, match="duplicated slice positions"):
        read_dicom_series(tmp_path)


def test_non_uniform_spacing(tmp_path):
    files = _write(tmp_path)
    for k, path in enumerate(files[6:], start=6):
        _edit(path, ImagePositionPatient=[ORIGIN[0], ORIGIN[1], ORIGIN[2] + k * SPACING[2] + 0.6])
    with pytest.raises(InputError, match="non-uniform slice spacing"):
        read_dicom_series(tmp_path)


def test_gantry_tilt(tmp_path):
    files = _write(tmp_path)
    shift = math.tan(math.radians(12)) * SPACING[2]
    for k, path in enumerate(files):
        _edit(path, ImagePositionPatient=[ORIGIN[0], ORIGIN[1] + k * shift, ORIGIN[2] + k * SPACING[2]])
    with pytest.raises(InputError, match="gantry tilt") as error:
        read_dicom_series(tmp_path)
    assert "12.0 degrees" in error.value.reason


def test_inconsistent_orientation(tmp_path):
    files = _write(tmp_path)
    c, s = math.cos(math.radians(10)), math.sin(math.radians(10))
    _edit(files[4], ImageOrientationPatient=[1, 0, 0, 0, c, s])
    with pytest.raises(InputError, match="different orientations"):
        read_dicom_series(tmp_path)


def test_mixed_rows_and_pixel_spacing(tmp_path):
    uid = pydicom.uid.generate_uid()
    _write(tmp_path / "a", series_uid=uid)
    _write(
        tmp_path / "a",
        _stored(shape=(1, 32, 64)),
        series_uid=uid,
        origin_mm=(ORIGIN[0], ORIGIN[1], ORIGIN[2] + 12 * 2.5),
    )
    with pytest.raises(InputError, match="mixes image sizes"):
        read_dicom_series(tmp_path / "a")
    files = _write(tmp_path / "b")
    _edit(files[2], PixelSpacing=[0.9, 0.7])
    with pytest.raises(InputError, match="mixes pixel spacings"):
        read_dicom_series(tmp_path / "b")


def test_two_series_need_series_uid(tmp_path):
    first, second = _stored(seed=1), _stored(seed=2)
    uid_a, uid_b = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    _write(tmp_path, first, series_uid=uid_a, series_description="AX T2", shuffle_seed=1)
    _write(tmp_path, second, series_uid=uid_b, series_description="AX SOFT TISSUE", shuffle_seed=2)
    with pytest.raises(InputError) as error:
        read_dicom_series(tmp_path)
    reason = error.value.reason
    assert "2 image series" in reason and uid_a in reason and uid_b in reason
    assert "series_uid column" in reason and "AX T2" in reason and "12 files" in reason
    _assert_no_phi(reason)

    image, info = read_dicom_series(tmp_path, series_uid=uid_b)
    assert info.series_uid == uid_b
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), _hu(second))
    with pytest.raises(InputError, match="not among the image series"):
        read_dicom_series(tmp_path, series_uid="1.2.3.4")

    infos = scan_dicom_folder(tmp_path)
    assert {i.series_uid for i in infos} == {uid_a, uid_b}


def test_dicom_seg_in_the_folder_is_not_a_candidate_series(tmp_path):
    stored = _stored(seed=3)
    files = _write(tmp_path, stored)
    mask = np.zeros(SHAPE, np.uint8)
    mask[3:8, 10:30, 12:40] = 1
    write_dicom_seg(tmp_path / "seg.dcm", mask, files)
    image, info = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), _hu(stored))
    infos = scan_dicom_folder(tmp_path)
    assert sorted((i.modality, i.is_image) for i in infos) == [("CT", True), ("SEG", False)]


def test_stray_files_are_skipped_and_noted(tmp_path):
    stored = _stored(seed=9)
    files = _write(tmp_path / "series" / "deep" / "er", stored, shuffle_seed=5)
    (tmp_path / "series" / "empty.dcm").write_bytes(b"")
    (tmp_path / "series" / "README.txt").write_text("exported by PACS\n")
    (tmp_path / "series" / "deep" / "truncated.dcm").write_bytes(files[0].read_bytes()[:300])
    image, info = read_dicom_series(tmp_path / "series")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), _hu(stored))
    notes = " | ".join(info.notes)
    assert "empty.dcm: skipped, empty file" in notes
    assert "README.txt: skipped, not a DICOM file" in notes
    assert "truncated.dcm: skipped, truncated or corrupt DICOM header" in notes


def test_symlink_loop_is_not_followed(tmp_path):
    stored = _stored(seed=10, shape=(4, 16, 16))
    _write(tmp_path / "s", stored)
    (tmp_path / "s" / "loop").symlink_to(tmp_path / "s", target_is_directory=True)
    infos = scan_dicom_folder(tmp_path / "s")
    assert len(infos) == 1 and infos[0].n_files == 4


def test_too_many_files(tmp_path):
    _write(tmp_path, _stored(shape=(6, 8, 8)))
    with pytest.raises(InputError, match="more than 5 files"):
        scan_dicom_folder(tmp_path, max_files=5)


def test_huge_header_refused_before_decoding(tmp_path, monkeypatch):
    files = _write(tmp_path, _stored(shape=(3, 16, 16)))
    for path in files:
        # the largest Rows/Columns a US element can claim; 3 x 65535^2 voxels > the limit
        _edit(path, Rows=65535, Columns=65535)

    def must_not_decode(*args, **kwargs):
        raise AssertionError("pixel data were decoded before the voxel limit was checked")

    monkeypatch.setattr(dicom_module, "_decode", must_not_decode)
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(must_not_decode))
    with pytest.raises(InputError, match="more than the limit") as error:
        read_dicom_series(tmp_path)
    assert "65535 x 65535 x 3" in error.value.reason


@pytest.mark.filterwarnings("ignore:Invalid value")
def test_header_of_a_million_rows_refused(tmp_path, monkeypatch):
    # Rows=Columns=10**6 cannot be encoded in a US element: simulate the header a corrupt
    # file would yield and check the refusal happens on the header alone
    _write(tmp_path, _stored(shape=(2, 8, 8)))
    real_read_header = dicom_module._read_header

    def huge_header(path, root, notes, *args):
        header = real_read_header(path, root, notes, *args)
        header.Rows = 10**6
        header.Columns = 10**6
        return header

    monkeypatch.setattr(dicom_module, "_read_header", huge_header)
    monkeypatch.setattr(dicom_module, "_decode", lambda *a, **k: pytest.fail("decoded before the voxel check"))
    monkeypatch.setattr(dicom_module, "_decode_native", lambda *a, **k: pytest.fail("decoded before the voxel check"))
    with pytest.raises(InputError, match="1000000 x 1000000 x 2"):
        read_dicom_series(tmp_path)


def test_max_voxels_limit(tmp_path):
    _write(tmp_path, _stored(shape=(4, 16, 16)))
    with pytest.raises(InputError, match=r"io\.max_voxels"):
        read_dicom_series(tmp_path, max_voxels=1000)


def test_pixel_data_shorter_than_rows_times_columns(tmp_path):
    files = _write(tmp_path, _stored(shape=(4, 16, 16)))
    ds = pydicom.dcmread(files[2])
    ds.PixelData = ds.PixelData[:100]
    ds.save_as(files[2])
    with pytest.raises(InputError, match="shorter than Rows x Columns"):
        read_dicom_series(tmp_path)


def test_file_cut_inside_its_pixel_data_is_refused_before_any_decode(tmp_path, monkeypatch):
    # an interrupted copy: the header is whole, the pixel data end early; found from file sizes
    files = _write(tmp_path, _stored(shape=(6, 16, 16)))
    files[4].write_bytes(files[4].read_bytes()[:-200])
    monkeypatch.setattr(dicom_module, "_decode", lambda *a, **k: pytest.fail("decoded"))
    monkeypatch.setattr(dicom_module, "_decode_native", lambda *a, **k: pytest.fail("decoded"))
    with pytest.raises(InputError, match=r"shorter than Rows x Columns \(312 of 512 bytes"):
        dicom_module.open_dicom_series(tmp_path)


def _native_slices(folder, *, allocated: int, stored_bits: int, signed: bool, explicit: bool, n: int = 3):
    """Slices written by pydicom with garbage in the unused high bits (PS3.5 8.1.1 allows any)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(allocated * 100 + stored_bits + signed)
    dtype = np.dtype(f"<{'i' if signed else 'u'}{allocated // 8}")
    info = np.iinfo(dtype)
    series, frame = generate_uid(), generate_uid()
    paths = []
    for k in range(n):
        values = rng.integers(info.min, info.max, size=(5, 7), endpoint=True).astype(dtype)
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if explicit else ImplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SOPClassUID, ds.SOPInstanceUID = (
            ds.file_meta.MediaStorageSOPClassUID,
            ds.file_meta.MediaStorageSOPInstanceUID,
        )
        ds.Modality, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = "CT", series, frame
        ds.ImagePositionPatient = [0.0, 0.0, 2.0 * (n - 1 - k)]  # written in reverse z order
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.5, 0.5]
        ds.Rows, ds.Columns = values.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, stored_bits, stored_bits - 1
        ds.PixelRepresentation = int(signed)
        ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-1024"
        ds.PixelData = values.tobytes()
        if explicit:
            ds["PixelData"].VR = "OB" if allocated == 8 else "OW"
        path = pathlib.Path(folder) / f"slice{k}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.mark.parametrize("explicit", [True, False], ids=["explicit", "implicit"])
@pytest.mark.parametrize("allocated,stored_bits,signed", [
    (16, 12, False), (16, 12, True), (16, 16, True), (8, 8, False), (8, 6, True), (32, 20, True), (32, 32, False),
])
def test_native_read_equals_pydicom_pixel_array(tmp_path, allocated, stored_bits, signed, explicit, monkeypatch):
    # the reader takes native pixel data straight from the file; pydicom's pixel_array and
    # apply_rescale are the reference, unused high bits included
    from pydicom.pixels import apply_rescale

    paths = _native_slices(tmp_path, allocated=allocated, stored_bits=stored_bits, signed=signed, explicit=explicit)
    expected = []
    for path in reversed(paths):  # ascending z
        ds = pydicom.dcmread(path)
        expected.append(np.asarray(apply_rescale(ds.pixel_array, ds), np.float64).astype(np.float32))
    monkeypatch.setattr(dicom_module, "_decode", lambda *a, **k: pytest.fail("fell back to a pydicom decode"))
    image, _ = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), np.stack(expected))


@pytest.mark.parametrize("transfer_syntax", ["explicit_le", "rle"])
def test_box_read_decodes_only_the_slices_it_covers(tmp_path, transfer_syntax, monkeypatch):
    stored = _stored(shape=(12, 20, 24))
    _write(tmp_path, stored, transfer_syntax=transfer_syntax, shuffle_seed=3)
    whole, _ = read_dicom_series(tmp_path)
    series = dicom_module.open_dicom_series(tmp_path)
    decoded = []
    for name in ("_decode", "_decode_native"):
        real = getattr(dicom_module, name)

        def counting(path, *args, _real=real, **kwargs):
            decoded.append(path)
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(dicom_module, name, counting)
    box = series.read((3, 5, 4), (10, 11, 4))
    assert len(set(decoded)) == 4
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(box),
                                  sitk.GetArrayViewFromImage(whole)[4:8, 5:16, 3:13])
    assert box.GetOrigin() == pytest.approx(whole.TransformIndexToPhysicalPoint((3, 5, 4)), abs=1e-9)
    assert box.GetSpacing() == whole.GetSpacing() and box.GetDirection() == whole.GetDirection()
    with pytest.raises(ValueError, match="outside the series"):
        series.read((0, 0, 10), (24, 20, 3))


def test_whole_headers_are_each_files_header_and_the_run_keeps_no_identity(tmp_path, monkeypatch):
    """The export reads each source file's header once (issue: sarco export is slow): the scan that chooses
    the series keeps it whole, identities included, as pydicom reads it; the run's scan keeps none of them."""
    files = _write(tmp_path, _stored(shape=(4, 16, 16)), transfer_syntax="rle", shuffle_seed=5)
    parsed = []
    real = pydicom.dcmread
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: parsed.append(1) or real(*a, **k))
    series = dicom_module.open_dicom_series(tmp_path, whole_headers=True)
    assert len(parsed) == len(files)
    monkeypatch.undo()
    for path, header in zip(series.info.files, series.headers, strict=True):
        alone = pydicom.dcmread(path, stop_before_pixels=True)
        assert header == alone and header.file_meta == alone.file_meta
        assert "PixelData" not in header and str(header.PatientName) == PHI["PatientName"]
    for header in dicom_module.open_dicom_series(tmp_path).headers:
        assert "PatientName" not in header and "InstitutionName" not in header


@pytest.mark.parametrize("transfer_syntax", ["explicit_le", "rle"])
def test_a_decoder_failing_unforeseen_is_an_ingest_error_naming_the_file(tmp_path, transfer_syntax, monkeypatch):
    # not a pydicom error the reader knows: a decoder plugin's bug, a library mismatch
    files = _write(tmp_path, _stored(shape=(3, 16, 16)), transfer_syntax=transfer_syntax)
    series = dicom_module.open_dicom_series(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("decoder plugin exploded")

    monkeypatch.setattr(dicom_module, "_decode", broken)
    monkeypatch.setattr(dicom_module, "_decode_native", broken)
    with pytest.raises(InputError, match="unexpected RuntimeError: decoder plugin exploded") as error:
        series.read()
    assert error.value.stage == "ingest"
    assert "could not be decoded" in error.value.reason and "slice at z=" in error.value.reason
    assert any(f.name in error.value.reason for f in files)


def test_undecodable_compressed_data_names_the_transfer_syntax(tmp_path):
    files = _write(tmp_path, _stored(shape=(3, 16, 16)), transfer_syntax="jpeg_ls")
    ds = pydicom.dcmread(files[1])
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8 this is not a JPEG-LS stream \xff\xd9"])
    ds.save_as(files[1])
    with pytest.raises(InputError, match="could not be decoded") as error:
        read_dicom_series(tmp_path)
    assert "JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80)" in error.value.reason


def test_missing_geometry_is_refused(tmp_path):
    files = _write(tmp_path, _stored(shape=(2, 8, 8)))
    for path in files:
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(path)
    with pytest.raises(InputError, match="no ImagePositionPatient"):
        read_dicom_series(tmp_path)


def test_dicomdir_tree_uses_referenced_files(tmp_path):
    from pydicom.fileset import FileSet

    stored = _stored(seed=12, shape=(5, 16, 16))
    # a DICOMDIR's STUDY record needs StudyDate, StudyTime and StudyID
    files = _write(
        tmp_path / "export_src", stored, shuffle_seed=4, patient={**PHI, "StudyTime": "101500", "StudyID": "7"}
    )
    file_set = FileSet()
    for path in files:
        file_set.add(pydicom.dcmread(path))
    file_set.write(tmp_path / "media")
    # a series that is on the disk but not in the DICOMDIR must be ignored
    _write(tmp_path / "media" / "not_referenced", _stored(seed=13, shape=(5, 16, 16)))
    assert (tmp_path / "media" / "DICOMDIR").is_file()
    infos = scan_dicom_folder(tmp_path / "media")
    assert len(infos) == 1 and infos[0].n_files == 5
    image, _ = read_dicom_series(tmp_path / "media")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), _hu(stored))


# --------------------------------------------------------------------------- read_image, inspect


def test_read_image_dispatch(tmp_path):
    stored = _stored(seed=14, shape=(4, 16, 16))
    files = _write(tmp_path / "dcm", stored)
    image, info = read_image(tmp_path / "dcm")
    assert info["format"] == "dicom-folder" and info["size"] == [16, 16, 4]
    one, one_info = read_image(files[2])
    assert one_info["format"] == "dicom-file" and one.GetSize() == (16, 16, 1)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(one)[0], _hu(stored)[2])
    np.testing.assert_allclose(one.GetOrigin(), (ORIGIN[0], ORIGIN[1], ORIGIN[2] + 2 * SPACING[2]), atol=1e-6)

    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        path = tmp_path / f"vol{suffix}"
        sitk.WriteImage(image, str(path))
        again, again_info = read_image(path)
        assert again.GetPixelID() == sitk.sitkFloat32
        np.testing.assert_array_equal(sitk.GetArrayFromImage(again), sitk.GetArrayFromImage(image))
        np.testing.assert_allclose(again.GetOrigin(), image.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(again.GetSpacing(), image.GetSpacing(), atol=1e-5)

    int_image = sitk.Cast(image, sitk.sitkInt16)
    sitk.WriteImage(int_image, str(tmp_path / "int16.nrrd"))
    as_float, _ = read_image(tmp_path / "int16.nrrd")
    assert as_float.GetPixelID() == sitk.sitkFloat32


def test_read_image_errors(tmp_path):
    with pytest.raises(InputError, match="image file not found: no/such/file.nii.gz") as error:
        read_image("no/such/file.nii.gz")
    assert error.value.stage == "ingest"

    array = np.zeros((3, 4, 5), np.float32)
    array[1, 2, 3] = np.nan
    array[0, 0, 0] = np.nan
    array[2, 1, 1] = np.inf
    # NIfTI matters most: ITK's NIfTI reader silently turns NaN/Inf into 0
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / f"nan{suffix}"))
        with pytest.raises(InputError, match="image contains 2 NaN voxels and 1 infinite voxels"):
            read_image(tmp_path / f"nan{suffix}")
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.float64)), str(tmp_path / "nan64.nii.gz"))
    with pytest.raises(InputError, match="image contains 2 NaN voxels"):
        read_image(tmp_path / "nan64.nii.gz")

    (tmp_path / "garbage.nii.gz").write_bytes(b"not a nifti at all")
    with pytest.raises(InputError, match="could not be read"):
        read_image(tmp_path / "garbage.nii.gz")

    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(InputError, match="no DICOM image series"):
        read_image(tmp_path / "empty_dir")


def test_unreadable_file_reported(tmp_path, monkeypatch):
    path = tmp_path / "locked.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 2, 2), np.float32)), str(path))
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, *a, **k: False if pathlib.Path(p) == path else real_access(p, mode, *a, **k)
    )
    with pytest.raises(InputError, match="not readable \\(permission denied\\)"):
        read_image(path)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path):
    path = tmp_path / "locked.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 2, 2), np.float32)), str(path))
    path.chmod(0)
    try:
        with pytest.raises(InputError, match="permission denied"):
            read_image(path)
    finally:
        path.chmod(0o644)


def test_inspect_dicom_folder_and_volume(tmp_path):
    stored = _stored(seed=15)
    _write(tmp_path / "ct", stored, transfer_syntax="jpeg_lossless", shuffle_seed=9)
    (tmp_path / "ct" / "notes.txt").write_text("x")
    d = inspect_path(tmp_path / "ct")
    hu = _hu(stored)
    assert d["modality"] == "CT" and d["size"] == [64, 64, 12] and d["n_files"] == 12
    assert d["min"] == float(hu.min()) and d["max"] == float(hu.max())
    assert "1.2.840.10008.1.2.4.70" in d["transfer_syntax"]
    assert any("notes.txt" in note for note in d["notes"])
    assert "error" not in d
    text = format_inspection(d)
    assert "64 x 64 x 12" in text and "HU" in text
    blob = json.dumps(d) + text
    _assert_no_phi(blob)

    _write(tmp_path / "ct", stored, series_description="second")
    several = inspect_path(tmp_path / "ct")
    assert len(several["series"]) == 2 and "series_uid column" in several["error"]
    assert "series found (2)" in format_inspection(several)

    image, _ = read_image(tmp_path / "ct", series_uid=several["series"][0]["series_uid"])
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    v = inspect_path(tmp_path / "ct.nii.gz")
    assert v["size"] == list(image.GetSize())
    assert v["min"] == float(sitk.GetArrayViewFromImage(image).min())


def test_inspect_seg_nrrd_lists_segments(tmp_path):
    mask = np.zeros((4, 8, 8), np.uint8)
    mask[1, 2:4, 2:4] = 1
    mask[2, 5:7, 5:7] = 2
    path = write_mask(
        tmp_path / "roi.seg.nrrd",
        mask,
        spacing_mm=(1, 1, 2),
        origin_mm=(0, 0, 0),
        segment_names={1: "psoas", 2: "erector"},
    )
    d = inspect_path(path)
    assert [s["name"] for s in d["segments"]] == ["psoas", "erector"]
    assert "psoas (label 1, layer 0)" in format_inspection(d)


def test_errors_and_inspection_carry_no_phi(tmp_path):
    files = _write(tmp_path / "a", shuffle_seed=1, series_description="LUMBAR")
    files[4].unlink()
    reasons = []
    for call in (lambda: read_dicom_series(tmp_path / "a"), lambda: read_image(tmp_path / "a")):
        with pytest.raises(InputError) as error:
            call()
        reasons.append(str(error.value))
    _write(tmp_path / "a", series_description="OTHER")
    with pytest.raises(InputError) as error:
        read_dicom_series(tmp_path / "a")
    reasons.append(str(error.value))
    infos = scan_dicom_folder(tmp_path / "a")
    blob = " ".join(reasons) + repr(infos) + json.dumps([i.as_dict() for i in infos])
    d = inspect_path(tmp_path / "a")
    blob += json.dumps(d) + format_inspection(d)
    _assert_no_phi(blob)
    # the PHI really is in the files, so the check above is not vacuous
    assert str(pydicom.dcmread(files[0], stop_before_pixels=True).PatientName) == PHI["PatientName"]


# ------------------------------------------------------------------ issue 23: anonymised series without UIDs

_BLANKED_UIDS = ("SeriesInstanceUID", "SOPInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID")


def _blank_uids(folder: pathlib.Path) -> None:
    """What an anonymiser that blanks UIDs leaves: empty Series/SOP/Study/Frame-of-reference UIDs."""
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        for keyword in _BLANKED_UIDS:
            setattr(ds, keyword, "")
        ds.file_meta.MediaStorageSOPInstanceUID = ""
        ds.save_as(path)


def test_issue23_series_without_uids_reads_as_with_uids_and_as_gdcm(tmp_path):
    stored = _stored(signed=True, seed=23)
    _write(tmp_path / "uids", stored, rescale_slope=0.5, shuffle_seed=4)
    shutil.copytree(tmp_path / "uids", tmp_path / "blank")
    _blank_uids(tmp_path / "blank")
    blanked = [pydicom.dcmread(p, stop_before_pixels=True) for p in (tmp_path / "blank").iterdir()]
    assert not any(ds.SeriesInstanceUID or ds.SOPInstanceUID for ds in blanked)

    reference, _ = read_dicom_series(tmp_path / "uids")
    image, info = read_dicom_series(tmp_path / "blank")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(reference))
    for getter in ("GetOrigin", "GetSpacing", "GetDirection"):
        assert getattr(image, getter)() == getattr(reference, getter)()
    assert info.series_uid.startswith(dicom_module.NO_UID_PREFIX) and info.n_files == SHAPE[0]
    assert any("no SeriesInstanceUID" in note for note in info.notes)

    # independent reference: SimpleITK's GDCM reader groups and sorts the blanked files itself
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "blank")))
    gdcm_image = reader.Execute()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(gdcm_image).astype(np.float32))
    np.testing.assert_allclose(image.GetOrigin(), gdcm_image.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(image.GetSpacing(), gdcm_image.GetSpacing(), atol=1e-6)

    again, _ = read_dicom_series(tmp_path / "blank", series_uid=info.series_uid)     # the key is stable
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again), sitk.GetArrayFromImage(reference))


def test_issue23_two_series_without_uids_are_told_apart_by_acquisition(tmp_path):
    first, second = _stored(seed=31), _stored(seed=32)
    _write(tmp_path / "a", first, series_description="AX T2", series_number=3, shuffle_seed=1)
    _write(tmp_path / "b", second, series_description="AX SOFT TISSUE", series_number=4, shuffle_seed=2)
    for name in ("a", "b"):
        _blank_uids(tmp_path / name)
        for path in (tmp_path / name).iterdir():
            path.rename(tmp_path / f"{name}_{path.name}")
    with pytest.raises(InputError, match="2 image series"):
        read_dicom_series(tmp_path)
    infos = scan_dicom_folder(tmp_path)
    assert sorted((i.description, i.n_files) for i in infos) == [("AX SOFT TISSUE", 12), ("AX T2", 12)]
    chosen = next(i for i in infos if i.description == "AX T2")
    image, _ = read_dicom_series(tmp_path, series_uid=chosen.series_uid)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), _hu(first))


def test_issue23_inspect_prints_why_files_were_skipped_when_no_series_is_found(tmp_path):
    files = _write(tmp_path / "src", _stored(seed=33))
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "README.txt").write_text("exported by PACS\n")
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "cut.dcm").write_bytes(files[0].read_bytes()[:300])
    d = inspect_path(folder)
    assert d["error"].startswith("no DICOM image series found")
    text = format_inspection(d)
    assert "README.txt: skipped, not a DICOM file" in text
    assert "empty.dcm: skipped, empty file" in text
    assert "cut.dcm: skipped, truncated or corrupt DICOM header" in text


def test_issue23_inspect_reads_a_series_without_uids_and_says_how_it_was_grouped(tmp_path):
    stored = _stored(seed=34)
    _write(tmp_path, stored)
    _blank_uids(tmp_path)
    d = inspect_path(tmp_path)
    assert "error" not in d and d["n_files"] == SHAPE[0] and d["min"] == float(_hu(stored).min())
    assert "no SeriesInstanceUID" in format_inspection(d)
