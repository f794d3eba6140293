"""thresholds.json as types: each modality's frozen fits, and the registry metadata that travels with them.

A method's fit is a set of class bounds on the intensity axis (N classes -> N - 1 ascending bounds,
as scikit-image's ``threshold_multiotsu`` returns them) with the tissue of each class, low to high.
Two-class methods (every method the kernels classify today) have one bound, ``threshold``; the fat
side follows from the classes. The entry also records what a reader needs without the engine's
registries (a run folder may be rendered or exported where a plug-in is not installed): the display
name, the algorithm family (DICOM CID 7162 keyword) and whether it is the clinical reference; the
file records the list of feature stats with their units and labels.

Files written before these keys existed still read: bounds from ``threshold``, classes from the
modality's ``fat_is``, display and family from the registry (or the method's own name and
histogram analysis for a method no longer registered).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.contract import SCANNERS_KEY, TISSUES
from engine.errors import ConfigError
from engine.measure import features as feature_registry
from engine.measure import methods as method_registry

#: Keys of a method's entry that this module writes (the rest is the fit's own detail).
_METHOD_KEYS = ("threshold", "bounds", "classes", "display", "family", "reference")
_TWO_CLASSES = {"low": ("fat", "muscle"), "high": ("muscle", "fat")}


def two_classes(fat_is: str) -> tuple[str, str]:
    """The tissues of the low and high class for a modality's fat side (``low``: fat is x <= t)."""
    try:
        return _TWO_CLASSES[fat_is]
    except KeyError:
        raise ValueError(f"fat_is is 'low' or 'high', got {fat_is!r}") from None


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _hu_range(value: Any) -> tuple[float, float] | None:
    """A recorded ``[low, high]`` HU range, or None where there is none."""
    if not value:
        return None
    low, high = value
    return float(low), float(high)


@dataclass(frozen=True)
class StatInfo:
    """A feature stat as the run folder records it (a registry ``FeatureStat`` without its formula)."""

    name: str
    unit: str
    label: str
    definition: str = ""
    display_unit: str | None = None
    display_scale: float = 1.0

    def stored_unit(self, intensity_unit: str) -> str:
        return self.unit.replace(feature_registry.INTENSITY, intensity_unit)

    def axis_label(self, intensity_unit: str) -> str:
        """A figure axis: ``mean (HU)``, ``volume (cm³)``."""
        shown = self.display_unit or self.stored_unit(intensity_unit)
        return f"{self.label} ({shown})" if shown else self.label

    def to_json(self) -> dict:
        return {"name": self.name, "unit": self.unit, "label": self.label, "definition": self.definition,
                "display_unit": self.display_unit, "display_scale": self.display_scale}

    @classmethod
    def from_json(cls, data: Mapping) -> StatInfo:
        return cls(str(data["name"]), str(data.get("unit", "")), str(data.get("label", data["name"])),
                   str(data.get("definition", "")), data.get("display_unit"), float(data.get("display_scale", 1.0)))


def registered_stats() -> tuple[StatInfo, ...]:
    """The stats this process has registered (built-ins and plug-ins), as the run folder records them."""
    return tuple(StatInfo(s.name, s.unit, s.label, s.definition, s.display_unit, s.display_scale)
                 for s in feature_registry.registered())


@dataclass(frozen=True)
class MethodFit:
    """One method's frozen fit on one modality.

    Attributes
    ----------
    name : str
        The method (feature columns, configs).
    bounds : tuple of float
        The N - 1 class bounds, ascending, in the modality's intensity unit; class ``k`` holds
        ``bounds[k-1] < x <= bounds[k]``.
    classes : tuple of str
        The tissue of each class, low to high intensity (N entries).
    display, family : str
        The reader's name; the DICOM CID 7162 algorithm family keyword.
    reference : bool
        The clinical reference (nothing fitted).
    details : mapping
        The rest of the fit's entry (iterations, means, ``vs_fixed_fat_bound_hu``, ...).
    """

    name: str
    bounds: tuple[float, ...]
    classes: tuple[str, ...]
    display: str
    family: str = "HistogramAnalysis"
    reference: bool = False
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if len(self.classes) != len(self.bounds) + 1:
            raise ValueError(f"method {self.name!r}: {len(self.classes)} classes need {len(self.classes) - 1} "
                             f"bounds, got {len(self.bounds)}")

    @property
    def threshold(self) -> float:
        """The one bound of a two-class fit (what the classify kernel applies)."""
        if len(self.bounds) != 1:
            raise ValueError(f"method {self.name!r} has {len(self.classes)} classes; the engine classifies "
                             "two (fat and muscle) per method")
        return float(self.bounds[0])

    @property
    def fat_is(self) -> str:
        """``low`` when fat is the low class of a two-class fit, else ``high``."""
        return "low" if self.classes[0] == "fat" else "high"

    @property
    def fitted(self) -> bool:
        """Whether every bound is a number (a failed fit records NaN/null)."""
        return all(b is not None and math.isfinite(b) for b in self.bounds)

    @property
    def vs_fixed_fat_bound_hu(self) -> float | None:
        """The threshold minus the fixed reference's fat bound (HU; CT's fitted methods), or None."""
        return _optional_float(self.details.get("vs_fixed_fat_bound_hu"))

    @property
    def fat_range_hu(self) -> tuple[float, float] | None:
        """The fixed reference's fat range ``fat_hu`` (low, high HU), or None for a method without one."""
        return _hu_range(self.details.get("fat_hu"))

    @property
    def muscle_range_hu(self) -> tuple[float, float] | None:
        """The fixed reference's muscle range ``muscle_hu`` (low, high HU), or None for a method without one."""
        return _hu_range(self.details.get("muscle_hu"))

    def recorded(self) -> dict:
        """The entry as thresholds.json records it: keys sorted, a missing bound as None (JSON null)."""
        entry = self.to_json()
        entry["bounds"] = [b if math.isfinite(b) else None for b in self.bounds]
        if entry["threshold"] is not None and not math.isfinite(entry["threshold"]):
            entry["threshold"] = None
        return dict(sorted(entry.items()))

    def to_json(self) -> dict:
        bounds = list(self.bounds)
        return {**self.details, "threshold": bounds[0] if len(bounds) == 1 else None, "bounds": bounds,
                "classes": list(self.classes), "display": self.display, "family": self.family,
                "reference": self.reference}


