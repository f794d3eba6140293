"""TID 1500 measurement report (Comprehensive 3D SR, highdicom) of one patient's features.

One measurement group (TID 1411, volumetric ROI) per method and tissue, referencing that segment of
the SEG: every stat of the run folder's stat list (:func:`engine.exporters.codes.stat_measurement`):
volume (cm3), mean (HU for CT; MRI signal in arbitrary units), percent of the ROI in the window
(``99SARCO ROIPCT``) and any registered stat, with the method's cohort threshold. Fitted methods also carry the
pooled histogram's bimodality verdict (a qualitative evaluation) and Ashman's D, and on CT the share
of voxels they classify unlike the fixed HU reference; the fixed method's own groups are that
reference. Numbers are features.csv's (volumes mm^3 / 1000), measured on the run's resampled grid,
which each group states (``99SARCO GRID``); each group also carries the segment's volume counted on
the source grid as the SEG holds it (``99SARCO SRCVOL``), so a reader who counts the SEG's voxels
finds that number, not the features' (docs/export.md: the two grids).

How it is built. :func:`report_plan` says what one patient's report holds, as highdicom's arguments
(:class:`ReportPlan`); :func:`measurement_report` has highdicom build that content tree, and
highdicom's document constructor (:func:`reference_sr`) deep-copies the tree, parses the copy back
into its own classes and walks it for the referenced instances: about two thirds of the SR's cost,
for a tree of ~500 items that differs between patients only in its numbers and UIDs. So the export
(:func:`build_sr`) copies the tree from a template (:mod:`engine.exporters.templates`: highdicom
builds each distinct plan once per process, sentinels in place of the fields marked ``PER_PATIENT``,
and each copy gets one patient's values), and the document around it (patient, study, evidence,
flags) is highdicom's constructor given the root container without its children. A plan that
differs in anything but its per-patient values (a stat without a value, the grid, the verdict, the
muscles) gets a template of its own. ``tests/test_sr.py`` checks that both paths give the same data
set, element by element.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from engine import __version__
from engine.contract import FIXED
from engine.exporters import codes as sarco_codes
from engine.exporters.seg import SEGMENT_TISSUES, SOURCE_GRID_KEY, segment_label, segment_number
from engine.exporters.source import ExportError, PatientResult, habitat_grid_mm
from engine.exporters.templates import PER_PATIENT, ContentTemplates, TemplateError


@dataclass(frozen=True)
class MeasurementPlan:
    """One numeric measurement of a group (highdicom's ``Measurement``): ``value`` in ``unit``."""

    name: Code
    value: float = field(metadata=PER_PATIENT)
    unit: Code
    method: Code | None
    derivation: Code | None


@dataclass(frozen=True)
class GroupPlan:
    """One measurement group (TID 1411): one method's tissue, as a segment of the SEG."""

    tracking_uid: str = field(metadata=PER_PATIENT)
    label: str
    segment_number: int
    finding_type: Code
    method: Code
    algorithm: str
    sites: tuple[Code, ...]
    measurements: tuple[MeasurementPlan, ...]
    evaluations: tuple[tuple[Code, Code], ...]  # (concept, value) of each qualitative evaluation


@dataclass(frozen=True)
class ReportPlan:
    """What one patient's measurement report (TID 1500) says, as the arguments highdicom builds it from."""

    procedure: Code
    device_uid: str = field(metadata=PER_PATIENT)
    segmentation_class_uid: str
    segmentation_uid: str = field(metadata=PER_PATIENT)
    source_series_uid: str = field(metadata=PER_PATIENT)
    groups: tuple[GroupPlan, ...]


def _group_plan(result: PatientResult, i: int, method: str, tissue: str, uids,
                grid_mm: tuple[float, float, float]) -> GroupPlan:
    method_code = sarco_codes.method_code(method)
    measurements = []
    for stat in result.stats:  # the run folder's stat list: a registered stat needs no edit here
        value = result.feature(method, tissue, stat.name)
        if not math.isfinite(value):  # a tissue without a voxel has no mean
            continue
        name, unit, scale, derivation = sarco_codes.stat_measurement(stat, result.modality)
        measurements.append(MeasurementPlan(name, float(value * scale), unit, method_code, derivation))
    source_mm3 = result.extras.get(SOURCE_GRID_KEY, {}).get((method, tissue))
    if source_mm3 is not None:
        measurements.append(MeasurementPlan(sarco_codes.SOURCE_GRID_VOLUME, float(source_mm3 / 1000.0),
                                            sarco_codes.CUBIC_CENTIMETER, method_code, None))
    measurements.append(MeasurementPlan(sarco_codes.THRESHOLD, float(result.thresholds[method]),
                                        sarco_codes.MEAN_UNIT[result.modality], method_code, None))
    evaluations = [(sarco_codes.MEASUREMENT_GRID, sarco_codes.resampled_grid(grid_mm))]
    if method != FIXED:
        vs_fixed = result.vs_fixed(method)
        if math.isfinite(vs_fixed):
            measurements.append(MeasurementPlan(sarco_codes.VS_FIXED, float(vs_fixed), sarco_codes.PERCENT,
                                                method_code, None))
        diagnostic = result.diagnostic
        if diagnostic is not None:
            verdict = sarco_codes.ONE_TISSUE if diagnostic.likely_one_tissue else sarco_codes.TWO_TISSUES
            evaluations.append((sarco_codes.BIMODALITY, verdict))
        if diagnostic is not None and diagnostic.ashman_d is not None:
            measurements.append(MeasurementPlan(sarco_codes.ASHMAN_D, float(diagnostic.ashman_d),
                                                sarco_codes.NO_UNIT, None, None))
    return GroupPlan(
        tracking_uid=uids.uid("sr", "group", method, tissue), label=segment_label(method, tissue),
        segment_number=segment_number(i, tissue), finding_type=sarco_codes.TISSUE_TYPE[tissue], method=method_code,
        algorithm=f"sarco-engine {method}", sites=tuple(sarco_codes.MUSCLE_REGION[m] for m in result.muscles),
        measurements=tuple(measurements), evaluations=tuple(evaluations))


def report_plan(result: PatientResult, seg, uids) -> ReportPlan:
    """The measurement report of one patient, referencing the segments of its SEG ``seg``."""
    grid_mm = habitat_grid_mm(result)  # one header read for every group
    groups = tuple(_group_plan(result, i, method, tissue, uids, grid_mm)
                   for i, method in enumerate(result.methods) for tissue in SEGMENT_TISSUES)
    return ReportPlan(procedure=sarco_codes.PROCEDURE[result.modality], device_uid=uids.uid("sr", "device"),
                      segmentation_class_uid=str(seg.SOPClassUID), segmentation_uid=str(seg.SOPInstanceUID),
                      source_series_uid=str(result.series.datasets[0].SeriesInstanceUID), groups=groups)


def measurement_report(plan: ReportPlan):
    """highdicom's TID 1500 content tree of ``plan`` (a ``MeasurementReport``: one root container)."""
    import highdicom as hd  # lazy: highdicom is heavy; export only

    groups = []
    for group in plan.groups:
        measurements = [hd.sr.Measurement(name=m.name, value=m.value, unit=m.unit, method=m.method,
                                          derivation=m.derivation) for m in group.measurements]
        segment = hd.sr.ReferencedSegment(
            sop_class_uid=plan.segmentation_class_uid, sop_instance_uid=plan.segmentation_uid,
            segment_number=group.segment_number,
            source_series=hd.sr.SourceSeriesForSegmentation(plan.source_series_uid))
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=group.tracking_uid, identifier=group.label),
            referenced_segment=segment, finding_type=group.finding_type, method=group.method,
            algorithm_id=hd.sr.AlgorithmIdentification(name=group.algorithm, version=__version__),
            finding_sites=[hd.sr.FindingSite(site) for site in group.sites] or None, measurements=measurements,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(name, value) for name, value in group.evaluations]))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=plan.device_uid, name="sarco-engine", model_name=__version__))
    return hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=plan.procedure, imaging_measurements=groups)


