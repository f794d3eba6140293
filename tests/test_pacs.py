"""Issue 22: results back to the PACS, against a real one (Orthanc, or pynetdicom's qrscp without it).

A tiny synthetic cohort (3 patients, CT) is stored in the PACS by plain pynetdicom, fetched by
``sarco fetch`` (C-GET) into a cache whose manifest the engine runs as it is, and the run's results
are exported by ``sarco export`` (C-STORE, DICOMweb, files). Read back independently: the SEG's
segments equal the habitat maps resampled onto the source grid by SimpleITK here, the SR's numbers
equal features.csv, ``dciodvfy`` finds no error, a second export adds no series, and every bad input
(a vanished source, a study without a frame of reference, a refusing PACS, a dead port) is that
patient's clear error while the batch goes on.
"""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from engine.batch.pipeline import run
from engine.cli import main
from engine.config import load_config
from engine.contract import (
    EXPORT_LOG_CSV,
    FEATURES_CSV,
    FETCH_MANIFEST,
    HABITATS_DIR,
    PROVENANCE_JSON,
    habitat_path,
)
from engine.measure.methods import display_name
from tests import cohorts, faultpeers
from tests import corruptions as corpus
from tests.pacs import free_port, store_files
from tests.srread import measurement_groups

N_PATIENTS = 3
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def _series_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def stored(pacs, tmp_path_factory):
    """The cohort's CT series stored in the PACS; a fetch manifest naming them by SeriesInstanceUID."""
    manifest = cohorts.few_patients(tmp_path_factory, N_PATIENTS, "pacs")
    with open(manifest, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))[:N_PATIENTS]
    folder = tmp_path_factory.mktemp("pacs_request")
    request = folder / "request.csv"
    counts = {}
    with open(request, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["patient_id", "label", "split", "ct_series_uid", "ct_roi"],
                                lineterminator="\n")
        writer.writeheader()
        for row in rows:
            files = _series_files(manifest.parent / row["ct_image"])
            counts[row["patient_id"]] = store_files(pacs, files)
            uid = pydicom.dcmread(str(files[0]), stop_before_pixels=True).SeriesInstanceUID
            writer.writerow({"patient_id": row["patient_id"], "label": row["label"], "split": "train",
                             "ct_series_uid": uid, "ct_roi": str((manifest.parent / row["ct_roi"]).resolve())})
    return request, counts


@pytest.fixture(scope="module")
def fetched(pacs, stored, tmp_path_factory, capsys_module=None):
    request, _ = stored
    cache = tmp_path_factory.mktemp("pacs_cache")
    assert main(["fetch", "--pacs", pacs.address, "--manifest", str(request), "--out", str(cache),
                 "--aet", "SARCOTEST"]) == 0
    return cache


@pytest.fixture(scope="module")
def run_dir(fetched, tmp_path_factory):
    out = tmp_path_factory.mktemp("pacs_run")
    config = load_config(overrides={"run": {"backend": "cpu", "scheduler": "inline", "report": False, "qa": True},
                                    "stats": {"enabled": False}})
    result = run(fetched / FETCH_MANIFEST, out_dir=out, config=config)
    assert result.errors.empty, result.errors.to_string()
    return out


@pytest.fixture(scope="module")
def exported(pacs, fetched, run_dir, tmp_path_factory):
    """``sarco export --pacs --dicom``: the files written, the export log and the PACS's instance count after."""
    out = tmp_path_factory.mktemp("pacs_export")
    assert main(["export", str(run_dir), "--pacs", pacs.address, "--dicom", str(out), "--aet", "SARCOTEST",
                 "--manifest", str(fetched / FETCH_MANIFEST)]) == 0
    return out


def _source_dir(fetched: Path, patient: str) -> Path:
    """A patient's fetched CT series folder, from the fetch manifest (the run folder keeps no path)."""
    manifest = pd.read_csv(fetched / FETCH_MANIFEST, dtype=str, keep_default_na=False).set_index("patient_id")
    return fetched / manifest.loc[patient, "ct_image"]


def _read_log(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def test_fetch_retrieves_every_file_and_is_incremental(pacs, stored, fetched, capsys):
    """Issue 22: C-GET brings every stored instance; a second fetch retrieves nothing again."""
    request, counts = stored
    manifest = pd.read_csv(fetched / FETCH_MANIFEST, dtype=str, keep_default_na=False)
    assert list(manifest["patient_id"]) == sorted(counts)
    for row in manifest.itertuples():
        assert len(_series_files(fetched / row.ct_image)) == counts[row.patient_id]
        assert Path(row.ct_roi).is_absolute() and Path(row.ct_roi).is_file()
    before = {p: p.stat().st_mtime_ns for p in _series_files(fetched / "series")}
    capsys.readouterr()
    assert main(["fetch", "--pacs", pacs.address, "--manifest", str(request), "--out", str(fetched),
                 "--aet", "SARCOTEST"]) == 0
    assert f"nothing new: all {N_PATIENTS} series already in the cache" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in _series_files(fetched / "series")} == before


