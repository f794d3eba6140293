"""Issue 24: how the QA picture and sheet name an MRI series' intensity reference."""

from __future__ import annotations

REFERENCE_SHORT_NAMES = {"csf": "CSF", "subcutaneous_fat": "subcut. fat"}


def reference_caption(record: dict) -> str:
    """One line from a series' ``standardization`` record: ``CSF 1196 (x0.836)``, ``FLAGGED`` when doubtful."""
    name = REFERENCE_SHORT_NAMES.get(str(record.get("reference")), str(record.get("reference")))
    text = f"{name} {float(record['reference_signal']):.0f} (x{float(record['scale']):.3g})"
    return text + (" FLAGGED" if record.get("flag") else "")
