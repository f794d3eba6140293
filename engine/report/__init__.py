"""The clinician-facing report of a run (``report.html``), as a package that reads published outputs only.

One direction, no cycle: :mod:`~engine.report.format` (display strings) <- :mod:`~engine.report.tables`
(the paper's tables) and :mod:`~engine.report.overlay` (the habitat overlay, shared with QA) <-
:mod:`~engine.report.figures` <- :mod:`~engine.report.render` (the sections and :func:`render_report`).
Nothing here reads ``cache/`` (issue 21).
"""

from engine.report.format import format_number, format_p, html_table, model_label, readable_header
from engine.report.render import (
    diagnostic_sections,
    mri_series_by_scanner,
    patients_per_model,
    read_series,
    render_report,
    scanner_sections,
)

__all__ = [
    "diagnostic_sections",
    "format_number",
    "format_p",
    "html_table",
    "model_label",
    "mri_series_by_scanner",
    "patients_per_model",
    "read_series",
    "readable_header",
    "render_report",
    "scanner_sections",
]
