"""The synthetic world: phantom cohorts with known truth and the writers that put them on disk.

Test-data generation (``sarco synth``, ``sarco demo``, the tests and the benchmarks), kept apart
from the production readers in :mod:`engine.io`, which never import this package.

* :mod:`engine.synthetic.cohort`: the lumbar CT + T2 MRI phantom cohort (:func:`synthesize_cohort`).
* :mod:`engine.synthetic.dicom_writer`: DICOM series, label-map masks, Slicer ``.seg.nrrd``, DICOM-SEG.
* :mod:`engine.synthetic.jpeg_lossless`: a JPEG Lossless SV1 encoder (pydicom has none).
"""

from engine.synthetic.cohort import CLINICAL_COLUMNS, MANIFEST_COLUMNS, ROI_LABELS, synthesize_cohort
from engine.synthetic.dicom_writer import TRANSFER_SYNTAXES, write_dicom_seg, write_dicom_series, write_mask

__all__ = ["CLINICAL_COLUMNS", "MANIFEST_COLUMNS", "ROI_LABELS", "TRANSFER_SYNTAXES", "synthesize_cohort",
           "write_dicom_seg", "write_dicom_series", "write_mask"]
