"""The feature registry (docs/method.md section 4): each per-tissue statistic's name, formula, unit and label.

A feature column is ``{modality}_{method}_{tissue}_{stat}``; ``stat`` is an entry of this registry.
Pass 2 (:func:`engine.batch.tasks.classify_and_measure`) computes every registered stat through its
formula, and the feature columns (:mod:`engine.contract`), the report's labels and units, QA and
the README's feature table read it; none keeps its own list (issue 21). Adding a stat is one
:func:`register` call: it then appears in features.csv, the imaging models' candidates, the report
and QA.

A formula sees what the classify kernel's one pass over the voxels gives per tissue (its voxel
count and the sum of its intensities, exact on both backends) and the sample's geometry; a stat
that needs more of the voxels (a percentile, say) needs a kernel reduction first.

Standard library only, like :mod:`engine.contract`, which reads it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

#: Placeholder in a stat's unit for the modality's intensity unit (HU for CT, signal for MRI).
INTENSITY = "{intensity}"


@dataclass(frozen=True)
class TissueMeasure:
    """One tissue of one patient, method and modality, as pass 2 measures it.

    Attributes
    ----------
    count : int
        Voxels of the tissue (in the window).
    total : float
        Sum of their intensities (HU for CT).
    voxel_mm3 : float
        Volume of one resampled voxel, mm³.
    window_voxels : int
        ROI voxels inside the intensity window (both tissues).
    """

    count: int
    total: float
    voxel_mm3: float
    window_voxels: int


@dataclass(frozen=True)
class FeatureStat:
    """One registered statistic.

    Attributes
    ----------
    name : str
        The column's last part (lowercase letters and digits: the column is split on ``_``).
    formula : callable
        ``formula(TissueMeasure) -> float`` (NaN where undefined).
    unit : str
        Unit of the stored value; :data:`INTENSITY` stands for the modality's intensity unit.
    label : str
        The reader's name (report axes and tables, QA headers).
    definition : str
        The formula in words (README, docs).
    display_unit, display_scale : str, float
        The unit the report's figures show and the factor from the stored unit (mm³ -> cm³: 0.001).
    """

    name: str
    formula: Callable[[TissueMeasure], float]
    unit: str
    label: str
    definition: str
    display_unit: str | None = None
    display_scale: float = 1.0


_REGISTRY: dict[str, FeatureStat] = {}


def register(stat: FeatureStat) -> FeatureStat:
    """Add a statistic (a new name of lowercase letters and digits)."""
    if not (stat.name.isascii() and stat.name.isalnum() and stat.name.islower()):
        raise ValueError(f"a stat name is lowercase letters and digits (it ends a feature column), got {stat.name!r}")
    if stat.name in _REGISTRY:
        raise ValueError(f"stat {stat.name!r} is registered already")
    _REGISTRY[stat.name] = stat
    return stat


def unregister(name: str) -> None:
    """Remove a statistic (tests that register one clean up with this)."""
    _REGISTRY.pop(name, None)


def _mean(m: TissueMeasure) -> float:
    return m.total / m.count if m.count else math.nan


def _volume(m: TissueMeasure) -> float:
    return m.count * m.voxel_mm3


def _percent(m: TissueMeasure) -> float:
    return 100.0 * m.count / m.window_voxels if m.window_voxels else math.nan


register(FeatureStat("mean", _mean, INTENSITY, "mean", "mean intensity of the tissue's voxels"))
register(FeatureStat("volume", _volume, "mm³", "volume", "tissue voxels x voxel volume", display_unit="cm³",
                     display_scale=1e-3))
register(FeatureStat("percent", _percent, "%", "percent", "100 x tissue voxels / ROI voxels in the window"))


def stat_names() -> tuple[str, ...]:
    """Every registered stat, in canonical (registration) order."""
    return tuple(_REGISTRY)


def registered() -> tuple[FeatureStat, ...]:
    return tuple(_REGISTRY.values())


def get(name: str) -> FeatureStat:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown feature stat {name!r}; registered: {', '.join(_REGISTRY)}") from None


def measure(m: TissueMeasure) -> dict[str, float]:
    """Every registered stat of one tissue: ``{stat: value}``."""
    return {name: float(stat.formula(m)) for name, stat in _REGISTRY.items()}


def unit(stat: str, intensity_unit: str) -> str:
    """The stored unit of ``stat`` (the modality's ``intensity_unit`` filled in)."""
    return get(stat).unit.replace(INTENSITY, intensity_unit)


def axis_label(stat: str, intensity_unit: str) -> str:
    """A figure axis: ``mean (HU)``, ``volume (cm³)``; the label alone without a unit."""
    entry = get(stat)
    shown = entry.display_unit or unit(stat, intensity_unit)
    return f"{entry.label} ({shown})" if shown else entry.label


def readme_table() -> str:
    """The README's feature table (a test keeps the README equal to it)."""
    lines = ["| stat | value | unit |", "|---|---|---|"]
    for stat in _REGISTRY.values():
        shown = stat.unit.replace(INTENSITY, "HU (CT) / signal (MRI)")
        lines.append(f"| `{stat.name}` | {stat.definition} | {shown} |")
    return "\n".join(lines)