def _segmentation(built: dict):
    seg = built.get("seg")
    if seg is None:
        raise ExportError("sr", "no DICOM-SEG to reference")
    return seg


def _document(result: PatientResult, uids, seg, content):
    """highdicom's Comprehensive 3D SR around ``content`` (a root container), evidence the source and the SEG."""
    import highdicom as hd  # lazy: highdicom is heavy; export only

    document = hd.sr.Comprehensive3DSR(
        evidence=[*result.series.datasets, seg], content=content, series_instance_uid=uids.series("sr"),
        series_number=uids.number("sr"), sop_instance_uid=uids.instance("sr"), instance_number=1,
        manufacturer="sarco-engine", is_complete=True, series_description=uids.description("sr"))
    document.CodingSchemeIdentificationSequence = [sarco_codes.local_scheme_identification()]
    return document


def reference_sr(result: PatientResult, uids, built: dict):
    """The SR as highdicom's full constructor builds it (the reference :func:`build_sr` is tested against)."""
    seg = _segmentation(built)
    return _document(result, uids, seg, measurement_report(report_plan(result, seg, uids)))


def build_sr(result: PatientResult, uids, built: dict) -> Dataset:
    """The Comprehensive 3D SR of one patient; needs the SEG built first (its segments are referenced).

    The data set :func:`reference_sr` builds, as a pydicom ``Dataset`` (highdicom's reading of it:
    ``highdicom.sr.Comprehensive3DSR.from_dataset``), its content copied from this process's
    template of the plan (module docstring); built by highdicom's full constructor when that plan's
    template failed its check (logged once per structure), so a patient is never lost to it.
    """
    seg = _segmentation(built)
    plan = report_plan(result, seg, uids)
    try:
        content = TEMPLATES.filled(plan)
    except TemplateError:   # highdicom stored a value otherwise than given: its own constructor, in full
        return _document(result, uids, seg, measurement_report(plan))
    shell = Dataset()  # the root container without its children: the constructor copies and walks only that
    for element in content:
        shell.add(DataElement(element.tag, "SQ", []) if element.keyword == "ContentSequence" else element)
    document = _document(result, uids, seg, shell)
    for element in content:  # the root container's attributes go into the document, as the constructor puts them
        document[element.tag] = element
    report = Dataset(document)  # the same elements, without highdicom's view of the shell as its content
    report.file_meta = document.file_meta
    return report


def content_root(plan: ReportPlan) -> Dataset:
    """The root container of :func:`measurement_report` (what the SR document holds at its root)."""
    return measurement_report(plan)[0]


#: This process's templates of the report's content (each Dask worker process has its own).
TEMPLATES = ContentTemplates(content_root)
