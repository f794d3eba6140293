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
"""

from __future__ import annotations

import math

from pydicom.sr.codedict import codes

from engine import __version__
from engine.contract import FIXED
from engine.exporters import codes as sarco_codes
from engine.exporters.seg import SEGMENT_TISSUES, SOURCE_GRID_KEY, segment_label, segment_number
from engine.exporters.source import ExportError, PatientResult, habitat_grid_mm


def _measurement(name, value: float, unit, **kwargs):
    import highdicom as hd  # lazy: highdicom is heavy; export only

    return hd.sr.Measurement(name=name, value=float(value), unit=unit, **kwargs)


def _group(result: PatientResult, seg, i: int, method: str, tissue: str, uids, grid_mm: tuple[float, float, float]):
    import highdicom as hd  # lazy: highdicom is heavy; export only

    method_code = sarco_codes.method_code(method)
    measurements = []
    for stat in result.stats:  # the run folder's stat list: a registered stat needs no edit here
        value = result.feature(method, tissue, stat.name)
        if not math.isfinite(value):  # a tissue without a voxel has no mean
            continue
        name, unit, scale, derivation = sarco_codes.stat_measurement(stat, result.modality)
        measurements.append(_measurement(name, value * scale, unit, method=method_code,
                                         **({"derivation": derivation} if derivation is not None else {})))
    source_mm3 = result.extras.get(SOURCE_GRID_KEY, {}).get((method, tissue))
    if source_mm3 is not None:
        measurements.append(_measurement(sarco_codes.SOURCE_GRID_VOLUME, source_mm3 / 1000.0,
                                         sarco_codes.CUBIC_CENTIMETER, method=method_code))
    threshold_unit = sarco_codes.MEAN_UNIT[result.modality]
    measurements.append(_measurement(sarco_codes.THRESHOLD, result.thresholds[method], threshold_unit,
                                     method=method_code))
    evaluations = [hd.sr.QualitativeEvaluation(sarco_codes.MEASUREMENT_GRID,
                                               sarco_codes.resampled_grid(grid_mm))]
    if method != FIXED:
        vs_fixed = result.vs_fixed(method)
        if math.isfinite(vs_fixed):
            measurements.append(_measurement(sarco_codes.VS_FIXED, vs_fixed, sarco_codes.PERCENT, method=method_code))
        diagnostic = result.diagnostic
        if diagnostic is not None:
            verdict = sarco_codes.ONE_TISSUE if diagnostic.likely_one_tissue else sarco_codes.TWO_TISSUES
            evaluations.append(hd.sr.QualitativeEvaluation(sarco_codes.BIMODALITY, verdict))
        if diagnostic is not None and diagnostic.ashman_d is not None:
            measurements.append(_measurement(sarco_codes.ASHMAN_D, diagnostic.ashman_d, sarco_codes.NO_UNIT))
    source_series = hd.sr.SourceSeriesForSegmentation(result.series.datasets[0].SeriesInstanceUID)
    segment = hd.sr.ReferencedSegment(sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
                                      segment_number=segment_number(i, tissue), source_series=source_series)
    sites = [hd.sr.FindingSite(sarco_codes.MUSCLE_REGION[m]) for m in result.muscles] or None
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uids.uid("sr", "group", method, tissue),
                                                     identifier=segment_label(method, tissue)),
        referenced_segment=segment, finding_type=sarco_codes.TISSUE_TYPE[tissue], method=method_code,
        algorithm_id=hd.sr.AlgorithmIdentification(name=f"sarco-engine {method}", version=__version__),
        finding_sites=sites, measurements=measurements, qualitative_evaluations=evaluations)


def build_sr(result: PatientResult, uids, built: dict):
    """The Comprehensive 3D SR of one patient; needs the SEG built first (its segments are referenced)."""
    import highdicom as hd  # lazy: highdicom is heavy; export only

    seg = built.get("seg")
    if seg is None:
        raise ExportError("sr", "no DICOM-SEG to reference")
    grid_mm = habitat_grid_mm(result)  # one header read for every group
    groups = [_group(result, seg, i, method, tissue, uids, grid_mm)
              for i, method in enumerate(result.methods) for tissue in SEGMENT_TISSUES]
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uids.uid("sr", "device"), name="sarco-engine", model_name=__version__))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=sarco_codes.PROCEDURE[result.modality], imaging_measurements=groups)
    evidence = [*result.series.datasets, seg]
    report_dataset = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report, series_instance_uid=uids.series("sr"), series_number=uids.number("sr"),
        sop_instance_uid=uids.instance("sr"), instance_number=1, manufacturer="sarco-engine", is_complete=True,
        series_description=uids.description("sr"))
    report_dataset.CodingSchemeIdentificationSequence = [sarco_codes.local_scheme_identification()]
    return report_dataset