def method_record(name: str, fit: Mapping, fat_is: str) -> dict:
    """A method's thresholds.json entry: its fit's dict with the registry's metadata and its bounds added."""
    entry = method_registry.get(name)
    bounds = fit.get("bounds")
    bounds = [float(b) for b in bounds] if bounds is not None else [float(fit["threshold"])]
    classes = tuple(fit.get("classes") or two_classes(fat_is))
    if sorted(classes) != sorted(TISSUES):
        raise ConfigError("fit.methods", f"method {name!r} returned the classes {list(classes)}; the classify "
                                         f"kernels measure two per method, {' and '.join(TISSUES)}")
    details = {k: v for k, v in fit.items() if k not in _METHOD_KEYS}
    return MethodFit(name, tuple(bounds), classes, entry.display, entry.family, entry.reference,
                     details).to_json()


def _method_from_json(name: str, data: Mapping, fat_is: str) -> MethodFit:
    known = method_registry.get(name) if method_registry.is_method(name) else None
    raw_bounds = data.get("bounds")
    if raw_bounds is None:
        raw_bounds = [data.get("threshold")]
    bounds = tuple(math.nan if b is None else float(b) for b in raw_bounds)
    classes = tuple(data.get("classes") or two_classes(fat_is))
    return MethodFit(name, bounds, classes, str(data.get("display") or (known.display if known else name)),
                     str(data.get("family") or (known.family if known else "HistogramAnalysis")),
                     bool(data.get("reference", known.reference if known else False)),
                     {k: v for k, v in data.items() if k not in _METHOD_KEYS})


@dataclass(frozen=True)
class PooledHistogram:
    """A modality's pooled training histogram, the partial every fit finalises on.

    Attributes
    ----------
    counts : tuple of int
        Voxels per bin; bin ``k`` is centred on ``lo + k * bin_width`` (intensity unit).
    lo, hi : float
        The first and the last bin's centre, in the modality's intensity unit.
    bin_width : float
        The bins' width, in the modality's intensity unit.
    by_scanner : mapping of str to tuple of int
        Each training scanner's share of ``counts`` (same bins); empty for one scanner.
    """

    counts: tuple[int, ...]
    lo: float
    hi: float
    bin_width: float
    by_scanner: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def edges(self) -> np.ndarray:
        """The ``len(counts) + 1`` bin edges: ``lo - bin_width / 2 + k * bin_width``."""
        return self.lo - self.bin_width / 2 + self.bin_width * np.arange(len(self.counts) + 1)

    @classmethod
    def from_json(cls, data: Mapping) -> PooledHistogram:
        return cls(tuple(data["counts"]), float(data["lo"]), float(data.get("hi", math.nan)), float(data["bin_width"]),
                   {str(label): tuple(counts) for label, counts in (data.get("by_scanner") or {}).items()})


@dataclass(frozen=True)
class TrainingScanner:
    """One scanner of a modality's training cohort and, for standardised MRI, its series' scales.

    Attributes
    ----------
    label : str
        The scanner as its headers name it (``Philips Ingenia 1.5 T``).
    n_patients : int or None
        Training patients scanned on it (None where the file does not say).
    scale_median : float or None
        Median standardisation scale of its series (None without standardisation).
    scale_range : tuple of float
        (min, max) of those scales; empty without standardisation.
    """

    label: str
    n_patients: int | None = None
    scale_median: float | None = None
    scale_range: tuple[float, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping) -> TrainingScanner:
        return cls(str(data.get("label", "")), _optional_int(data.get("n_patients")),
                   _optional_float(data.get("scale_median")),
                   tuple(float(v) for v in (data.get("scale_range") or ())))