def test_export_lands_in_the_source_study_once(pacs, fetched, run_dir, exported):
    """SEG, SR and SC go into each source study; exporting the same run again adds no series (stable UIDs)."""
    log = _read_log(exported / EXPORT_LOG_CSV)
    assert set(log["status"]) == {"stored", "written"} and len(log) == 2 * 3 * N_PATIENTS
    for patient in log["patient_id"].unique():
        files = {kind: pydicom.dcmread(str(exported / f"{patient}__ct_{kind}.dcm")) for kind in ("seg", "sr", "sc")}
        source = _source_dir(fetched, patient)
        first = pydicom.dcmread(str(_series_files(source)[0]), stop_before_pixels=True)
        for kind, ds in files.items():
            assert ds.StudyInstanceUID == first.StudyInstanceUID and ds.PatientID == first.PatientID, kind
            assert ds.SeriesInstanceUID != first.SeriesInstanceUID
        assert [files[k].SOPClassUID for k in ("seg", "sr", "sc")] == [SEG_CLASS, SR_CLASS, SC_CLASS]
    if pacs.kind != "orthanc":
        pytest.skip("counting series needs Orthanc's REST API")
    studies = pacs.rest("/studies")
    assert len(studies) == N_PATIENTS
    series = {s: len(pacs.rest(f"/studies/{s}")["Series"]) for s in studies}
    assert set(series.values()) == {4}  # CT + SEG + SR + SC
    instances = len(pacs.rest("/instances"))
    assert main(["export", str(run_dir), "--pacs", pacs.address, "--aet", "SARCOTEST",
                 "--manifest", str(fetched / FETCH_MANIFEST)]) == 0
    assert len(pacs.rest("/instances")) == instances
    assert {s: len(pacs.rest(f"/studies/{s}")["Series"]) for s in studies} == series


def _source_reference(source_dir: Path, habitat: Path):
    """(SOPInstanceUIDs in slice order, habitat labels on the source grid) computed with SimpleITK alone."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(source_dir))
    reader.SetFileNames(names)
    source = reader.Execute()
    labels = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(habitat)), source, sitk.Transform(),
                                                  sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
    uids = [pydicom.dcmread(n, stop_before_pixels=True).SOPInstanceUID for n in names]
    return uids, labels


def test_seg_segments_equal_the_habitat_maps_on_the_source_grid(pacs, fetched, run_dir, exported):
    """Issue 22: each method's muscle and fat segments equal its habitat map resampled (nearest) by SimpleITK."""
    import highdicom as hd

    methods = json.loads((run_dir / PROVENANCE_JSON).read_text(encoding="utf-8"))["config"]["fit"]["methods"]
    for patient in ("SYN0001", "SYN0002", "SYN0003"):
        seg = hd.seg.segread(str(exported / f"{patient}__ct_seg.dcm"))
        assert seg.SegmentationType == "BINARY"
        labels_by_number = {d.SegmentNumber: d.SegmentLabel for d in seg.SegmentSequence}
        ref_uids = None
        for i, method in enumerate(methods):
            uids, labels = _source_reference(_source_dir(fetched, patient),
                                             habitat_path(run_dir / HABITATS_DIR, patient, "ct", method))
            in_roi = np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1))
            referenced = [uids[k] for k in in_roi]
            if ref_uids is None:
                ref_uids = referenced
                assert {r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence
                        for r in s.ReferencedInstanceSequence} == set(referenced)  # only the ROI's slices
            for tissue, value in (("muscle", 1), ("fat", 2)):
                number = 2 * i + 1 + (tissue == "fat")
                assert labels_by_number[number] == f"{display_name(method)} {tissue}"
                pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=referenced,
                                                           segment_numbers=[number])[..., 0]
                expected = labels[in_roi] == value
                assert expected.any()
                np.testing.assert_array_equal(pixels.astype(bool), expected, err_msg=f"{patient} {method} {tissue}")
        codes = {d.SegmentNumber: d.SegmentedPropertyTypeCodeSequence[0].CodeValue for d in seg.SegmentSequence}
        assert set(codes[n] for n in codes if n % 2 == 1) == {"71616004"}  # muscle
        assert set(codes[n] for n in codes if n % 2 == 0) == {"55603005"}  # adipose tissue


