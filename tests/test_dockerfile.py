"""Dockerfile.cuda agrees with pyproject.toml and has the shape the deployment relies on.

The image cannot be built in CI (no Docker engine, no GPU), so its text is checked instead:
every package the Dockerfile pins must be allowed by pyproject's constraint for it, the [gpu]
extra is installed and each of its packages pinned, the container runs as a non-root user,
its HEALTHCHECK runs ``sarco --version`` and its entry point is ``sarco``. The checkers are
also run on mutated copies of the Dockerfile, so a check that can no longer fail is caught.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile.cuda"
PYPROJECT = ROOT / "pyproject.toml"

# pip options that take a value as the next token (when not written as --opt=value).
_PIP_VALUE_OPTIONS = {"-r", "--requirement", "-c", "--constraint", "-i", "--index-url", "--extra-index-url",
                      "-t", "--target", "-f", "--find-links", "--only-binary", "--no-binary", "--prefix",
                      "--root", "--platform", "--python-version", "--implementation", "--abi", "-e", "--editable",
                      "--progress-bar", "--cache-dir", "--src", "--upgrade-strategy", "--report"}


# ----------------------------------------------------------------------------- parsing
def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    result, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment line inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


def arg_defaults(text: str) -> dict[str, str]:
    defaults = {}
    for keyword, args in instructions(text):
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
    return defaults


def substitute(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), value)


def pip_install_arguments(text: str) -> list[str]:
    """Every positional argument of every ``pip install`` in a RUN, ARG defaults substituted."""
    variables = arg_defaults(text)
    found = []
    for keyword, args in instructions(text):
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|;|\|\|", substitute(args, variables)):
            tokens = shlex.split(command)
            if "pip" not in tokens and not any(t.endswith("/pip") for t in tokens):
                continue
            start = next((i for i, t in enumerate(tokens) if t == "pip" or t.endswith("/pip")), None)
            if start is None or tokens[start + 1:start + 2] != ["install"]:
                continue
            skip_next = False
            for token in tokens[start + 2:]:
                if skip_next:
                    skip_next = False
                elif token.startswith("-"):
                    skip_next = token in _PIP_VALUE_OPTIONS
                else:
                    found.append(token)
    return found


def pinned_requirements(text: str) -> list[Requirement]:
    """The named packages the Dockerfile installs with a version specifier."""
    requirements = []
    for argument in pip_install_arguments(text):
        if argument.startswith((".", "/")):
            continue
        requirement = Requirement(argument)
        if requirement.specifier:
            requirements.append(requirement)
    return requirements


def local_extras(text: str) -> set[str]:
    """Extras of this source tree installed by the Dockerfile (``.[gpu]`` -> {'gpu'})."""
    extras = set()
    for argument in pip_install_arguments(text):
        match = re.fullmatch(r"\.\[([^\]]*)\]", argument)
        if match:
            extras |= {e.strip() for e in match.group(1).split(",")}
    return extras


def pyproject_constraints(pyproject: dict) -> dict[str, SpecifierSet]:
    project = pyproject["project"]
    lines = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        lines.extend(extra)
    return {canonicalize_name(r.name): r.specifier for r in map(Requirement, lines)}


def _candidate_versions(requirement: Requirement) -> list[str]:
    """Versions a pin stands for: ``==X`` -> X; ``==X.*`` -> the first and a late release of X."""
    candidates = []
    for spec in requirement.specifier:
        version = spec.version
        if spec.operator in ("==", "===") and version.endswith(".*"):
            base = version[:-2]
            candidates += [base, f"{base}.999"]
        elif spec.operator in ("==", "===", "~=", ">="):
            candidates.append(version)
    return candidates


def pin_conflicts(dockerfile_text: str, pyproject: dict) -> list[str]:
    """Pins in the Dockerfile that pyproject's constraint for the same package rules out."""
    constraints = pyproject_constraints(pyproject)
    conflicts = []
    for requirement in pinned_requirements(dockerfile_text):
        allowed = constraints.get(canonicalize_name(requirement.name))
        if allowed is None:
            continue  # build tooling (pip) that the project does not constrain
        candidates = _candidate_versions(requirement)
        if not candidates or not any(allowed.contains(v, prereleases=True) for v in candidates):
            conflicts.append(f"Dockerfile pins {requirement} but pyproject.toml requires "
                             f"{requirement.name}{allowed}")
    return conflicts


def final_stage(text: str) -> list[tuple[str, str]]:
    """The instructions of the last build stage (what the image runs)."""
    parsed = instructions(text)
    last_from = max(i for i, (keyword, _) in enumerate(parsed) if keyword == "FROM")
    return parsed[last_from:]


def runtime_user(text: str) -> str | None:
    users = [args for keyword, args in final_stage(text) if keyword == "USER"]
    return users[-1] if users else None


def is_non_root(user: str | None) -> bool:
    if not user:
        return False
    name = user.split(":")[0]
    return name not in ("root", "0")


def exec_form(args: str) -> list[str] | None:
    try:
        value = json.loads(args)
    except ValueError:
        return None
    return value if isinstance(value, list) else None


