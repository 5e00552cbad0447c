"""scaffold's own source passes black (100 columns) and ruff; every generated example passes
ruff (black on generated code: tests/test_generate.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLES, ROOT, run_cli

RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
pytestmark = pytest.mark.skipif(RUFF is None, reason="ruff is in the test extra")


def lint(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_scaffold_source_is_black_and_ruff_clean():
    black = lint(sys.executable, "-m", "black", "--check", "-q", "-l", "100", "scaffold", cwd=ROOT)
    assert black.returncode == 0, black.stdout + black.stderr
    ruff = lint(RUFF, "check", "--no-cache", "--output-format", "concise", "scaffold", cwd=ROOT)
    assert ruff.returncode == 0, ruff.stdout + ruff.stderr


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Every example rendered by the CLI, as a user gets it."""
    import os

    from conftest import GIT_IDENTITY

    root = tmp_path_factory.mktemp("lint")
    env = {**os.environ, **GIT_IDENTITY, "SCAFFOLD_HOME": str(root / "home")}
    for spec in EXAMPLES:
        result = run_cli("new", root / spec.stem, "--spec", spec, cwd=root, env=env)
        assert result.returncode == 0, result.stderr
    return root


def test_every_generated_example_is_ruff_clean(generated):
    # F: unused imports and names, undefined names; E9: syntax errors
    ruff = lint(RUFF, "check", "--no-cache", "--isolated", "--select", "F,E9",
                "--output-format", "concise", ".", cwd=generated)  # fmt: skip
    assert ruff.returncode == 0, ruff.stdout + ruff.stderr