def test_sr_numbers_equal_features_csv(run_dir, exported):
    """Issue 22: one TID 1500 group per method and tissue: volume (cm3), mean (HU), percent = features.csv."""
    features = pd.read_csv(run_dir / FEATURES_CSV, dtype={"patient_id": str}).set_index("patient_id")
    methods = json.loads((run_dir / PROVENANCE_JSON).read_text(encoding="utf-8"))["config"]["fit"]["methods"]
    for patient in features.index:
        sr = pydicom.dcmread(str(exported / f"{patient}__ct_sr.dcm"))
        seg = pydicom.dcmread(str(exported / f"{patient}__ct_seg.dcm"), stop_before_pixels=True)
        groups = measurement_groups(sr)
        assert len(groups) == 2 * len(methods)
        for method in methods:
            for tissue in ("muscle", "fat"):
                group = groups[f"{display_name(method)} {tissue}"]
                row = features.loc[patient]
                assert group["118565006"] == pytest.approx(row[f"ct_{method}_{tissue}_volume"] / 1000, rel=1e-9)
                assert group["112031"] == pytest.approx(row[f"ct_{method}_{tissue}_mean"], rel=1e-9)
                assert group["ROIPCT"] == pytest.approx(row[f"ct_{method}_{tissue}_percent"], rel=1e-9)
                label = {d.SegmentNumber: d.SegmentLabel for d in seg.SegmentSequence}[group["segment"]]
                assert label == f"{display_name(method)} {tissue}"
                if method != "fixed":
                    assert group["VSFIXED"] == pytest.approx(row[f"ct_{method}_vs_fixed_percent"], rel=1e-9)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools (dciodvfy) is not installed")
def test_dciodvfy_finds_no_error(exported):
    """Issue 22: the SEG, SR and SC pass dicom3tools' validator without an error (warnings allowed)."""
    for kind in ("seg", "sr", "sc"):
        path = exported / f"SYN0001__ct_{kind}.dcm"
        report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{kind}: {errors}"


def _broken_manifest(fetched: Path, tmp_path: Path) -> Path:
    """The fetch manifest with SYN0001's source gone and SYN0002's changed since the run (Frame of Reference
    UID removed: the run's content digest no longer matches)."""
    manifest = pd.read_csv(fetched / FETCH_MANIFEST, dtype=str, keep_default_na=False)
    manifest["ct_image"] = [str(fetched / p) for p in manifest["ct_image"]]
    manifest.loc[manifest["patient_id"] == "SYN0001", "ct_image"] = str(tmp_path / "moved_away")
    no_frame = tmp_path / "no_frame"
    no_frame.mkdir()
    for path in _series_files(_source_dir(fetched, "SYN0002")):
        ds = pydicom.dcmread(str(path))
        del ds.FrameOfReferenceUID
        ds.save_as(no_frame / path.name)
    manifest.loc[manifest["patient_id"] == "SYN0002", "ct_image"] = str(no_frame)
    manifest.to_csv(tmp_path / "broken.csv", index=False)
    return tmp_path / "broken.csv"


def test_bad_sources_fail_their_patient_only(fetched, run_dir, tmp_path, capsys):
    """Issue 22: a vanished source and a source changed since the run are per-patient errors."""
    out = tmp_path / "dicom"
    broken = _broken_manifest(fetched, tmp_path)
    assert main(["export", str(run_dir), "--dicom", str(out), "--manifest", str(broken)]) == 1  # some patients failed
    log = _read_log(out / EXPORT_LOG_CSV).set_index(["patient_id", "object"])
    assert set(log.loc["SYN0001", "status"]) == {"failed"}
    assert "gone" in log.loc[("SYN0001", "seg"), "reason"]
    assert set(log.loc["SYN0002", "status"]) == {"failed"}
    assert "not the ones the run measured" in log.loc[("SYN0002", "seg"), "reason"]
    assert set(log.loc["SYN0003", "status"]) == {"written"}
    assert sorted(p.name for p in out.glob("*.dcm")) == [f"SYN0003__ct_{k}.dcm" for k in ("sc", "seg", "sr")]
    err = capsys.readouterr().err
    assert "patient SYN0001 (ct) SEG" in err and "Traceback" not in err


def test_the_fetched_run_folder_holds_no_source_uid_or_path(fetched, run_dir, exported):
    """Issue 29: a run of fetched series, exported to the PACS: no file of its folder (cache/ included,
    compressed ones decompressed) holds a UID of the fetched series or an absolute path (provenance.json
    held the SeriesInstanceUIDs and paths before)."""
    manifest = pd.read_csv(fetched / FETCH_MANIFEST, dtype=str, keep_default_na=False)
    needles = {str(fetched.resolve()).encode(), str(run_dir.resolve()).encode(), str(exported.resolve()).encode()}
    for patient in manifest["patient_id"]:
        for path in _series_files(_source_dir(fetched, patient)):
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
            needles |= {str(ds.get(k)).encode() for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                                                          "FrameOfReferenceUID")}
    assert set(manifest["ct_series_uid"].str.encode("ascii")) <= needles  # the fetch manifest names them
    assert (run_dir / EXPORT_LOG_CSV).is_file()
    assert corpus.find_bytes(run_dir, needles) == []


