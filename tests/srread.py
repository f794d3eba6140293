"""Reading a TID 1500 SR back in tests, independently of the engine's writer (pydicom only)."""

from __future__ import annotations


def measurement_groups(sr) -> dict[str, dict]:
    """Tracking identifier -> {concept code value: numeric value, 'segment': referenced segment number}."""
    groups = {}

    def walk(items):
        for item in items:
            concept = item.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in item else ""
            if item.ValueType == "CONTAINER" and concept == "125007":
                group: dict = {}
                for child in item.ContentSequence:
                    code = child.ConceptNameCodeSequence[0].CodeValue
                    if child.ValueType == "TEXT" and code == "112039":
                        name = child.TextValue
                    elif child.ValueType == "NUM":
                        group[code] = float(child.MeasuredValueSequence[0].NumericValue)
                    elif child.ValueType == "IMAGE" and "ReferencedSegmentNumber" in child.ReferencedSOPSequence[0]:
                        group["segment"] = int(child.ReferencedSOPSequence[0].ReferencedSegmentNumber)
                groups[name] = group
            elif "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(sr.ContentSequence)
    return groups
