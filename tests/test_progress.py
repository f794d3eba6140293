"""#13: a nightly job sees progress, and Dask's INFO chatter only with -v.

``sarco run`` on a local cluster with stderr piped (not a terminal, as under cron or CI): each
pass prints progress lines, and no Dask or engine INFO line reaches stderr unless ``-v``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import corruptions as corpus

REPO = Path(__file__).resolve().parent.parent
PROGRESS = re.compile(r"^pass ([12]): (\d+)/(\d+) series, (\d+) failed", re.MULTILINE)

pytestmark = pytest.mark.slow


def _run(tmp_path, manifest, *extra):
    config = tmp_path / "config.yaml"
    config.write_text(corpus.RUN_CONFIG_YAML, encoding="utf-8")
    command = [sys.executable, "-m", "engine.cli", *extra, "run", "--manifest", str(manifest), "--config", str(config),
               "--out", str(tmp_path / "run"), "--backend", "cpu", "--workers", "1"]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_a_run_without_a_terminal_prints_progress_and_info_only_with_verbose(tmp_path_factory, tmp_path):
    manifest = corpus.clean_ct_manifest(tmp_path_factory)
    result = _run(tmp_path, manifest)
    assert result.returncode == 0, result.stderr
    lines = PROGRESS.findall(result.stderr)
    assert ("1", "8", "8", "0") in lines and ("2", "8", "8", "0") in lines, result.stderr
    assert "INFO" not in result.stderr and "distributed." not in result.stderr, result.stderr
    assert "WARNING" not in result.stderr, result.stderr  # e.g. bokeh's "Host wildcard '*'" about Dask's dashboard
    assert "Traceback" not in result.stderr and "UserWarning" not in result.stderr, result.stderr
    # the same command again, with -v: the engine's and Dask's INFO lines, and what the rerun reused
    verbose = _run(tmp_path, manifest, "-v")
    assert verbose.returncode == 0, verbose.stderr
    assert "INFO" in verbose.stderr
    assert "rerun: 8 series taken from the cache, 0 computed" in verbose.stdout, verbose.stdout