def test_a_refusing_pacs_and_a_dead_port_store_nothing(pacs, fetched, run_dir, tmp_path, capsys):
    """Issue 22: the association refused (unknown AE title) or nobody listening: every object failed, none done."""
    run_dir = _fresh_run(run_dir, tmp_path)  # nothing delivered yet (the journal would skip every object)
    cases = [(f"ORTHANC@127.0.0.1:{free_port()}", "SARCOTEST", "nothing answers")]
    if pacs.kind == "orthanc":  # the qrscp fallback accepts any calling AE title
        # Orthanc answers an unknown calling AE title with A-ASSOCIATE-RJ, but under load the socket's
        # close can overtake the RJ PDU and pynetdicom sees an abort: either is a refused association.
        cases.append((pacs.address, "INTRUDER", "(?:rejected|aborted) the association"))
        before = len(pacs.rest("/instances"))
    for address, aet, words in cases:
        assert main(["export", str(run_dir), "--pacs", address, "--aet", aet,
                     "--manifest", str(fetched / FETCH_MANIFEST)]) == 3  # the destination is down
        log = _read_log(run_dir / EXPORT_LOG_CSV)
        assert len(log) == 3 * N_PATIENTS and not log["status"].isin(["stored", "written"]).any()
        assert log["reason"].str.contains(words).all(), log.to_string()
        assert "exported 0 patient-modalities" in capsys.readouterr().out
    if pacs.kind == "orthanc":
        assert len(pacs.rest("/instances")) == before


@pytest.mark.parametrize("argv, words", [
    (["export", "{run}", "--pacs", "ORTHANC@localhost"], "AET@HOST:PORT"),
    (["export", "{run}", "--pacs", "ORTHANC@localhost:99999"], "port 99999"),
    (["export", "{missing}", "--dicom", "{out}"], "not found"),
    (["export", "{run}"], "give where to export"),
    (["export", "{run}", "--dicom", "{run}/dicom"], "inside the run folder"),
    (["export", "{run}", "--dicom", "{out}", "--objects", "sr"], "export 'seg' with 'sr'"),
    (["fetch", "--pacs", "ORTHANC@127.0.0.1:4242", "--out", "{out}"], "say what to fetch"),
    (["fetch", "--pacs", "ORTHANC@127.0.0.1:4242", "--out", "{out}", "--query", "Nonsense=1"], "not a DICOM keyword"),
    (["export", "{run}", "--dicom", "{out}", "--timeout", "0"], "above 0"),
    (["export", "{run}", "--dicom", "{out}", "--config", "{missing}"], "not found"),
    (["fetch", "--pacs", "ORTHANC@127.0.0.1:4242", "--out", "{out}", "--study", "1.2", "--move-port", "70000"],
     "1-65535"),
])
def test_user_mistakes_are_one_line_and_exit_2(run_dir, tmp_path, capsys, argv, words):
    """Issue 22: a bad address, a missing run folder, no destination: one line naming what to fix, exit 2."""
    argv = [a.format(run=run_dir, missing=tmp_path / "missing", out=tmp_path / "out") for a in argv]
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's own refusal of an argument
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err


def test_dicomweb_stow_is_confirmed_by_qido(pacs, fetched, run_dir, tmp_path):
    """Issue 22: STOW-RS to Orthanc's DICOMweb plugin, each instance then found by QIDO-RS."""
    if not pacs.dicomweb:
        pytest.skip("no DICOMweb server (Orthanc's DICOMweb plugin is not installed)")
    assert main(["export", str(run_dir), "--dicomweb", pacs.dicomweb_url, "--objects", "seg,sr",
                 "--manifest", str(fetched / FETCH_MANIFEST)]) == 0
    log = _read_log(run_dir / EXPORT_LOG_CSV)
    assert set(log["status"]) == {"stored"} and len(log) == 2 * N_PATIENTS


def test_fetch_by_study_and_by_query(pacs, stored, tmp_path):
    """Issue 22: --study and --query make one row per study, named by a digest, never the PACS's PatientID."""
    request, counts = stored
    rows = pd.read_csv(request, dtype=str)
    first = pydicom.dcmread(str(_series_files(Path(rows["ct_roi"][0]).parent / "ct")[0]), stop_before_pixels=True)
    out = tmp_path / "by_study"
    assert main(["fetch", "--pacs", pacs.address, "--study", first.StudyInstanceUID, "--out", str(out),
                 "--aet", "SARCOTEST"]) == 0
    manifest = pd.read_csv(out / FETCH_MANIFEST, dtype=str, keep_default_na=False)
    assert len(manifest) == 1 and manifest["patient_id"][0].startswith("S")
    assert first.PatientID not in (out / FETCH_MANIFEST).read_text(encoding="utf-8")
    assert len(_series_files(out / manifest["ct_image"][0])) == counts[rows["patient_id"][0]]
    out = tmp_path / "by_query"
    assert main(["fetch", "--pacs", pacs.address, "--query", "Modality=CT", "--out", str(out),
                 "--aet", "SARCOTEST"]) == 0
    manifest = pd.read_csv(out / FETCH_MANIFEST, dtype=str, keep_default_na=False)
    assert len(manifest) == N_PATIENTS and (manifest["ct_image"] != "").all()


