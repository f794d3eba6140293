"""Issue 21 item 5 (habits): what ruff and mypy cannot check about the code's own rules."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = "# lazy:"


def _function_level_imports(tree: ast.Module):
    """Each import statement inside a function, with the import statements right before it in its block."""
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for parent in ast.walk(function):
            for field in ("body", "orelse", "finalbody"):
                body = getattr(parent, field, None)
                if not isinstance(body, list):
                    continue
                block_start = None
                for statement in body:
                    if isinstance(statement, ast.Import | ast.ImportFrom):
                        block_start = block_start or statement
                        yield statement, block_start
                    else:
                        block_start = None


def unmarked_lazy_imports(source: str) -> list[int]:
    """Lines of function-level imports that carry no ``# lazy: <why>`` marker.

    The marker sits on the import's first line, or on a comment line right above a run of
    consecutive imports (it then covers the run).
    """
    lines = source.splitlines()
    bad = []
    for statement, block_start in _function_level_imports(ast.parse(source)):
        own = any(MARKER in lines[i] for i in range(statement.lineno - 1, statement.end_lineno))
        above = block_start.lineno >= 2 and lines[block_start.lineno - 2].strip().startswith(MARKER)
        if not (own or above):
            bad.append(statement.lineno)
    return sorted(set(bad))


def test_an_import_inside_a_function_says_why_it_is_lazy():
    """No import inside a function unless it is a deliberate lazy import of a heavy or optional
    package, and then it says so: ``# lazy: <why>``."""
    problems = []
    for path in sorted([*(ROOT / "engine").rglob("*.py"), *(ROOT / "kernels").rglob("*.py")]):
        for line in unmarked_lazy_imports(path.read_text(encoding="utf-8")):
            problems.append(f"{path.relative_to(ROOT)}:{line}")
    assert not problems, "function-level import without a '# lazy: <why>' marker (move it to the top): " + ", ".join(
        problems
    )


def test_the_lazy_marker_check_can_fail():
    source = (
        "import os\n\n"
        "def a():\n    import json\n    return json\n\n"
        "def b():\n    import cupy  # lazy: GPU only\n    return cupy\n\n"
        "def c():\n    # lazy: heavy\n    import scipy\n    import sklearn\n"
        "    x = 1\n    import yaml\n    return x\n\n"
        "def d():\n    if True:\n        from . import x\n    return x\n"
    )
    assert unmarked_lazy_imports(source) == [4, 16, 21]


def test_every_noqa_and_type_ignore_names_its_code():
    """A bare ``# noqa`` or ``# type: ignore`` silences everything on its line; each names the code."""
    bare = re.compile(r"#\s*noqa(?!:\s*[A-Z]+[0-9]+)|#\s*type:\s*ignore(?!\[)")
    problems = []
    for folder in ("engine", "kernels", "tests", "bench", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if bare.search(line) and path != Path(__file__).resolve():
                    problems.append(f"{path.relative_to(ROOT)}:{number}")
    assert not problems, ", ".join(problems)


MAX_FUNCTION_LINES = 100
#: Known to be longer, each with its owner: remove the entry when the function is split (none left).
LONG_FUNCTIONS_TO_SPLIT: set[str] = set()


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """(name, lines) of each function or method whose ``def`` to last line spans more than ``limit``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            if length > limit:
                found.append((node.name, length))
    return found


def test_no_function_is_longer_than_a_screen_or_two():
    """A function is one named step (STYLE.md); past 100 lines its steps want names (issue 28)."""
    problems = []
    for folder in ("engine", "kernels"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for name, length in long_functions(path.read_text(encoding="utf-8")):
                where = f"{path.relative_to(ROOT).as_posix()}:{name}"
                if where not in LONG_FUNCTIONS_TO_SPLIT:
                    problems.append(f"{where} ({length} lines)")
    assert not problems, "functions over 100 lines: " + ", ".join(problems)


def test_the_function_length_check_can_fail():
    body = "".join(f"    x{i} = {i}\n" for i in range(99))
    assert long_functions(f"def short():\n{body}") == []
    method_body = "".join(f"        x{i} = {i}\n" for i in range(100))
    assert long_functions(f"class A:\n    def long(self):\n{method_body}") == [("long", 101)]
