"""Content templates: a highdicom content tree built once per structure, copied per patient with its own values.

A *plan* is a frozen dataclass (nested dataclasses, tuples, pydicom ``Code`` s) holding everything a
tree says, as the builder's arguments; its per-patient values (numbers, UIDs) are the fields marked
:data:`PER_PATIENT`. :func:`masked_plan` puts a sentinel in place of each; :class:`ContentTemplates`
keeps one tree per distinct masked plan (:func:`exact_key`), built by the builder from the sentinels
and checked (:meth:`ContentTemplate.build`), and :meth:`ContentTemplate.filled` copies it with one
patient's values where the sentinels lie. Whatever is not a per-patient value is part of the key: a
plan that differs in anything else gets its own tree, never another plan's.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.valuerep import DS

log = logging.getLogger("sarco")

#: Field metadata of a plan's per-patient values: a float or a UID that a template holds as a sentinel.
PER_PATIENT = {"per_patient": True}

_SENTINEL_UID_ROOT = "2.25.27182818284590452353602874."


def _sentinel(k: int, value: Any, variant: int = 0) -> float | str:
    """The stand-in of a plan's ``k``-th per-patient value: a number or a UID no patient has (``variant`` 1
    gives a second set, for :meth:`ContentTemplate.build`'s check).

    The two sets differ in every property a builder might branch on: the numbers in sign, magnitude and
    integer-ness (-987001 - k against 1000.25 + 1000 k, both exact as an auto-formatted DS and as an FD),
    the UIDs in length. A builder whose tree depends on any of them then gives two trees that differ
    elsewhere than in the sentinels, and the template is refused.
    """
    if isinstance(value, float):
        return -987_001.0 - k if variant == 0 else 1000.25 + 1000.0 * k
    if isinstance(value, str):
        return f"{_SENTINEL_UID_ROOT}1{k}" if variant == 0 else f"{_SENTINEL_UID_ROOT}2{k}0000"
    raise TemplateError(f"a per-patient value of a plan is a float or a UID, not {type(value).__name__}")


def masked_plan(plan, variant: int = 0) -> tuple[Any, list]:
    """``plan`` with each per-patient value replaced by its sentinel, and those values in order."""
    values: list = []

    def mask(item):
        if isinstance(item, Code):
            return item
        if isinstance(item, tuple):
            return tuple(mask(v) for v in item)
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            changes = {}
            for f in dataclasses.fields(item):
                value = getattr(item, f.name)
                if f.metadata.get("per_patient"):
                    changes[f.name] = _sentinel(len(values), value, variant)
                    values.append(value)
                else:
                    changes[f.name] = mask(value)
            return dataclasses.replace(item, **changes)
        return item

    return mask(plan), values


def exact_key(item) -> Any:
    """A hashable form of a plan in which equal means the same tree.

    pydicom's ``Code`` compares and hashes by value and scheme only (its meaning is ignored, SRT maps
    to SCT), so two plans whose codes differ in meaning would be equal: codes become plain tuples
    here, and every other value carries its type.
    """
    if isinstance(item, Code):
        return ("Code", *item)
    if isinstance(item, tuple):
        return tuple(exact_key(v) for v in item)
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return (type(item).__name__, *(exact_key(getattr(item, f.name)) for f in dataclasses.fields(item)))
    return (type(item).__name__, item)


#: VRs a per-patient value may be stored in, and how it is written there: a NumericValue as highdicom's
#: ``NumContentItem`` writes it (a DS auto-formatted from the float), an FD and a UID as they are.
_SLOT_VALUE: dict[str, Callable[[Any], Any]] = {"DS": lambda v: DS(v, auto_format=True), "FD": float, "UI": str}


class TemplateError(RuntimeError):
    """The builder stored a per-patient value otherwise than as given: the tree cannot be copied from a template."""


@dataclass
class ContentTemplate:
    """The content tree of a masked plan, and where in it each per-patient value goes."""

    root: Dataset
    slots: dict[tuple[int, Any], int]  # (id of a data set of ``root``, tag) -> index of the per-patient value

    @classmethod
    def build(cls, builder: Callable[[Any], Dataset], masked, values: list) -> ContentTemplate:
        """``builder``'s tree of ``masked`` (its sentinels standing for ``values``), checked against a second
        tree built with other sentinels: the two must differ exactly where a sentinel lies, each whole in an
        element of a :data:`_SLOT_VALUE` VR. A value the builder copied elsewhere, transformed or dropped
        raises :class:`TemplateError`."""
        root = builder(masked)
        twin = builder(masked_plan(masked, variant=1)[0])
        stand_ins = [{_sentinel(k, v, variant): k for k, v in enumerate(values)} for variant in (0, 1)]
        slots: dict[tuple[int, Any], int] = {}

        def slot(element, variant: int) -> int | None:
            if element.VR not in _SLOT_VALUE or element.VM != 1:
                return None
            value = float(element.value) if element.VR in ("DS", "FD") else str(element.value)
            return stand_ins[variant].get(value)

        def walk(node: Dataset, other: Dataset) -> None:
            if sorted(node.keys()) != sorted(other.keys()):
                raise TemplateError(f"the tree changes shape with its values ({', '.join(node.dir())})")
            for element in node:
                counterpart = other[element.tag]
                if element.VR == "SQ":
                    if len(element.value) != len(counterpart.value):
                        raise TemplateError(f"{element.keyword} changes length with the tree's values")
                    for item, other_item in zip(element.value, counterpart.value, strict=True):
                        walk(item, other_item)
                    continue
                k = slot(element, 0)
                if k is not None and slot(counterpart, 1) == k:
                    slots[(id(node), element.tag)] = k
                elif k is not None or element.value != counterpart.value:
                    raise TemplateError(f"{element.keyword} depends on the per-patient values otherwise than "
                                        "by holding one")

        walk(root, twin)
        missing = sorted(set(range(len(values))) - set(slots.values()))
        if missing:
            raise TemplateError(f"per-patient values {missing} of the plan are not in the builder's tree")
        return cls(root, slots)

    def filled(self, values: list) -> Dataset:
        """A new copy of the tree (no element shared with the template) with ``values`` in their places."""

        def copy(node: Dataset) -> Dataset:
            out = Dataset()
            for element in node:
                if element.VR == "SQ":
                    value = [copy(item) for item in element.value]
                else:
                    k = self.slots.get((id(node), element.tag))
                    value = element.value if k is None else _SLOT_VALUE[element.VR](values[k])
                out.add(DataElement(element.tag, element.VR, value))
            return out

        return copy(self.root)


class ContentTemplates:
    """The templates one builder made in this process, by the exact key of their masked plan (the oldest
    dropped past ``size``); ``built`` and ``reused`` count them. A plan whose template fails its check
    (:class:`TemplateError`) is remembered as failed: :meth:`filled` raises for it without building again."""

    def __init__(self, builder: Callable[[Any], Dataset], size: int = 32):
        self.builder = builder
        self.size = size
        self.built = 0
        self.reused = 0
        self._templates: dict[Any, ContentTemplate | TemplateError] = {}
        # an external Dask worker may run several threads: one builds or evicts at a time
        self._lock = threading.Lock()

    def filled(self, plan) -> Dataset:
        """The builder's tree of ``plan``: a copy of its template, with the plan's per-patient values."""
        masked, values = masked_plan(plan)
        key = exact_key(masked)
        with self._lock:
            template = self._templates.get(key)
            if template is None:
                try:
                    template = ContentTemplate.build(self.builder, masked, values)
                except TemplateError as error:   # remembered: the structure's next plan fails at once
                    log.warning("content template not usable (%s); this structure is built in full", error)
                    template = error
                if len(self._templates) >= self.size:
                    del self._templates[next(iter(self._templates))]
                self._templates[key] = template
                self.built += 1
            else:
                self.reused += 1
        if isinstance(template, TemplateError):
            raise TemplateError(str(template))
        return template.filled(values)   # a template is never changed once built: copies need no lock
