"""Run configuration: one typed schema for every YAML file in ``configs/`` and every CLI override.

The schema is strict: an unknown key or a bad value stops the run before any work starts,
with a :class:`~engine.errors.ConfigError` naming the dotted key and the value. YAML is
parsed with ``yaml.safe_load`` and explicit tags (``!!python/...``, custom ``!tag``) are
refused outright, so a config file can never execute code.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from engine.contract import (
    ANCHOR_STRUCTURES,
    FIXED,
    MODALITIES,
    SEGMENTATION_MUSCLES,
    TOTALSEGMENTATOR_TOTAL_V2,
    VERTEBRAE,
    vertebra_structure,
)
from engine.errors import ConfigError
from engine.inputs.userfiles import check_scheduler_address
from engine.measure import methods as fit_methods
from engine.measure.plugins import check_module_name, import_plugins


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _no_series_description() -> dict[str, str | None]:
    return {"ct": None, "mri": None}


class MaskSides(_Strict):
    """``io.mask_sides``: the label values of a hand ROI's left- and right-named muscles (issue 30)."""

    left: list[int] = Field(min_length=1)
    right: list[int] = Field(min_length=1)

    @model_validator(mode="after")
    def _apart(self):
        both = sorted(set(self.left) & set(self.right))
        if both:
            raise ValueError(f"label(s) {both} named both left and right")
        return self


class IOConfig(_Strict):
    series_description: dict[str, str | None] = Field(default_factory=_no_series_description)
    mask_labels: list[int] | None = None
    mask_segments: list[str] | None = None
    mask_sides: MaskSides | None = None
    max_voxels_per_volume: int = Field(400_000_000, gt=0)
    max_files_per_series: int = Field(5_000, gt=0)
    data_root: str | None = None

    @field_validator("series_description")
    @classmethod
    def _known_modalities(cls, value):
        unknown = set(value) - set(MODALITIES)
        if unknown:
            raise ValueError(f"unknown modality {sorted(unknown)}; expected {list(MODALITIES)}")
        for modality, pattern in value.items():
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(f"{modality}: '{pattern}' is not a regular expression ({exc})") from None
        return {m: value.get(m) for m in MODALITIES}


class ModalityPreprocess(_Strict):
    window: tuple[float, float] | None
    n4: bool
    crop_margin_mm: float = Field(gt=0)
    n4_shrink_factor: int = Field(4, ge=1, le=16)
    n4_iterations: list[int] = Field(default_factory=lambda: [50, 50, 50, 50], min_length=1)
    n4_convergence_threshold: float = Field(1e-6, gt=0)

    @field_validator("window")
    @classmethod
    def _ordered(cls, value):
        if value is not None and not value[0] < value[1]:
            raise ValueError(f"window must be [low, high] with low < high, got {list(value)}")
        return value


class MriPreprocess(ModalityPreprocess):
    """MRI adds intensity standardisation (issue 16; :mod:`engine.measure.standardize`).

    ``reference`` (default, issue 24): each series is scaled so that a reference tissue found
    outside the ROI (``reference``: ``auto`` picks CSF in the spinal canal, else subcutaneous
    fat; ``csf`` / ``subcutaneous_fat`` force one) lands on ``standardize_target``. ``none``
    reproduces the study: N4 only, so pooled thresholds mix the scanners' arbitrary scales.
    """

    standardize: Literal["none", "reference"] = "reference"
    standardize_target: float = Field(1000.0, gt=0)
    reference: Literal["auto", "csf", "subcutaneous_fat"] = "auto"
    #: A series whose reference is doubtful (flagged): ``error`` = an errors.csv row, not measured;
    #: ``keep`` = measured with its flag but left out of the cohort fit.
    doubtful_reference: Literal["error", "keep"] = "error"


class PreprocessConfig(_Strict):
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    ct: ModalityPreprocess = ModalityPreprocess(window=(-190.0, 150.0), n4=False, crop_margin_mm=5.0)
    mri: MriPreprocess = MriPreprocess(window=None, n4=True, crop_margin_mm=20.0, n4_shrink_factor=8,
                                       n4_iterations=[50, 50])

    @field_validator("spacing_mm")
    @classmethod
    def _positive(cls, value):
        if any(s <= 0 for s in value):
            raise ValueError(f"spacing must be positive, got {list(value)}")
        return value


