"""The SR an export copies from a content template (``sr.build_sr``) against highdicom's full constructor.

The reference is the same report built by highdicom's ``Comprehensive3DSR`` constructor from highdicom's
content items (``reference_sr``, the way every SR was built before the templates). Sources: the first
three synthetic patients' CT and MRI (the third CT with an ROI derived from its segmentation, so its
groups carry finding sites), and the real anonymised Siemens CT of ``../shared/realdata`` (no study
UIDs: exported as a new study). highdicom's clock is frozen while both are built, so the two data sets
are compared element by element with no exception, every nested content item and the file meta
included, in memory and as the Part 10 files a PACS receives. The files are then checked by readers
the engine did not write: dicom3tools' ``dciodvfy`` and highdicom's ``srread``.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import shutil
import subprocess
import types

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.valuerep import DSfloat

from engine.batch.pipeline import run
from engine.config import load_config
from engine.exporters import EXPORTERS, ExportUids, build_objects
from engine.exporters import sr as sr_module
from engine.exporters.source import ExportRun, read_source
from engine.exporters.templates import PER_PATIENT, ContentTemplates, TemplateError, exact_key, masked_plan
from tests import cohorts
from tests import corruptions as corpus
from tests.realct import SIEMENS, siemens_roi
from tests.srread import measurement_groups

needs_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools (dciodvfy) is not installed")


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> list[tuple]:
    """(result, uids, built with the SEG) of every series of a small run: SYN0001-3 CT and MRI, REAL0001 CT."""
    manifest = cohorts.few_patients(tmp_path_factory, 3, "sr")
    _, rows = corpus.read_rows(manifest)
    work = tmp_path_factory.mktemp("sr_case")

    def absolute(row: dict, column: str) -> str:
        return str((manifest.parent / row[column]).resolve()) if row.get(column) else ""

    table = [{"patient_id": row["patient_id"], "label": str(i % 2), "split": "train",
              "ct_image": absolute(row, "ct_image"), "ct_roi": absolute(row, "ct_roi") if i < 2 else "",
              "ct_segmentation": "" if i < 2 else absolute(row, "ct_segmentation"),
              "mri_image": absolute(row, "mri_image"), "mri_roi": absolute(row, "mri_roi")}
             for i, row in enumerate(rows[:3])]
    if SIEMENS.is_dir():
        table.append({"patient_id": "REAL0001", "label": "1", "split": "train", "ct_image": str(SIEMENS / "dicom"),
                      "ct_roi": str(siemens_roi(work / "siemens_roi.nii.gz")), "ct_segmentation": "",
                      "mri_image": "", "mri_roi": ""})
    manifest = corpus.write_rows(work / "manifest.csv", list(table[0]), table)
    config = load_config(overrides={"run": {"backend": "cpu", "scheduler": "inline", "report": False, "qa": False},
                                    "stats": {"enabled": False}})
    outcome = run(manifest, out_dir=work / "run", config=config)
    assert outcome.errors.empty, outcome.errors.to_string()
    folder = ExportRun.open(work / "run", manifest)
    cases = []
    for patient_id, modality in folder.series():
        result = folder.result(patient_id, modality)
        result.source = read_source(folder, patient_id, modality)
        built = build_objects(result, [EXPORTERS["seg"]], new_study=patient_id == "REAL0001")
        cases.append((result, ExportUids(result.identity, result.patient_id, result.modality), built))
    return cases


class _FrozenDatetime(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return cls(2026, 12, 8, 1, 2, 3, 456789, tzinfo=tz)


@pytest.fixture
def frozen_clock(monkeypatch):
    """highdicom's ``datetime.datetime.now()`` (content, instance creation and contribution times) fixed."""
    import highdicom.base
    import highdicom.base_content
    import highdicom.sr.sop

    clock = types.SimpleNamespace(datetime=_FrozenDatetime, date=datetime.date, time=datetime.time)
    for module in (highdicom.base, highdicom.base_content, highdicom.sr.sop):
        monkeypatch.setattr(module, "datetime", clock)


@pytest.fixture
def templates(monkeypatch):
    """An empty template cache for this test (the process's own is left as it was)."""
    fresh = ContentTemplates(sr_module.content_root)
    monkeypatch.setattr(sr_module, "TEMPLATES", fresh)
    return fresh


