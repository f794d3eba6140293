"""The run-config schema: every file in configs/ loads; bad keys and values are named."""

from pathlib import Path

import pytest

from engine.config import Config, load_config
from engine.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert CONFIGS, "configs/ holds no YAML file"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_file_validates(path):
    assert isinstance(load_config(path), Config)


def test_default_yaml_states_the_schema_defaults():
    # The commented defaults users read must be the ones the engine uses.
    assert load_config(Path(__file__).resolve().parent.parent / "configs" / "default.yaml") == Config()


def test_paper_defaults():
    cfg = Config()
    assert cfg.preprocess.spacing_mm == (1.0, 1.0, 1.0)
    assert cfg.preprocess.ct.window == (-190.0, 150.0)
    assert cfg.preprocess.ct.n4 is False and cfg.preprocess.mri.n4 is True
    assert cfg.fit.ct.fat_is == "low" and cfg.fit.mri.fat_is == "high"
    assert cfg.fit.methods == ["otsu", "kmeans", "gmm", "fixed"]


@pytest.mark.parametrize(
    "yaml_text, key",
    [
        ("fit:\n  bogus: 1\n", "fit.bogus"),
        ("preprocess:\n  ct:\n    window: [150, -190]\n", "preprocess.ct.window"),
        ("fit:\n  ct:\n    fat_is: middle\n", "fit.ct.fat_is"),
        ("run:\n  backend: tpu\n", "run.backend"),
        ("fit:\n  methods: [otsu, otsu]\n", "fit.methods"),
        ("fit:\n  mri:\n    fixed: {fat_hu: [0, 1]}\n", "fit.mri.fixed"),
        ("preprocess:\n  spacing_mm: [1, 0, 1]\n", "preprocess.spacing_mm"),
        ("unknown_section: {}\n", "unknown_section"),
    ],
)
def test_bad_config_names_the_key(tmp_path, yaml_text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key
    assert key in str(info.value)


@pytest.mark.parametrize("text", ["run: !!python/object/apply:os.system ['echo pwned']\n",
                                  "run: !custom {backend: cpu}\n"])
def test_yaml_tags_are_refused(tmp_path, text):
    path = tmp_path / "tagged.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="tags are not allowed"):
        load_config(path)


def test_partial_file_merges_over_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("fit:\n  methods: [gmm]\n")
    cfg = load_config(path, overrides={"run": {"backend": "cpu"}})
    assert cfg.fit.methods == ["gmm"]
    assert cfg.fit.ct.fat_is == "low"
    assert cfg.run.backend == "cpu"


def test_partial_section_keeps_sibling_defaults(tmp_path):
    # Regression (found by the bad-input corpus): a partial modality block failed validation.
    path = tmp_path / "c.yaml"
    path.write_text("preprocess:\n  mri:\n    n4: false\n")
    cfg = load_config(path)
    assert cfg.preprocess.mri.n4 is False
    assert cfg.preprocess.mri.crop_margin_mm == Config().preprocess.mri.crop_margin_mm
