"""Secondary Capture of the QA picture, in the source study with the source's identity (highdicom).

Viewers show SEG-derived SR numbers poorly; the run's QA PNG (ROI, habitats, the numbers) is what a
radiologist can read at a glance, so it goes in the study as an RGB Secondary Capture. Its title
band (the run's pseudonym, the modality, the ROI's source) is blanked first: a pseudonym burnt into
pixels that sit in the real patient's study would be a key from pseudonym to identity in the PACS.
What remains is the picture, its side letters, legend and numbers: Burned In Annotation NO.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from engine.exporters.source import ExportError, PatientResult
from engine.qa.panel import BACKGROUND_RGB, TITLE_BAND_PX

#: Body parts (PS3.16 CID 4031) under which the lumbar QA picture may be filed as the source was; any
#: other (a scanner's own term such as PARTIALBODY, or none) files it under the lumbar spine.
UNPAIRED_BODY_PARTS = frozenset({"LSPINE", "SPINE", "TLSPINE", "ABDOMEN", "ABDOMENPELVIS", "CHESTABDOMEN",
                                 "CHESTABDPELVIS", "PELVIS", "WHOLEBODY"})


def build_sc(result: PatientResult, uids, built: dict):
    """The SC dataset of one patient's QA PNG; None when the run drew no QA picture."""
    import highdicom as hd  # lazy: highdicom is heavy; export only

    if result.qa_png is None:
        return None
    try:
        with Image.open(result.qa_png) as picture:
            pixels = np.array(picture.convert("RGB"), dtype=np.uint8)  # a writable copy: the title is blanked
    except OSError as exc:
        raise ExportError("sc", f"the QA picture could not be read: {exc}") from None
    pixels[:TITLE_BAND_PX] = BACKGROUND_RGB  # the title names the run's pseudonym
    reference = result.series.datasets[0]
    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=reference, pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
        # the picture's main panel is the axial slice in the viewer's convention: rows run to the
        # patient's left, columns to posterior
        coordinate_system="PATIENT", patient_orientation=("L", "P"), series_instance_uid=uids.series("sc"),
        series_number=uids.number("sc"),
        sop_instance_uid=uids.instance("sc"), instance_number=1, manufacturer="sarco-engine",
        series_description=uids.description("sc"))
    # General Series' Laterality (type 2C) is required for a paired body part: naming the lumbar
    # spine says this one is not
    body_part = str(getattr(reference, "BodyPartExamined", "") or "")
    capture.BodyPartExamined = body_part if body_part in UNPAIRED_BODY_PARTS else "LSPINE"
    capture.BurnedInAnnotation = "NO"  # the title band, the only identifying text, is blank
    return capture
