"""Error types shared by every stage.

Two families:

* Run-level problems (a bad config key, a malformed manifest, a command given a file or
  folder it cannot use) stop the run before any work starts: :class:`ConfigError`,
  :class:`ManifestError`, :class:`UsageError`. The command line answers them with one line
  and exit status 2.
* Per-patient problems are recorded and the batch goes on: stage code raises
  :class:`InputError` (it does not know which patient it is working for); the engine
  wraps it into a :class:`PatientError` carrying the patient id, modality and stage,
  which becomes one row of ``errors.csv``.

Messages are written for a radiographer: they say what is wrong with the input and,
where possible, where (``"CT series has a missing slice between z=-12.0 and z=-6.0 mm"``).
They never contain DICOM identifiers (names, MRNs, dates): only the manifest's
``patient_id`` identifies a patient in any output.
"""

from __future__ import annotations

# Stages, in pipeline order; they name the ``stage`` column of errors.csv.
STAGES = (
    "manifest",
    "ingest",
    "mask",
    "segmentation",
    "preprocess",
    "histogram",
    "fit",
    "classify",
    "features",
    "write",
)


class SarcoError(Exception):
    """Base class of every error the engine raises on purpose."""


class ConfigError(SarcoError):
    """A run config is invalid; names the key (dotted path) and the offending value."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config key '{key}': {message}")


class ManifestError(SarcoError):
    """The manifest as a whole cannot be used (missing column, duplicate id, BOM issues...)."""

    def __init__(self, message: str, *, line: int | None = None, column: str | None = None):
        self.line = line
        self.column = column
        where = []
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column '{column}'")
        prefix = f"manifest {', '.join(where)}: " if where else "manifest: "
        super().__init__(prefix + message)


class UsageError(SarcoError, ValueError):
    """A command was given something it cannot use; the message names it and says what to fix.

    A missing or unreadable file, a folder that is not a run folder, a ``model.json`` that is not
    a sarco bundle, a CSV without the named column. Nothing was started. Also a ``ValueError``,
    so a Python caller that catches the conventional bad-argument error still catches it.
    """


class InputError(SarcoError):
    """One input (a series, a mask, a file) cannot be used.

    Parameters
    ----------
    stage : str
        One of :data:`STAGES`.
    reason : str
        A sentence a radiographer can act on.
    """

    def __init__(self, stage: str, reason: str):
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        self.stage = stage
        self.reason = reason
        super().__init__(f"[{stage}] {reason}")


class PatientError(SarcoError):
    """An :class:`InputError` attributed to one patient and modality (one errors.csv row)."""

    def __init__(self, patient_id: str, modality: str, stage: str, reason: str):
        self.patient_id = patient_id
        self.modality = modality
        self.stage = stage
        self.reason = reason
        super().__init__(f"patient {patient_id} ({modality}) [{stage}]: {reason}")

    def as_row(self) -> dict:
        return {"patient_id": self.patient_id, "modality": self.modality, "stage": self.stage, "reason": self.reason}
