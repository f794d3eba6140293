"""The README's code-layout table is the tree: it names every module of engine/ and kernels/, and
every path it names exists (issue 28: the table had drifted from the rooms it describes)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _layout_rows() -> set[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Code layout", 1)[1].split("\n## ", 1)[0]
    named: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            named |= set(re.findall(r"`([^`]+)`", first_cell))
    return named


def _modules() -> set[str]:
    found = set()
    for folder in ("engine", "kernels"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".cu") and path.name != "__init__.py" and "__pycache__" not in path.parts:
                found.add(path.relative_to(ROOT).as_posix())
    return found


def test_the_layout_table_names_every_module():
    named = _layout_rows()
    missing = sorted(m for m in _modules() if m not in named)
    assert not missing, f"modules the README's code layout does not name: {missing}"


def test_every_path_the_layout_table_names_exists():
    gone = sorted(p for p in _layout_rows() if not (ROOT / p.rstrip("/")).exists())
    assert not gone, f"the README's code layout names paths that are not in the tree: {gone}"


def test_the_root_of_engine_holds_only_the_shared_modules():
    """engine/'s root keeps what every room shares (names, config, errors, the CLI, the study stage);
    the rest lives in rooms (issue 28: 21 modules side by side)."""
    root = sorted(p.name for p in (ROOT / "engine").glob("*.py"))
    assert root == ["__init__.py", "cli.py", "config.py", "contract.py", "errors.py", "study.py"]