def test_a_derived_roi_names_its_muscles(fetched, run_dir, tmp_path):
    """Issue 22: where the ROI was derived, the segments carry erector spinae / iliopsoas as anatomic regions."""
    import SimpleITK as sitk

    from engine.contract import ROI_MUSCLE_LABELS, derived_roi_path

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("cache"))
    roi = sitk.GetImageFromArray(np.array([[[ROI_MUSCLE_LABELS["left_psoas"], ROI_MUSCLE_LABELS["right_paraspinal"]]]],
                                          dtype=np.uint8))
    path = derived_roi_path(copy, "SYN0001", "ct")
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(roi, str(path))
    out = tmp_path / "dicom"
    assert main(["export", str(copy), "--dicom", str(out), "--objects", "seg,sr",
                 "--manifest", str(fetched / FETCH_MANIFEST)]) == 0
    seg = pydicom.dcmread(str(out / "SYN0001__ct_seg.dcm"), stop_before_pixels=True)
    for segment in seg.SegmentSequence:
        assert {c.CodeValue for c in segment.AnatomicRegionSequence} == {"44947003", "68455001"}
    hand = pydicom.dcmread(str(out / "SYN0002__ct_seg.dcm"), stop_before_pixels=True)
    assert not any("AnatomicRegionSequence" in s for s in hand.SegmentSequence)  # a hand ROI names no muscle


# ------------------------------------------------------------------------------------ faults (issue 29)
def _fault_config(tmp_path: Path, timeout_s: float = 1.0, breaker: int = 2, associations: int = 1) -> str:
    """A config whose ``pacs`` group makes a fault cost about a second."""
    path = tmp_path / "faults.yaml"
    path.write_text(f"pacs: {{timeout_s: {timeout_s}, connect_timeout_s: {timeout_s}, breaker_failures: {breaker}, "
                    f"associations: {associations}}}\n")
    return str(path)


def _export(run_dir, tmp_path, fetched, *destination, **config) -> tuple[int, pd.DataFrame]:
    status = main(["export", str(run_dir), *destination, "--aet", "SARCOTEST", "--config",
                   _fault_config(tmp_path, **config), "--manifest", str(fetched / FETCH_MANIFEST)])
    return status, _read_log(run_dir / EXPORT_LOG_CSV)