def differences(ours: Dataset, theirs: Dataset, path: str = "") -> list[str]:
    """Every element that is absent from one, or differs in VR or value, recursing into each sequence item."""
    found = []
    for tag in sorted(set(ours.keys()) | set(theirs.keys())):
        name = path + str(pydicom.datadict.keyword_for_tag(tag) or tag)
        if tag not in ours or tag not in theirs:
            found.append(f"{name}: only in {'ours' if tag in ours else 'theirs'}")
            continue
        a, b = ours[tag], theirs[tag]
        if a.VR != b.VR:
            found.append(f"{name}: VR {a.VR} != {b.VR}")
        elif a.VR == "SQ":
            if len(a.value) != len(b.value):
                found.append(f"{name}: {len(a.value)} items != {len(b.value)}")
                continue
            for i, (x, y) in enumerate(zip(a.value, b.value, strict=True)):
                found += differences(x, y, f"{name}[{i}].")
        elif a.value != b.value:
            found.append(f"{name}: {a.value!r} != {b.value!r}")
    return found


def part10_bytes(dataset: Dataset) -> bytes:
    """The data set as the PACS receives it: a Part 10 file's bytes."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def part10(dataset: Dataset) -> pydicom.FileDataset:
    """The data set written as a Part 10 file and read back by pydicom."""
    return pydicom.dcmread(io.BytesIO(part10_bytes(dataset)))


def _both(case) -> tuple[Dataset, Dataset]:
    result, uids, built = case
    return sr_module.build_sr(result, uids, built), sr_module.reference_sr(result, uids, built)


def _same(ours: Dataset, theirs: Dataset) -> list[str]:
    """Every difference, element by element, in memory and in the files, then the files byte for byte (what
    an element comparison could still miss, the file's own encoding, is a difference there)."""
    written, expected = part10(ours), part10(theirs)
    found = (differences(ours, theirs) + [f"(file) {d}" for d in differences(written, expected)]
             + [f"(file meta) {d}" for d in differences(written.file_meta, expected.file_meta)])
    if not found and part10_bytes(ours) != part10_bytes(theirs):
        found.append("(file) the Part 10 bytes differ")
    return found


def test_the_comparison_finds_a_changed_number_deep_in_the_tree(series, frozen_clock):
    """Positive control: one measured value changed in a nested content item is a difference."""
    ours, theirs = _both(series[0])
    assert _same(ours, theirs) == []
    group = ours.ContentSequence[-1].ContentSequence[0]
    number = next(item for item in group.ContentSequence if item.ValueType == "NUM")
    number.MeasuredValueSequence[0].FloatingPointValue += 1.0
    found = differences(ours, theirs)
    assert len(found) == 1 and "FloatingPointValue" in found[0]
    # the same number written otherwise ("12.5" -> "12.50"): equal as numbers, different on the wire
    ours, theirs = _both(series[0])
    measured = number_item(ours).MeasuredValueSequence[0]
    text = str(measured.NumericValue)
    measured.NumericValue = DSfloat(text + ("0" if "." in text else ".0"))
    assert any("NumericValue" in d for d in _same(ours, theirs))


def number_item(sr: Dataset) -> Dataset:
    """The first numeric content item of the SR's last measurement group."""
    group = sr.ContentSequence[-1].ContentSequence[0]
    return next(item for item in group.ContentSequence if item.ValueType == "NUM")


def test_every_series_equals_highdicoms_full_constructor(series, frozen_clock, templates):
    """Issue 29 (export speed): for each source (synthetic CT, MRI, a derived ROI, the real Siemens CT), built in
    a row in one process, the template's SR is highdicom's, element by element, in memory and as a file."""
    assert {(r.patient_id, r.modality) for r, _, _ in series} >= {("SYN0001", "ct"), ("SYN0001", "mri")}
    assert any(r.muscles for r, _, _ in series)  # finding sites: a structure of its own
    for case in series:
        ours, theirs = _both(case)
        assert _same(ours, theirs) == [], case[0].patient_id
    assert templates.reused >= 2  # later series were copied from an earlier one's template, not built anew
    assert templates.built >= 2  # CT and MRI (and the derived ROI) each have their own


def test_the_second_patient_of_a_template_carries_only_its_own_values(series, frozen_clock, templates):
    """Issue 29 (export speed): two patients of one structure built in a row, the second from the first's
    template: it equals its own full-constructor SR and holds none of the first's UIDs or numbers."""
    first, second = [case for case in series if case[0].modality == "ct" and not case[0].muscles][:2]
    sr_module.build_sr(*first)
    before = templates.reused
    ours, theirs = _both(second)
    assert templates.reused == before + 1
    assert _same(ours, theirs) == []
    first_plan = sr_module.report_plan(first[0], first[2]["seg"], first[1])
    second_plan = sr_module.report_plan(second[0], second[2]["seg"], second[1])
    first_values = set(masked_plan(first_plan)[1]) - set(masked_plan(second_plan)[1])
    assert len(first_values) > 20  # the two patients differ: there is something that could leak
    held = {str(e.value) for e in ours.iterall() if e.VR == "UI"} | {
        float(e.value) for e in ours.iterall() if e.VR == "FD"}
    assert held & first_values == set()


def test_a_report_that_differs_only_in_a_codes_meaning_gets_its_own_template(series, frozen_clock, templates,
                                                                              monkeypatch):
    """pydicom's Code compares by value and scheme only: a grid stated as another meaning of the same code must
    not reuse the template of the first (its meaning would leak)."""
    case = series[0]
    ours, theirs = _both(case)
    assert _same(ours, theirs) == []
    monkeypatch.setattr(sr_module, "habitat_grid_mm", lambda result: (0.8, 0.8, 2.5))
    ours, theirs = _both(case)
    assert templates.built == 2
    assert _same(ours, theirs) == []
    assert any(e.VR == "LO" and e.value == "Resampled grid 0.8 x 0.8 x 2.5 mm" for e in ours.iterall())


def test_a_value_highdicom_stores_twice_or_transformed_stops_the_template(series, monkeypatch):
    """A template is used only where the per-patient values are all the tree depends on: a value also copied
    elsewhere in another form (here a measurement's FloatingPointValue off by one) raises, it is never filled."""

    def altered(plan):
        root = sr_module.content_root(plan)
        number = next(e for e in root.iterall() if e.keyword == "FloatingPointValue")
        number.value = number.value + 1.0
        return root

    monkeypatch.setattr(sr_module, "TEMPLATES", ContentTemplates(altered))
    result, uids, built = series[0]
    with pytest.raises(TemplateError, match="FloatingPointValue depends on the per-patient values"):
        sr_module.TEMPLATES.filled(sr_module.report_plan(result, built["seg"], uids))


def test_no_element_of_a_built_sr_is_shared_with_its_template(series, frozen_clock, templates):
    """The copy is whole: changing a value in one patient's SR leaves the template, and the next SR, as they were."""
    first = sr_module.build_sr(*series[0])
    copied = [element for item in first.ContentSequence for element in item.iterall()]  # the template's part
    for element in copied:
        if element.VR in ("LO", "SH", "CS", "UT"):
            element.value = "X"
        elif element.VR == "FD":
            element.value = 0.0
    second = sr_module.build_sr(*series[0])
    assert templates.reused == 1
    assert differences(second, sr_module.build_sr(*series[0])) == [] and differences(first, second) != []


@needs_dciodvfy
def test_each_sr_is_valid_and_reads_back_with_the_same_measurements(series, templates, tmp_path):
    """dciodvfy finds no error in the template's SR, and highdicom reads it back with the numbers it reads
    from the reference's file."""
    for result, uids, built in series:
        ours, theirs = _both((result, uids, built))
        path, reference = (tmp_path / f"{result.patient_id}_{result.modality}_{kind}.dcm" for kind in ("sr", "ref"))
        ours.save_as(path, enforce_file_format=True)
        theirs.save_as(reference, enforce_file_format=True)
        report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], path.name
        read = hd.sr.srread(path)
        assert isinstance(read, hd.sr.Comprehensive3DSR)
        groups = measurement_groups(read)
        assert groups and groups == measurement_groups(hd.sr.srread(reference)), path.name
        assert len(groups) == 2 * len(result.methods)


