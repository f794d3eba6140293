"""DICOM-SEG of the habitat maps on the source series' grid (highdicom).

For each method two segments, muscle and fat (Segmented Property Category "Tissue", types "Muscle"
and "Adipose tissue", SNOMED CT), labelled with the method ("Otsu muscle"), with the anatomic
regions of a derived ROI (erector spinae, iliopsoas). Segment ``2 i + 1`` is method ``i``'s muscle,
``2 i + 2`` its fat (:func:`segment_number`). Only the slices the ROI touches are referenced and
encoded. BINARY by default: Orthanc 1.10 refuses the Label Map SOP class over C-STORE.
"""

from __future__ import annotations

import numpy as np

from engine import __version__
from engine.contract import HABITAT_LABELS, TISSUES
from engine.exporters import codes as sarco_codes
from engine.exporters.source import ExportError, PatientResult, habitats_on_source, source_grid_volumes_mm3
from engine.measure.methods import display_name

#: Tissues in segment order within a method.
SEGMENT_TISSUES = ("muscle", "fat")
assert set(SEGMENT_TISSUES) == set(TISSUES)


#: ``PatientResult.extras`` key of the segments' volumes on the source grid (mm^3), for the SR.
SOURCE_GRID_KEY = "source_grid_mm3"


def segment_number(method_index: int, tissue: str) -> int:
    return 2 * method_index + 1 + SEGMENT_TISSUES.index(tissue)


def segment_label(method: str, tissue: str) -> str:
    return f"{display_name(method)} {tissue}"


def roi_slices(labels: dict[str, np.ndarray]) -> np.ndarray:
    """Indices of the source slices that hold ROI voxels (any habitat label but ``outside_roi``)."""
    first = next(iter(labels.values()))
    in_roi = (first != HABITAT_LABELS["outside_roi"]).reshape(first.shape[0], -1).any(axis=1)
    return np.flatnonzero(in_roi)


def build_seg(result: PatientResult, uids, built: dict):
    """The DICOM-SEG dataset of one patient (None when the ROI misses every source slice)."""
    import highdicom as hd  # lazy: highdicom is heavy; export only

    labels = habitats_on_source(result)
    result.extras[SOURCE_GRID_KEY] = source_grid_volumes_mm3(labels, result.series)  # the SR states them too
    slices = roi_slices(labels)
    if slices.size == 0:
        raise ExportError("seg", "the habitat maps do not overlap the source series (was it replaced since the run?)")
    sources = [result.series.datasets[k] for k in slices]
    planes = []
    descriptions = []
    regions = [sarco_codes.MUSCLE_REGION[m] for m in result.muscles] or None
    for i, method in enumerate(result.methods):
        for tissue in SEGMENT_TISSUES:
            planes.append(labels[method][slices] == HABITAT_LABELS[tissue])
            algorithm = hd.AlgorithmIdentificationSequence(
                name=f"sarco-engine {display_name(method)}", version=__version__,
                family=sarco_codes.algorithm_family(result.fits[method].family))
            descriptions.append(hd.seg.SegmentDescription(
                segment_number=segment_number(i, tissue), segment_label=segment_label(method, tissue),
                segmented_property_category=sarco_codes.TISSUE_CATEGORY,
                segmented_property_type=sarco_codes.TISSUE_TYPE[tissue],
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
                tracking_uid=uids.uid("seg", "track", method, tissue), tracking_id=segment_label(method, tissue),
                anatomic_regions=regions))
    pixel_array = np.stack(planes, axis=-1).astype(np.uint8)
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=pixel_array, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=uids.series("seg"), series_number=uids.number("seg"),
        sop_instance_uid=uids.instance("seg"), instance_number=1, manufacturer="sarco-engine",
        manufacturer_model_name="sarco-engine", software_versions=__version__, device_serial_number="0",
        series_description=uids.description("seg"), content_label="HABITATS",
        content_description="Muscle and fat per method at L3/4", omit_empty_frames=False)