def _fresh_run(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of the run without its export journal (each fault test starts with nothing delivered)."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("cache"))
    return copy


@pytest.mark.parametrize("peer", ["silent", "reset", "refused"])
def test_a_dead_pacs_costs_a_few_timeouts_and_the_folder_gets_everything(fetched, run_dir, tmp_path, capsys, peer):
    """Issue 29: a peer that never answers, resets or refuses trips the breaker before anything is sent to it:
    every row for it is 'not attempted' (destination down), the folder beside it gets every object, exit 3."""
    run = _fresh_run(run_dir, tmp_path)
    peers = {"silent": faultpeers.silent_peer, "reset": faultpeers.reset_peer}
    folder = ["--dicom", str(tmp_path / "out")] if peer == "silent" else []  # builds cost seconds: once
    with peers.get(peer, lambda: contextlib.nullcontext(free_port()))() as port:
        status, log = _export(run, tmp_path, fetched, "--pacs", f"ORTHANC@127.0.0.1:{port}", *folder)
    assert status == 3
    dead = log[log["destination"].str.startswith("pacs")]
    assert len(dead) == 3 * N_PATIENTS and set(dead["status"]) == {"not attempted"}
    assert dead["reason"].str.startswith("destination down after 2 failures in a row").all()
    words = {"silent": "did not answer the association request within 1 s", "reset": "(?:reset|aborted|answers)",
             "refused": "connection refused"}[peer]
    assert dead["reason"].str.contains(words).all(), dead["reason"].iloc[0]
    written = log[~log["destination"].str.startswith("pacs")]
    assert set(written["status"]) <= {"written"} and len(written) == (3 * N_PATIENTS if folder else 0)
    assert "destination down" in capsys.readouterr().err


def test_a_slow_pacs_within_the_timeout_stores_everything(fetched, run_dir, tmp_path):
    """Issue 29: a peer that answers each C-STORE after 0.3 s, under a 2 s timeout, gets every object once."""
    run = _fresh_run(run_dir, tmp_path)
    with faultpeers.storage_scp(delay_s=0.3) as (port, stored):
        status, log = _export(run, tmp_path, fetched, "--pacs", f"ORTHANC@127.0.0.1:{port}", "--objects", "seg,sc",
                              timeout_s=2.0, associations=2)
    assert status == 0 and set(log["status"]) == {"stored"} and len(log) == 2 * N_PATIENTS
    assert len(stored) == len(set(stored)) == 2 * N_PATIENTS


@pytest.mark.parametrize("fault", ["closes", "too slow"])
def test_a_pacs_lost_mid_association_trips_the_breaker(fetched, run_dir, tmp_path, fault):
    """Issue 29: associations accepted, then each C-STORE loses the connection (or is answered after the
    timeout): two patients fail (their SC not sent), the third is not attempted, exit 3."""
    run = _fresh_run(run_dir, tmp_path)
    options = {"close_on_store": True} if fault == "closes" else {"delay_s": 1.5}
    with faultpeers.storage_scp(**options) as (port, stored):
        status, log = _export(run, tmp_path, fetched, "--pacs", f"ORTHANC@127.0.0.1:{port}", "--objects", "seg,sc",
                              timeout_s=0.5)
    assert status == 3
    by_patient = log.groupby("patient_id")["status"].apply(list).to_dict()
    assert by_patient["SYN0001"] == by_patient["SYN0002"] == ["failed", "not sent"]
    assert by_patient["SYN0003"] == ["not attempted"] * 2
    reason = log.loc[log["status"] == "failed", "reason"].iloc[0]
    assert ("C-STORE" in reason) and ("within 0.5 s" in reason or fault == "closes"), reason


def test_dicomweb_503_then_200_is_retried_and_stored(fetched, run_dir, tmp_path):
    """Issue 29: a server that answers the first STOW-RS with 503 stores it on the client's retry."""
    run = _fresh_run(run_dir, tmp_path)
    with faultpeers.dicomweb_peer((503, 200)) as (url, sent):
        status, log = _export(run, tmp_path, fetched, "--dicomweb", url, "--objects", "seg,sc")
    assert status == 0 and set(log["status"]) == {"stored"} and len(log) == 2 * N_PATIENTS
    assert sent[:2] == [503, 200] and len(sent) == 2 * N_PATIENTS + 1


def test_a_dicomweb_server_down_is_not_tried_for_every_object(fetched, run_dir, tmp_path):
    """Issue 29: STOW-RS answered 503 on every try: two patients fail, the breaker stops the third, exit 3;
    a server that resets every connection, or accepts and never answers, is down before anything is built."""
    run = _fresh_run(run_dir, tmp_path)
    with faultpeers.dicomweb_peer((503,)) as (url, sent):
        status, log = _export(run, tmp_path, fetched, "--dicomweb", url, "--objects", "seg,sc")
    assert status == 3
    by_patient = log.groupby("patient_id")["status"].apply(list).to_dict()
    assert by_patient["SYN0001"] == by_patient["SYN0002"] == ["failed", "not sent"]
    assert by_patient["SYN0003"] == ["not attempted"] * 2
    assert sent == [503] * 2 * 3  # two objects, three tries each
    for peer, words in ((faultpeers.reset_peer, "ConnectionError"), (faultpeers.silent_peer, "ReadTimeout")):
        with peer() as port:
            status, log = _export(run, tmp_path, fetched, "--dicomweb", f"http://127.0.0.1:{port}")
        assert status == 3 and set(log["status"]) == {"not attempted"}
        assert log["reason"].str.contains(words).all(), log["reason"].iloc[0]
    connections: list = []
    with faultpeers.silent_peer(connections) as port:
        _export(run, tmp_path, fetched, "--dicomweb", f"http://127.0.0.1:{port}")
    assert len(connections) == 2  # one read timeout per try of the breaker, no retry of a timeout


def test_fetch_that_matches_nothing_exits_1_naming_the_query(pacs, tmp_path, capsys):
    """Issue 29: an unknown study or a query without hits is exit 1 and one line naming it; no manifest."""
    for request in (["--study", "1.2.826.0.1.3680043.99.1"], ["--query", "SeriesDescription=no such series"]):
        out = tmp_path / request[0].strip("-")
        capsys.readouterr()
        assert main(["fetch", "--pacs", pacs.address, *request, "--out", str(out), "--aet", "SARCOTEST"]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "matched" in err and " ".join(request) in err, err
        assert not (out / FETCH_MANIFEST).exists()


def test_fetch_by_c_move_to_its_own_storage_scp(pacs, stored, tmp_path):
    """Issue 29: --move-port: the PACS C-MOVEs the series to fetch's own storage SCP; every file arrives."""
    request, counts = stored
    out = tmp_path / "moved"
    assert main(["fetch", "--pacs", pacs.address, "--manifest", str(request), "--out", str(out), "--aet", "SARCOMOVE",
                 "--move-port", str(pacs.move_port)]) == 0
    manifest = pd.read_csv(out / FETCH_MANIFEST, dtype=str, keep_default_na=False)
    assert {r.patient_id: len(_series_files(out / r.ct_image)) for r in manifest.itertuples()} == counts
    log = _read_log(out / "fetch_log.csv")
    assert set(log["status"]) == {"fetched"}


def _distinct_run(run_dir: Path, tmp_path: Path, name: str) -> Path:
    """A copy of the run whose objects get UIDs of their own (its thresholds file differs by a note)."""
    copy = tmp_path / name
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("cache", EXPORT_LOG_CSV))
    thresholds = json.loads((copy / "thresholds.json").read_text(encoding="utf-8"))
    thresholds["note"] = name
    (copy / "thresholds.json").write_text(json.dumps(thresholds))
    return copy


def test_export_resumes_after_the_pacs_restarted_mid_export(pacs, fetched, run_dir, tmp_path, monkeypatch):
    """Issue 29: Orthanc stopped after 4 objects: the export reports it down (exit 3); once it is started
    again, a second export sends only the 5 objects not recorded as delivered, and the PACS holds each once."""
    if pacs.kind != "orthanc":
        pytest.skip("restarting the PACS with its storage needs Orthanc")
    from engine.exporters.destinations import DimseDestination

    run = _distinct_run(run_dir, tmp_path, "resume")
    before = len(pacs.rest("/instances"))
    sent: list[str] = []
    stopped: list[bool] = []
    deliver = DimseDestination.deliver

    def counting(self, patient_id, modality, kind, dataset):
        status = deliver(self, patient_id, modality, kind, dataset)
        sent.append(f"{patient_id}/{kind}")
        if len(sent) == 4 and not stopped:
            stopped.append(True)
            pacs.stop()  # the PACS goes away in the middle of SYN0002
        return status

    monkeypatch.setattr(DimseDestination, "deliver", counting)
    try:
        status, log = _export(run, tmp_path, fetched, "--pacs", pacs.address, timeout_s=3.0)
    finally:
        pacs.restart()
    assert status == 3
    assert list(log["status"][:4]) == ["stored"] * 4 and "stored" not in set(log["status"][4:])
    first = list(sent)
    sent.clear()
    status, log = _export(run, tmp_path, fetched, "--pacs", pacs.address, timeout_s=3.0)
    assert status == 0 and set(log["status"]) == {"stored"}
    assert sorted(sent) == sorted(f"{p}/{k}" for p in ("SYN0001", "SYN0002", "SYN0003") for k in ("seg", "sr", "sc")
                                  if f"{p}/{k}" not in first)
    assert (log["reason"] == "delivered by an earlier export").sum() == 4
    assert len(pacs.rest("/instances")) == before + 3 * N_PATIENTS


def test_two_nights_fetch_apply_export_send_only_what_is_new(run_dir, stored, tmp_path, capsys):
    """Issue 29 item 8: night 1 two studies, night 2 a third arrives: fetch retrieves only it, apply (the frozen
    model) scores only it, export sends only its objects; nothing is stored twice. Needs ``sarco export`` of an
    apply folder (the export branch); until then the apply folder gets the model's thresholds.json here."""
    from tests.pacs import orthanc_binary, start_orthanc

    if orthanc_binary() is None:
        pytest.skip("counting a PACS's instances needs Orthanc")
    request, counts = stored
    rows = pd.read_csv(request, dtype=str, keep_default_na=False)
    (tmp_path / "orthanc").mkdir()
    pacs = start_orthanc(tmp_path / "orthanc")
    try:
        nights = [_night(pacs, rows[:2], rows[:2], tmp_path, run_dir, capsys),
                  _night(pacs, rows, rows[2:], tmp_path, run_dir, capsys)]
    finally:
        pacs.stop()
    first, second = nights
    assert first["fetched"] == {"fetched": 2} and second["fetched"] == {"cached": 2, "fetched": 1}
    assert first["stored"] == 3 * 2 and second["stored"] == 3 and second["earlier"] == 3 * 2
    assert second["instances"] - first["instances"] == counts[rows["patient_id"][2]] + 3
    assert second["series_per_study"] == [4, 4, 4]  # CT + SEG + SR + SC, nothing twice


def _night(pacs, rows: pd.DataFrame, new: pd.DataFrame, tmp_path: Path, run_dir: Path, capsys) -> dict:
    """One night: the studies of ``new`` arrive in the PACS; fetch ``rows``, apply, export; what each did."""
    for row in new.itertuples():
        store_files(pacs, _series_files(Path(row.ct_roi).parent / "ct"))
    request = tmp_path / "request.csv"
    rows.to_csv(request, index=False)
    cache, applied = tmp_path / "cache", tmp_path / "applied"
    assert main(["fetch", "--pacs", pacs.address, "--manifest", str(request), "--out", str(cache),
                 "--aet", "SARCOTEST"]) == 0
    fetched = _read_log(cache / "fetch_log.csv")["status"].value_counts().to_dict()
    assert main(["apply", "--model", str(run_dir / "model.json"), "--manifest", str(cache / FETCH_MANIFEST),
                 "--out", str(applied), "--scheduler", "inline"]) == 0
    capsys.readouterr()
    assert main(["export", str(applied), "--pacs", pacs.address, "--aet", "SARCOTEST",
                 "--manifest", str(cache / FETCH_MANIFEST)]) == 0
    log = _read_log(applied / EXPORT_LOG_CSV)
    earlier = log["reason"] == "delivered by an earlier export"
    studies = pacs.rest("/studies")
    return {"fetched": fetched, "stored": int(((log["status"] == "stored") & ~earlier).sum()),
            "earlier": int(earlier.sum()), "instances": len(pacs.rest("/instances")),
            "series_per_study": sorted(len(pacs.rest(f"/studies/{s}")["Series"]) for s in studies)}


def test_fetch_from_a_silent_pacs_gives_up_after_a_few_timeouts(stored, tmp_path, capsys):
    """Issue 29: a PACS that accepts and never answers: two associations time out (1 s each), the third
    request is not attempted; exit 1 (nothing to run), each request's line says why."""
    request, _ = stored
    with faultpeers.silent_peer() as port:
        status = main(["fetch", "--pacs", f"ORTHANC@127.0.0.1:{port}", "--manifest", str(request),
                       "--out", str(tmp_path / "cache"), "--aet", "SARCOTEST", "--config", _fault_config(tmp_path)])
    assert status == 1
    reasons = list(_read_log(tmp_path / "cache" / "fetch_log.csv")["reason"])
    assert all("did not answer the association request within 1 s" in r for r in reasons[:2]), reasons
    assert reasons[2].startswith("not attempted: the PACS is down (2 failed associations in a row")
    assert "Traceback" not in capsys.readouterr().err


def test_the_breaker_counts_only_failures_of_the_destination_in_a_row():
    """Issue 29: a refused object (not fatal) counts nothing, a success resets the count, three fatal in a row
    trip it."""
    from engine.exporters.destinations import Breaker, DeliveryError

    breaker = Breaker(3)
    for fatal in (True, True, False):
        breaker.failed(DeliveryError("x", fatal=fatal))
    breaker.succeeded()
    breaker.failed(DeliveryError("silent", fatal=True))
    breaker.failed(DeliveryError("silent", fatal=True))
    assert not breaker.down
    breaker.failed(DeliveryError("silent again", fatal=True))
    assert breaker.down and breaker.why() == "destination down after 3 failures in a row; last: silent again"
    breaker.succeeded()  # an object in flight that made it: the destination stays down for this export
    assert breaker.down


def test_a_torn_journal_line_is_ignored(tmp_path):
    """Issue 29: an export killed while appending leaves a torn last line; the next export reads the rest
    and goes on appending on a line of its own."""
    from engine.exporters.delivery import Journal, row

    journal = Journal(tmp_path)
    journal.open()
    journal.append([row("P1", "ct", "seg", "pacs X", "stored", "", "a" * 16),
                    row("P1", "ct", "sr", "pacs X", "failed", "no", "b" * 16)])
    journal._handle.write("P1,ct,sc,pacs X,sto")  # killed mid-line
    journal._handle.flush()
    journal._handle = None  # as after a kill: no compaction
    again = Journal(tmp_path)
    assert list(again.read()["object"]) == ["seg"]  # the failed row is not a delivery, the torn one is ignored
    again.open()
    again.append([row("P2", "ct", "seg", "pacs X", "stored", "", "c" * 16)])
    again.close()
    assert list(Journal(tmp_path).read()["patient_id"]) == ["P1", "P2"]


def test_the_test_stores_send_again_a_file_whose_reply_was_lost(pacs, stored, tmp_path_factory, monkeypatch):
    """tests.pacs.store_files (the fixtures' own C-STORE): a store that got no reply (pynetdicom's reactor can
    take it, see STORE_TRIES) is sent again on a new association, and the file is stored once."""
    from pydicom.dataset import Dataset
    from pynetdicom.association import Association

    real_send = Association.send_c_store
    calls = []

    def first_reply_lost(self, dataset, *args, **kwargs):
        calls.append(1)
        status = real_send(self, dataset, *args, **kwargs)
        return Dataset() if len(calls) == 1 else status

    monkeypatch.setattr(Association, "send_c_store", first_reply_lost)
    manifest = cohorts.few_patients(tmp_path_factory, N_PATIENTS, "pacs")
    with open(manifest, newline="", encoding="utf-8") as handle:
        first = next(csv.DictReader(handle))
    files = _series_files(manifest.parent / first["ct_image"])[:2]
    assert store_files(pacs, files) == 2 and len(calls) == 3   # the first file twice, the second once