class FixedRanges(_Strict):
    """The clinical reference's fixed Hounsfield ranges (Alberta protocol, Slice-O-Matic).

    Voxels are floats after linear resampling, so the gap between ``fat_hu[1]`` and
    ``muscle_hu[0]`` needs a rule: the split is its midpoint, fat ``x <= (fat_hu[1] +
    muscle_hu[0]) / 2`` (-29.5 HU by default), i.e. the integer ranges applied to the voxel
    rounded to the nearest HU, and the same ``x <= t`` rule the classify kernel applies to
    every fitted threshold. The outer bounds are the CT window's job and must equal it.
    """

    fat_hu: tuple[float, float] = (-190.0, -30.0)
    muscle_hu: tuple[float, float] = (-29.0, 150.0)

    @field_validator("fat_hu", "muscle_hu")
    @classmethod
    def _ordered(cls, value):
        if not value[0] < value[1]:
            raise ValueError(f"a range must be [low, high] with low < high, got {list(value)}")
        return value

    @property
    def fat_bound_hu(self) -> float:
        """The one fixed fat bound (issue 21): fat ``x <= fat_bound_hu``, what the kernels apply, what every
        fitted threshold is compared with, what the report shows."""
        return (self.fat_hu[1] + self.muscle_hu[0]) / 2.0


class ModalityFit(_Strict):
    fat_is: Literal["low", "high"]
    bin_width: float = Field(1.0, gt=0)
    fixed: FixedRanges | None = None


class MriFit(ModalityFit):
    @field_validator("fixed")
    @classmethod
    def _no_fixed_unit(cls, value):
        if value is not None:
            raise ValueError("MRI signal has no absolute unit, so fixed ranges do not exist for MRI "
                             "(the fixed method runs on CT only); remove this key")
        return value


class FitConfig(_Strict):
    """``fit``: the methods to run, their options (``fit.<method>``, each method's own model in
    :mod:`engine.measure.methods`) and each modality's bins, fat side and fixed ranges."""

    # extra keys are the registered methods' options, checked against each method's model below
    model_config = ConfigDict(extra="allow", frozen=True)

    methods: list[str] = Field(default_factory=fit_methods.default_methods, min_length=1)
    seed: int = 0
    # "cuml" was accepted but never read (issue 15): only the histogram fit exists.
    kmeans_impl: Literal["histogram"] = "histogram"
    ct: ModalityFit = ModalityFit(fat_is="low", fixed=FixedRanges())
    mri: MriFit = MriFit(fat_is="high")

    @field_validator("methods")
    @classmethod
    def _registered_once(cls, value):
        unknown = [m for m in value if not fit_methods.is_method(m)]
        if unknown:
            raise ValueError(f"unknown method {unknown[0]!r}; expected some of {list(fit_methods.method_names())}")
        if len(set(value)) != len(value):
            raise ValueError(f"methods are listed twice: {value}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _options_of_every_method(cls, data):
        # every registered method's options are present (defaults filled), so a dump states them all
        if isinstance(data, dict):
            data = {**{m.name: {} for m in fit_methods.registered() if m.options.model_fields}, **data}
        return data

    @model_validator(mode="after")
    def _method_options(self):
        extra = self.__pydantic_extra__ if self.__pydantic_extra__ is not None else {}
        for key, value in list(extra.items()):
            if not fit_methods.is_method(key):
                raise PydanticCustomError("extra_forbidden", "unknown key", {"key": key})
            model = fit_methods.get(key).options
            if isinstance(value, model):
                continue
            try:
                extra[key] = model.model_validate(value)
            except ValidationError as exc:
                first = exc.errors()[0]
                inner = ".".join(str(part) for part in first["loc"])
                raise PydanticCustomError(first["type"], first["msg"],
                                          {"key": f"{key}.{inner}" if inner else key,
                                           "value": first.get("input")}) from None
        return self

    def options(self, method: str) -> fit_methods.MethodOptions:
        """The validated options of ``method`` (``fit.<method>``)."""
        extra = self.__pydantic_extra__ or {}
        return extra.get(method) or fit_methods.get(method).options()


class StatsConfig(_Strict):
    enabled: bool = True
    train_fraction: float = Field(0.6, gt=0, lt=1)
    split_seed: int = 42
    cv_folds: int = Field(5, ge=2)
    cv_repeats: int = Field(20, ge=1)
    chance_permutations: int = Field(99, ge=0)
    chance_repeats: int = Field(5, ge=1)
    p_enter: float = Field(0.05, gt=0, lt=1)
    p_remove: float = Field(0.10, gt=0, lt=1)
    clinical_columns: list[str] | None = None


Muscle = Literal["paraspinal", "psoas"]


def _both_muscles() -> list[Muscle]:
    return ["paraspinal", "psoas"]


class DeriveConfig(_Strict):
    """``roi.derive``: the ROI from a whole-body segmentation when a patient has none (issue 17)."""

    preset: Literal["totalsegmentator"] | None = "totalsegmentator"
    labels: dict[str, int] = Field(default_factory=dict)
    level: str = "L3/L4"
    thickness_mm: float = Field(20.0, gt=0)
    muscles: list[Muscle] = Field(default_factory=_both_muscles, min_length=1)
    level_checks: Literal["error", "warn"] = "error"

    @field_validator("level")
    @classmethod
    def _level(cls, value):
        from engine.io.segmentation import parse_level  # lazy: SimpleITK, scipy.ndimage

        return parse_level(value).name

    @field_validator("labels")
    @classmethod
    def _known_structures(cls, value):
        known = set(SEGMENTATION_MUSCLES) | {vertebra_structure(v) for v in VERTEBRAE} | set(ANCHOR_STRUCTURES)
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown structure {unknown}; expected TotalSegmentator names such as vertebrae_L3, "
                             "autochthon_left, iliopsoas_right")
        return value

    def label_table(self) -> dict[str, int]:
        """Structure name -> label value: the preset's, with ``labels`` over it."""

        return {**(TOTALSEGMENTATOR_TOTAL_V2 if self.preset == "totalsegmentator" else {}), **self.labels}


