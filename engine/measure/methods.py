"""The fit-method registry (docs/method.md section 3): one entry per method, read by every consumer.

An entry names the method, its display name, the fit (a kernel function adapted to the pooled
histogram), the pydantic model of its options (``fit.<method>`` in a config file), the modalities
it applies to and whether it is the clinical reference (nothing fitted). The config schema, the
cohort fit, the feature columns, the report and QA read this registry; none of them keeps its own
list (issue 21). ``kernels/`` stays free of engine imports: the entries point at kernel functions.

The fat side is not a method's: it is the modality's (``fit.<modality>.fat_is``), because the
classify kernel applies every method's threshold of a modality in one pass with one ``fat_is``.

Adding a method is one :func:`register` call with its test; ``fit.methods`` must then list it
(only entries with ``default=True`` run without being listed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from engine.contract import FIXED, MODALITIES
from kernels import gmm_threshold, kmeans_threshold, otsu_threshold


class MethodOptions(BaseModel):
    """Options of a method (``fit.<method>`` in a config): strict, frozen, empty by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class KMeansOptions(MethodOptions):
    max_iter: int = Field(300, gt=0)
    tol: float = Field(1e-4, gt=0)


class GMMOptions(MethodOptions):
    max_iter: int = Field(100, gt=0)
    tol: float = Field(1e-3, gt=0)
    reg_covar: float = Field(1e-6, ge=0)


#: Algorithm families of DICOM CID 7162 (the keywords of ``pydicom.sr.codedict.codes.cid7162``): a method's
#: ``family``, written into thresholds.json, is what the DICOM-SEG's Algorithm Identification states.
ALGORITHM_FAMILIES = ("AdaptiveFiltering", "ArtificialIntelligence", "ClusterAnalysis", "DeformableModels",
                      "EdgeDetection", "HistogramAnalysis", "ManualProcessing", "MorphologicalOperations",
                      "MultiScaleResolutionFiltering", "MultispectralProcessing", "NeighborhoodAnalysis")

#: ``fit(counts, centers, options, cfg, modality) -> dict``: the method's entry of thresholds.json
#: (JSON-ready, with a ``threshold`` key; low class ``x <= threshold``); ValueError if it cannot fit.
FitFunction = Callable[[np.ndarray, np.ndarray, Any, Any, str], dict]


@dataclass(frozen=True)
class FitMethod:
    """One registered method.

    Attributes
    ----------
    name : str
        The name in configs, feature columns and thresholds.json (``[a-z0-9]+``, no underscore:
        a feature column is ``{modality}_{method}_{tissue}_{stat}``).
    display : str
        The name a reader sees (``K-means``).
    fit : FitFunction
        The fit on the pooled histogram.
    options : type[MethodOptions]
        Its options' model; validated from ``fit.<name>`` of the config.
    modalities : tuple of str
        The modalities it applies to.
    reference : bool
        True for the clinical reference (nothing fitted; the ``*_vs_fixed_percent`` columns compare
        every other method with it).
    default : bool
        Whether ``fit.methods`` lists it by default.
    family : str
        Its algorithm family, a keyword of :data:`ALGORITHM_FAMILIES` (DICOM CID 7162), for the SEG.
    """

    name: str
    display: str
    fit: FitFunction
    options: type[MethodOptions] = MethodOptions
    modalities: tuple[str, ...] = MODALITIES
    reference: bool = False
    default: bool = True
    family: str = "HistogramAnalysis"


def _otsu(counts, centers, options, cfg, modality) -> dict:
    return dataclasses.asdict(otsu_threshold(counts, centers))


def _kmeans(counts, centers, options: KMeansOptions, cfg, modality) -> dict:
    return dataclasses.asdict(kmeans_threshold(counts, centers, seed=cfg.fit.seed, max_iter=options.max_iter,
                                               tol=options.tol))


def _gmm(counts, centers, options: GMMOptions, cfg, modality) -> dict:
    return dataclasses.asdict(gmm_threshold(counts, centers, max_iter=options.max_iter, tol=options.tol,
                                            reg_covar=options.reg_covar))


def _fixed(counts, centers, options, cfg, modality) -> dict:
    """The clinical HU ranges, nothing fitted; ``threshold`` is the one fat bound the kernels apply."""
    fixed = cfg.modality_fit(modality).fixed
    return {"threshold": fixed.fat_bound_hu, "fat_hu": list(fixed.fat_hu), "muscle_hu": list(fixed.muscle_hu),
            "method": FIXED}


_REGISTRY: dict[str, FitMethod] = {}


def register(method: FitMethod) -> FitMethod:
    """Add a method (its name must be new, lowercase letters and digits)."""
    if not (method.name.isascii() and method.name.isalnum() and method.name.islower()):
        raise ValueError(f"a method name is lowercase letters and digits (it is part of feature columns), "
                         f"got {method.name!r}")
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} is registered already")
    unknown = set(method.modalities) - set(MODALITIES)
    if unknown:
        raise ValueError(f"method {method.name!r}: unknown modality {sorted(unknown)}")
    if method.family not in ALGORITHM_FAMILIES:
        raise ValueError(f"method {method.name!r}: family {method.family!r} is not a DICOM CID 7162 algorithm "
                         f"family; expected one of {', '.join(ALGORITHM_FAMILIES)}")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method (tests that register one clean up with this)."""
    _REGISTRY.pop(name, None)


register(FitMethod("otsu", "Otsu", _otsu))
register(FitMethod("kmeans", "K-means", _kmeans, KMeansOptions, family="ClusterAnalysis"))
register(FitMethod("gmm", "GMM", _gmm, GMMOptions))
# CT only: MRI signal has no absolute unit, so a fixed range has no meaning there.
register(FitMethod(FIXED, "Fixed HU", _fixed, modalities=("ct",), reference=True))


def registered() -> tuple[FitMethod, ...]:
    """Every registered method, in registration (canonical) order."""
    return tuple(_REGISTRY.values())


def method_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def default_methods() -> list[str]:
    """``fit.methods`` when a config does not list them."""
    return [m.name for m in _REGISTRY.values() if m.default]


def is_method(name: str) -> bool:
    return name in _REGISTRY


def get(name: str) -> FitMethod:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown fit method {name!r}; registered: {', '.join(_REGISTRY)}") from None


def display_name(name: str) -> str:
    """The reader's name of a method (its own name if it is not registered: a run folder of a plug-in)."""
    method = _REGISTRY.get(name)
    return method.display if method else name


def method_order(names: Iterable[str]) -> list[str]:
    """``names`` in the registry's order, names it does not know last (in their given order)."""
    names = list(names)
    return [m for m in _REGISTRY if m in names] + [m for m in names if m not in _REGISTRY]


def modality_methods(modality: str, methods: Iterable[str]) -> list[str]:
    """The ``methods`` that apply to ``modality`` (``fixed`` is CT only), in the given order."""
    return [m for m in methods if modality in (_REGISTRY[m].modalities if m in _REGISTRY else MODALITIES)]
