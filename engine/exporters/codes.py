"""The coded concepts of the exports: standard codes where they exist, the local scheme ``99SARCO`` where not.

Standard: SNOMED CT (tissues, anatomy, volume, mean), DICOM (attenuation coefficient, MR signal
intensity, algorithm families), UCUM (units), LOINC (procedure). No standard code names "percent
of the ROI that is this tissue", a method's cohort threshold, or the pooled histogram's bimodality
verdict, so they are defined here in the private coding scheme ``99SARCO`` (DICOM PS3.16 8.2: a
designator starting with ``99`` is local) and listed in the README's "PACS round trip" section.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from engine.measure.features import INTENSITY
from engine.measure.methods import display_name
from engine.runfolder import StatInfo

LOCAL_SCHEME = "99SARCO"

TISSUE_CATEGORY = codes.SCT.Tissue
TISSUE_TYPE = {"muscle": Code("71616004", "SCT", "Muscle"), "fat": Code("55603005", "SCT", "Adipose tissue")}
#: ROI muscle group (``roi.derive.muscles``) -> anatomic region of the segments and finding site.
MUSCLE_REGION = {"paraspinal": Code("44947003", "SCT", "Erector spinae muscle"),
                 "psoas": Code("68455001", "SCT", "Iliopsoas muscle")}

VOLUME = codes.SCT.Volume
MEAN = codes.SCT.Mean
MEAN_NAME = {"ct": codes.DCM.AttenuationCoefficient, "mri": codes.DCM.MRSignalIntensity}
CUBIC_CENTIMETER = Code("cm3", "UCUM", "cubic centimeter")
PERCENT = Code("%", "UCUM", "percent")
#: CT means in Hounsfield units; MRI T2 signal (standardised or not) has no unit: UCUM's
#: arbitrary-unit annotation.
MEAN_UNIT = {"ct": Code("[hnsf'U]", "UCUM", "Hounsfield unit"), "mri": Code("{a.u.}", "UCUM", "arbitrary unit")}
NO_UNIT = Code("1", "UCUM", "no units")
PROCEDURE = {"ct": codes.LN.CTUnspecifiedBodyRegion, "mri": codes.LN.MRIUnspecifiedBodyRegion}

PERCENT_OF_ROI = Code("ROIPCT", LOCAL_SCHEME, "Percent of ROI in the intensity window")
THRESHOLD = Code("THRESH", LOCAL_SCHEME, "Cohort threshold")
VS_FIXED = Code("VSFIXED", LOCAL_SCHEME, "Voxels classified unlike the fixed HU reference")
ASHMAN_D = Code("ASHMAND", LOCAL_SCHEME, "Ashman D of the pooled training histogram")
BIMODALITY = Code("BIMODAL", LOCAL_SCHEME, "Pooled training histogram")
ONE_TISSUE = Code("ONETISSUE", LOCAL_SCHEME, "Likely one tissue: fitted fat unreliable")
TWO_TISSUES = Code("TWOTISSUES", LOCAL_SCHEME, "Two tissues")
#: The grid the volume, mean and percent were measured on (the run's resampled grid), and the volume
#: of the same segment counted on the source grid, as the DICOM-SEG holds it: the two differ by the
#: partial voxels of the boundary (docs/export.md).
MEASUREMENT_GRID = Code("GRID", LOCAL_SCHEME, "Measurement grid")
SOURCE_GRID_VOLUME = Code("SRCVOL", LOCAL_SCHEME, "Volume on the source image grid (as in the DICOM-SEG)")


def resampled_grid(spacing_mm) -> Code:
    """The value of :data:`MEASUREMENT_GRID`: the run's resampled grid, its spacing in the meaning."""
    return Code("RESAMPLED", LOCAL_SCHEME, "Resampled grid " + " x ".join(f"{s:g}" for s in spacing_mm) + " mm")


def algorithm_family(keyword: str) -> Code:
    """A method's algorithm family (CID 7162) from the keyword its registry entry and thresholds.json carry."""
    return getattr(codes.cid7162, keyword)


#: The standard concepts of the built-in stats; any other registered stat is coded in ``99SARCO``.
_STAT_CONCEPTS = {"volume": VOLUME, "percent": PERCENT_OF_ROI}
#: Stored or shown units (:mod:`engine.measure.features`) as UCUM codes; another unit becomes a UCUM annotation.
_UCUM = {"%": PERCENT, "cm³": CUBIC_CENTIMETER, "mm³": Code("mm3", "UCUM", "cubic millimeter"), "": NO_UNIT}


def stat_measurement(stat: StatInfo, modality: str) -> tuple[Code, Code, float, Code | None]:
    """(concept name, unit, factor from the stored value, derivation) of a stat's SR measurement.

    The mean is the modality's intensity concept with derivation "Mean" (as before the stat list was
    read from the run folder); volume and percent keep their codes; a plug-in stat is named in
    ``99SARCO`` by its name (upper case) and label, in its shown unit.
    """
    if stat.name == "mean":
        return MEAN_NAME[modality], MEAN_UNIT[modality], 1.0, MEAN
    concept = _STAT_CONCEPTS.get(stat.name) or Code(stat.name.upper()[:16], LOCAL_SCHEME, stat.label[:64])
    shown = stat.display_unit if stat.display_unit is not None else stat.unit
    scale = stat.display_scale if stat.display_unit is not None else 1.0
    if shown == INTENSITY:
        return concept, MEAN_UNIT[modality], scale, None
    return concept, _UCUM.get(shown) or Code(f"{{{shown}}}", "UCUM", shown[:64]), scale, None


def method_code(method: str) -> Code:
    """The method as a coded concept: ``OTSU`` = "Otsu threshold" in ``99SARCO``."""
    return Code(method.upper(), LOCAL_SCHEME, f"{display_name(method)} threshold")


def local_scheme_identification() -> Dataset:
    """An item of the Coding Scheme Identification Sequence declaring ``99SARCO``."""
    item = Dataset()
    item.CodingSchemeDesignator = LOCAL_SCHEME
    item.CodingSchemeName = "sarco-engine local codes"
    item.CodingSchemeResponsibleOrganization = "sarco-engine"
    return item