class RoiConfig(_Strict):
    derive: DeriveConfig = DeriveConfig()


class RunConfig(_Strict):
    backend: Literal["cpu", "gpu", "auto"] = "auto"
    workers: int | None = Field(None, ge=1)
    scheduler: str | None = None
    strict: bool = False
    habitats: bool = True
    report: bool = True
    qa: bool = True
    exclude: str | None = None
    plugins: list[str] = Field(default_factory=list)

    @field_validator("plugins")
    @classmethod
    def _module_names(cls, value):
        return [check_module_name(name) for name in value]

    @field_validator("scheduler")
    @classmethod
    def _scheduler_address(cls, value):
        # the same check as --scheduler (issue 21: a config file's address was used unchecked)
        return None if value is None else check_scheduler_address(value)


class PacsConfig(_Strict):
    """``sarco fetch`` and ``sarco export``: bounds on every wait for a peer, and what a dead one costs."""

    connect_timeout_s: float = Field(5.0, gt=0)
    timeout_s: float = Field(30.0, gt=0)
    breaker_failures: int = Field(3, ge=1)
    associations: int = Field(4, ge=1)


class Config(_Strict):
    version: Literal[1] = 1
    io: IOConfig = IOConfig()
    roi: RoiConfig = RoiConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    fit: FitConfig = Field(default_factory=FitConfig)
    stats: StatsConfig = StatsConfig()
    run: RunConfig = RunConfig()
    pacs: PacsConfig = PacsConfig()

    def modality_preprocess(self, modality: str) -> ModalityPreprocess:
        return getattr(self.preprocess, modality)

    def modality_fit(self, modality: str) -> ModalityFit:
        return getattr(self.fit, modality)

    def modality_methods(self, modality: str) -> list[str]:
        """The configured methods that apply to ``modality`` (``fixed`` is CT only)."""
        return fit_methods.modality_methods(modality, self.fit.methods)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def with_overrides(self, overrides: dict[str, Any] | None) -> Config:
        """This config with a nested mapping of changes merged over it, validated again."""
        return validate(_deep_merge(self.to_dict(), overrides or {})) if overrides else self

    def preprocess_key(self, modality: str) -> dict[str, Any]:
        """The part of the config that determines a modality's ROI sample (cache key)."""
        return {
            "spacing_mm": list(self.preprocess.spacing_mm),
            "preprocess": self.modality_preprocess(modality).model_dump(mode="json"),
            "io": self.io.model_dump(mode="json", exclude={"data_root", "max_files_per_series"}),
            "derive": self.roi.derive.model_dump(mode="json"),
        }


def _reject_tags(text: str, source: str) -> None:
    for token in yaml.scan(text):
        if isinstance(token, yaml.TagToken):
            line = token.start_mark.line + 1
            raise ConfigError("<file>", f"{source} line {line}: YAML tags are not allowed in configs")


def _deep_merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def validate(raw: dict[str, Any]) -> Config:
    """Validate a plain mapping against the schema; raise ConfigError naming the first bad key."""
    if not isinstance(raw, dict):
        raise ConfigError("<root>", f"a config must be a mapping of sections, got {type(raw).__name__}")
    _import_plugins(raw)
    try:
        cfg = Config.model_validate(_migrate(raw))
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(part) for part in first["loc"]]
        context = first.get("ctx") or {}
        if "key" in context:  # raised by a model validator on an extra key (a method's options)
            loc.append(str(context["key"]))
        key = ".".join(loc) or "<root>"
        if first["type"] == "extra_forbidden":
            raise ConfigError(key, f"unknown key; {_known_keys(loc[:-1])}") from None
        value = context.get("value", first.get("input"))
        raise ConfigError(key, f"{first['msg']} (got {value!r})") from None
    _check_fixed_ranges(cfg)
    return cfg