def healthcheck_command(text: str) -> list[str] | None:
    checks = [args for keyword, args in final_stage(text) if keyword == "HEALTHCHECK"]
    if not checks:
        return None
    _, found, command = checks[-1].partition("CMD ")
    if not found:
        return None
    return exec_form(command.strip()) or shlex.split(command)


def entrypoint(text: str) -> list[str] | None:
    entries = [args for keyword, args in final_stage(text) if keyword == "ENTRYPOINT"]
    return exec_form(entries[-1]) if entries else None


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- the real files
def test_pins_agree_with_pyproject(dockerfile, pyproject):
    assert pinned_requirements(dockerfile), "the Dockerfile pins no package: the parser found no pip install"
    assert pin_conflicts(dockerfile, pyproject) == []


def test_installs_the_gpu_extra_with_every_package_pinned(dockerfile, pyproject):
    assert "gpu" in local_extras(dockerfile)
    gpu = {canonicalize_name(Requirement(line).name) for line in pyproject["project"]["optional-dependencies"]["gpu"]}
    pinned = {canonicalize_name(r.name) for r in pinned_requirements(dockerfile)}
    assert gpu <= pinned, f"GPU packages without a pin in Dockerfile.cuda: {sorted(gpu - pinned)}"


def test_base_image_is_a_full_cuda12_tag(dockerfile):
    variables = arg_defaults(dockerfile)
    images = [substitute(args.split()[0], variables) for keyword, args in instructions(dockerfile) if keyword == "FROM"]
    assert images
    for image in images:
        assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-(base|runtime|devel)-ubuntu\d\d\.\d\d", image), image


def test_runs_as_non_root(dockerfile):
    assert is_non_root(runtime_user(dockerfile)), runtime_user(dockerfile)


def test_healthcheck_runs_sarco_version(dockerfile):
    assert healthcheck_command(dockerfile) == ["sarco", "--version"]


def test_entrypoint_is_sarco(dockerfile):
    assert entrypoint(dockerfile) == ["sarco"]
    cmds = [exec_form(args) for keyword, args in final_stage(dockerfile) if keyword == "CMD"]
    assert cmds and cmds[-1] == ["--help"]


def test_parses_continuations_arg_substitution_and_pip_options():
    text = (
        'ARG V=1.2.3\n'
        'RUN apt-get update \\\n'
        '    # a comment inside a continuation\n'
        '    && python -m pip install --no-cache-dir --extra-index-url https://example.invalid/simple \\\n'
        '       ".[gpu,test]" "numpy==${V}" scipy\n'
    )
    assert pip_install_arguments(text) == [".[gpu,test]", "numpy==1.2.3", "scipy"]
    assert local_extras(text) == {"gpu", "test"}
    assert [str(r) for r in pinned_requirements(text)] == ["numpy==1.2.3"]


# ----------------------------------------------------------------------------- the checks can fail
def _mutate(text: str, old: str, new: str) -> str:
    assert old in text, f"mutation target {old!r} not in Dockerfile.cuda"
    return text.replace(old, new)


def test_detects_a_pin_outside_pyproject(dockerfile, pyproject):
    cupy_pin = arg_defaults(dockerfile)["CUPY_VERSION"]
    mutated = _mutate(dockerfile, f"CUPY_VERSION={cupy_pin}", "CUPY_VERSION=12.3.0")
    conflicts = pin_conflicts(mutated, pyproject)
    assert len(conflicts) == 1 and "cupy-cuda12x==12.3.0" in conflicts[0]


def test_detects_a_wildcard_pin_outside_pyproject(dockerfile, pyproject):
    rapids = arg_defaults(dockerfile)["RAPIDS_VERSION"]
    mutated = _mutate(dockerfile, f"RAPIDS_VERSION={rapids}", "RAPIDS_VERSION=23.12")
    names = sorted(c.split()[2] for c in pin_conflicts(mutated, pyproject))
    assert names == ["cucim-cu12==23.12.*", "cuml-cu12==23.12.*", "dask-cuda==23.12.*"]


def test_detects_a_missing_gpu_extra(dockerfile):
    assert "gpu" not in local_extras(_mutate(dockerfile, '".[gpu]"', '"."'))


@pytest.mark.parametrize("user", ["root", "0", "0:0"])
def test_detects_a_root_user(dockerfile, user):
    mutated = re.sub(r"^USER .*$", f"USER {user}", dockerfile, flags=re.MULTILINE)
    assert not is_non_root(runtime_user(mutated))


def test_detects_a_missing_user_healthcheck_and_entrypoint(dockerfile):
    stripped = "\n".join(line for line in dockerfile.splitlines()
                         if not line.startswith(("USER ", "HEALTHCHECK ", "ENTRYPOINT ")))
    assert runtime_user(stripped) is None
    assert healthcheck_command(stripped) is None
    assert entrypoint(stripped) is None


def test_detects_a_healthcheck_of_another_command(dockerfile):
    mutated = _mutate(dockerfile, 'CMD ["sarco", "--version"]', "CMD sarco --help")
    assert healthcheck_command(mutated) == ["sarco", "--help"]