def test_masking_replaces_every_per_patient_field_and_only_those():
    """The plan's per-patient fields (numbers, UIDs) become sentinels; codes, labels and segment numbers stay."""
    from pydicom.sr.coding import Code

    code = Code("X", "99SARCO", "x")
    measurement = sr_module.MeasurementPlan(code, 12.5, code, None, None)
    group = sr_module.GroupPlan("1.2.3", "Otsu fat", 2, code, code, "sarco-engine otsu", (), (measurement,),
                                ((code, code),))
    plan = sr_module.ReportPlan(code, "1.2.4", "1.2.840.10008.5.1.4.1.1.66.4", "1.2.5", "1.2.6", (group,))
    masked, values = masked_plan(plan)
    assert values == ["1.2.4", "1.2.5", "1.2.6", "1.2.3", 12.5]
    assert masked.segmentation_class_uid == plan.segmentation_class_uid and masked.groups[0].label == "Otsu fat"
    assert masked_plan(dataclasses.replace(plan, device_uid="9.9"))[0] == masked
    other_meaning = dataclasses.replace(plan, procedure=Code("X", "99SARCO", "another meaning"))
    assert masked_plan(other_meaning)[0] == masked  # pydicom's Code equality ignores the meaning...
    assert exact_key(masked_plan(other_meaning)[0]) != exact_key(masked)  # the key not