def _import_plugins(raw: dict[str, Any]) -> None:
    """Import ``run.plugins`` (and the installed plug-ins) before the schema checks ``fit.methods``
    against the registries they extend; a malformed list is left to the schema's message."""
    run = raw.get("run")
    names = run.get("plugins") if isinstance(run, dict) else None
    names = names if isinstance(names, list) else []
    import_plugins([n for n in names if isinstance(n, str) and _is_module_name(n)])


def _is_module_name(name: str) -> bool:
    try:
        check_module_name(name)
    except ValueError:
        return False
    return True


def _known_keys(section: list[str]) -> str:
    """The keys a section accepts, for an unknown-key message: the user needs no file to look them up
    (the wheel ships no configs/ folder)."""
    model: Any = Config
    for part in section:
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        annotation = getattr(field, "annotation", None)
        if annotation is None or not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    else:
        keys = list(model.model_fields)
        if model is FitConfig:
            keys += [m.name for m in fit_methods.registered() if m.options.model_fields]
        where = ".".join(section) or "the top level"
        return f"{where} accepts: {', '.join(keys)}"
    return "check the spelling"


#: Options of the fits that were flat keys of ``fit`` before the method registry (issue 21); a config
#: or a model.json written then still loads.
_FLAT_FIT_OPTIONS = {"kmeans_max_iter": ("kmeans", "max_iter"), "kmeans_tol": ("kmeans", "tol"),
                     "gmm_max_iter": ("gmm", "max_iter"), "gmm_tol": ("gmm", "tol"),
                     "gmm_reg_covar": ("gmm", "reg_covar")}


def _migrate(raw: dict[str, Any]) -> dict[str, Any]:
    fit = raw.get("fit")
    if not isinstance(fit, dict) or not set(fit) & set(_FLAT_FIT_OPTIONS):
        return raw
    fit = dict(fit)
    for old, (method, option) in _FLAT_FIT_OPTIONS.items():
        if old in fit:
            nested = fit.get(method)
            fit[method] = {**(nested if isinstance(nested, dict) else {}), option: fit.pop(old)}
    return {**raw, "fit": fit}


def _check_fixed_ranges(cfg: Config) -> None:
    """The fixed method classifies the CT window's voxels: its ranges must cover it, nothing more."""
    fixed, window = cfg.fit.ct.fixed, cfg.preprocess.ct.window
    if FIXED not in cfg.fit.methods:
        return
    if fixed is None:
        raise ConfigError("fit.ct.fixed", "the fixed method is listed in fit.methods but has no ranges")
    if window is None or (fixed.fat_hu[0], fixed.muscle_hu[1]) != tuple(window):
        raise ConfigError("fit.ct.fixed", f"the fixed ranges must span the CT window {window}: fat_hu starts "
                                          f"at its low end and muscle_hu ends at its high end (got fat_hu "
                                          f"{list(fixed.fat_hu)}, muscle_hu {list(fixed.muscle_hu)})")
    if not fixed.fat_hu[1] < fixed.muscle_hu[0]:
        raise ConfigError("fit.ct.fixed", f"fat_hu must end below the start of muscle_hu (got fat_hu "
                                          f"{list(fixed.fat_hu)}, muscle_hu {list(fixed.muscle_hu)})")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load a YAML config (default: ``configs/default.yaml`` semantics) and apply overrides.

    A user file only needs the keys it changes: it is merged over the schema defaults.
    ``overrides`` is a nested mapping (the CLI's ``--backend`` becomes ``{"run": {"backend": ...}}``).
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError("<file>", f"config file not found: {path}")
        text = path.read_text(encoding="utf-8-sig")
        _reject_tags(text, str(path))
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError("<file>", f"{path} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError("<root>", f"{path} must hold a mapping of sections, got {type(loaded).__name__}")
        raw = loaded
    _import_plugins(_deep_merge(raw, overrides or {}))  # a plug-in's default method joins the defaults below
    # Merge over the schema's defaults, not just over the file, so a partial section
    # (preprocess: {mri: {n4: false}}) keeps the defaults of its siblings.
    raw = _deep_merge(Config().model_dump(mode="json"), raw)
    if overrides:
        raw = _deep_merge(raw, overrides)
    return validate(raw)