@dataclass(frozen=True)
class BimodalityDiagnostic:
    """Whether a modality's pooled histogram holds two tissues: a two-component Gaussian mixture on it.

    Attributes
    ----------
    likely_one_tissue : bool
        The mixture's verdict: one tissue (a fitted split would cut it).
    message : str
        The verdict in words, as the run's notes say it.
    ashman_d : float or None
        Ashman's D of the two components (> 2 is a clean split; Ashman et al. 1994).
    means, variances, weights : tuple of float
        The two components' means and variances (intensity unit, unit²) and weights.
    """

    likely_one_tissue: bool = False
    message: str = ""
    ashman_d: float | None = None
    means: tuple[float, ...] = ()
    variances: tuple[float, ...] = ()
    weights: tuple[float, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping) -> BimodalityDiagnostic:
        def floats(key: str) -> tuple[float, ...]:
            return tuple(float(v) for v in (data.get(key) or ()))

        return cls(bool(data.get("likely_one_tissue")), str(data.get("message") or ""),
                   _optional_float(data.get("ashman_d")), floats("means"), floats("variances"), floats("weights"))


@dataclass(frozen=True)
class ModalityThresholds:
    """One modality's entry of thresholds.json: the fat side, unit, the fits and what they were fitted on.

    Attributes
    ----------
    modality, fat_is, unit : str
        ``ct``/``mri``; ``low`` or ``high``; ``HU`` or ``signal``.
    methods : mapping of str to MethodFit
        The fits, in thresholds.json order.
    diagnostic : BimodalityDiagnostic or None
        None where the file records none.
    histogram : PooledHistogram or None
        None where the file records none.
    n_patients, n_voxels : int or None
        Training patients and voxels of the pooled histogram (None where the file does not say).
    scanners : tuple of TrainingScanner
        The training cohort's scanners.
    standardize : str or None
        The MRI intensity standardisation (``reference``, ``none``); None for CT and older files.
    """

    modality: str
    fat_is: str
    unit: str
    methods: Mapping[str, MethodFit]
    diagnostic: BimodalityDiagnostic | None = None
    histogram: PooledHistogram | None = None
    n_patients: int | None = None
    n_voxels: int | None = None
    scanners: tuple[TrainingScanner, ...] = ()
    standardize: str | None = None

    def values(self) -> dict[str, float]:
        """method -> its (two-class) threshold, in thresholds.json order."""
        return {name: fit.threshold for name, fit in self.methods.items()}

    @classmethod
    def from_json(cls, modality: str, data: Mapping) -> ModalityThresholds:
        fat_is = str(data.get("fat_is") or ("low" if modality == "ct" else "high"))
        methods = {name: _method_from_json(name, fit, fat_is) for name, fit in (data.get("methods") or {}).items()}
        diagnostic, histogram = data.get("diagnostic"), data.get("histogram")
        return cls(modality, fat_is, str(data.get("unit") or ("HU" if modality == "ct" else "signal")), methods,
                   BimodalityDiagnostic.from_json(diagnostic) if isinstance(diagnostic, Mapping) else None,
                   PooledHistogram.from_json(histogram) if histogram else None,
                   _optional_int(data.get("n_patients")), _optional_int(data.get("n_voxels")),
                   tuple(TrainingScanner.from_json(s) for s in (data.get(SCANNERS_KEY) or ())),
                   None if data.get("standardize") is None else str(data["standardize"]))


@dataclass(frozen=True)
class Thresholds:
    """thresholds.json (or a model bundle's ``thresholds``): every fitted modality and the stat list."""

    modalities: Mapping[str, ModalityThresholds]
    stats: tuple[StatInfo, ...]
    engine_version: str = ""

    def __contains__(self, modality: str) -> bool:
        return modality in self.modalities

    def __getitem__(self, modality: str) -> ModalityThresholds:
        return self.modalities[modality]

    def stat_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stats)

    def stat(self, name: str) -> StatInfo:
        for info in self.stats:
            if info.name == name:
                return info
        raise KeyError(f"the run folder records no feature stat {name!r}; it has {', '.join(self.stat_names())}")

    @classmethod
    def from_json(cls, data: Mapping) -> Thresholds:
        """Parse a thresholds.json mapping; a file without a ``stats`` list (older engines) gets this
        process's registered stats."""
        modalities = {m: ModalityThresholds.from_json(m, entry) for m, entry in (data.get("modalities") or {}).items()}
        stats = tuple(StatInfo.from_json(s) for s in data["stats"]) if data.get("stats") else registered_stats()
        return cls(modalities, stats, str(data.get("engine_version") or ""))