def test_a_template_that_fails_its_check_falls_back_to_the_full_constructor(series, templates, frozen_clock,
                                                                           monkeypatch, caplog):
    """A structure whose template highdicom cannot give (a value stored transformed) is built in full,
    equal to the reference; the failure is remembered, so the next patient does not build it again."""
    from engine.exporters import templates as templates_module

    attempts = []

    def refuse(cls, builder, masked, values):
        attempts.append(1)
        raise TemplateError("FloatingPointValue depends on the per-patient values otherwise than by holding one")

    monkeypatch.setattr(templates_module.ContentTemplate, "build", classmethod(refuse))
    cases = series[:2]
    structures = {exact_key(masked_plan(sr_module.report_plan(result, built["seg"], uids))[0])
                  for result, uids, built in cases}
    for case in cases * 2:   # each structure's failure is met twice
        ours, theirs = _both(case)
        assert _same(ours, theirs) == []
    assert len(attempts) == len(structures) == templates.built
    assert templates.reused == 2 * len(cases) - len(structures)
    assert sum("content template not usable" in r.getMessage() for r in caplog.records) == len(structures)



@dataclasses.dataclass(frozen=True)
class _Toy:
    """A plan of two per-patient values, for builders that misuse them."""

    value: float = dataclasses.field(metadata=PER_PATIENT)
    uid: str = dataclasses.field(metadata=PER_PATIENT)


@pytest.mark.parametrize("depends_on", ["sign", "integer-ness", "uid length"])
def test_a_tree_that_depends_on_a_values_kind_is_refused(depends_on):
    """The check's two sentinel sets differ in sign, magnitude, integer-ness and UID length, so a builder that
    branches on any of them (here: adds an element) gives two trees of different shape: refused."""

    def builder(plan: _Toy) -> Dataset:
        ds = Dataset()
        ds.FloatingPointValue = plan.value
        ds.UID = plan.uid
        branch = {"sign": plan.value < 0, "integer-ness": float(plan.value).is_integer(),
                  "uid length": len(plan.uid) > 36}[depends_on]
        if branch:
            ds.ValueType = "TEXT"
        return ds

    with pytest.raises(TemplateError, match="changes shape"):
        ContentTemplates(builder).filled(_Toy(12.5, "1.2.3"))
    plain = ContentTemplates(_plain).filled(_Toy(12.5, "1.2.3"))   # the same tree without the branch: filled
    assert (plain.FloatingPointValue, plain.UID) == (12.5, "1.2.3")


def _plain(plan: _Toy) -> Dataset:
    ds = Dataset()
    ds.FloatingPointValue = plan.value
    ds.UID = plan.uid
    return ds


def test_a_per_patient_value_of_another_type_is_a_template_error():
    """An int where a float or a UID is expected: a TemplateError, which build_sr answers with the full constructor."""
    with pytest.raises(TemplateError, match="not int"):
        ContentTemplates(_plain).filled(_Toy(3, "1.2.3"))   # type: ignore[arg-type]
