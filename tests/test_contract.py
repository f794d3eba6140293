"""#13: every name a producer and a consumer share is defined once, in engine/contract.py.

The contract module imports nothing heavy; no other module of the engine assigns a name the
contract owns (a copy is how "cv" and "cv_auc" drifted apart between the study and the report);
the habitat labels are the classify kernel's own codes.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import engine.contract as contract

ROOT = Path(__file__).resolve().parent.parent
CONTRACT_NAMES = {name for name in vars(contract) if name.isupper() and not name.startswith("_")}


def _top_level_assignments(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def test_no_module_restates_a_contract_name():
    restated = {}
    for path in sorted((ROOT / "engine").rglob("*.py")):
        if path.name == "contract.py":
            continue
        clash = _top_level_assignments(path) & CONTRACT_NAMES
        if clash:
            restated[str(path.relative_to(ROOT))] = sorted(clash)
    assert restated == {}, f"define these in engine/contract.py and import them: {restated}"


def test_the_scan_sees_a_restated_name(tmp_path):
    copy = tmp_path / "report.py"
    copy.write_text('TISSUES = ("fat", "muscle")\nTABLE_FILES: dict = {}\n', encoding="utf-8")
    assert _top_level_assignments(copy) & CONTRACT_NAMES == {"TISSUES", "TABLE_FILES"}


def test_the_contract_imports_only_the_standard_library():
    code = ("import sys; before = set(sys.modules); import engine.contract; "
            "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in "
            "('numpy', 'pandas', 'dask', 'distributed', 'SimpleITK', 'pydicom', 'scipy', 'kernels')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_habitat_labels_are_the_classify_kernels_codes():
    import numpy as np

    from kernels import FAT, MUSCLE, classify

    assert (contract.HABITAT_LABELS["muscle"], contract.HABITAT_LABELS["fat"]) == (MUSCLE, FAT)
    labels = classify(np.array([-100.0, 40.0], np.float32), [-30.0], fat_is="low")[0]
    assert labels.tolist() == [contract.HABITAT_LABELS["fat"], contract.HABITAT_LABELS["muscle"]]
    assert len(set(contract.HABITAT_LABELS.values())) == len(contract.HABITAT_LABELS)


def test_a_sample_saved_by_the_engine_has_the_contract_keys(tmp_path):
    import numpy as np

    from engine.measure.preprocess import Grid, RoiSample

    sample = RoiSample(np.zeros(3, np.float32), np.arange(3), np.ones(3, bool),
                       Grid((3, 1, 1), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),
                       np.zeros((1, 3), np.float32), 0)
    path = contract.sample_path(tmp_path, "P1", "ct")
    sample.save(path)
    with np.load(path) as archive:
        assert tuple(archive.files) == contract.SAMPLE_KEYS
