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
    # the project's own configuration (pyproject.toml): F unused imports and names, undefined
    # names; E9 syntax errors; I sorted imports; B bugbear
    for project in sorted(p for p in generated.iterdir() if (p / "pyproject.toml").is_file()):
        ruff = lint(RUFF, "check", "--no-cache", "--output-format", "concise", ".", cwd=project)
        assert ruff.returncode == 0, project.name + "\n" + ruff.stdout + ruff.stderr
        assert 'select = ["F", "E9", "I", "B"]' in (project / "pyproject.toml").read_text()


VULTURE = shutil.which("vulture", path=str(Path(sys.executable).parent)) or shutil.which("vulture")
# what vulture cannot see: nn.Module machinery calls forward() and registers attributes
VULTURE_IGNORE = "forward,extra_repr"


@pytest.mark.skipif(VULTURE is None, reason="vulture is in the test extra")
def test_no_dead_definition_in_any_generated_example(generated):
    """Every top-level definition, import and variable of a generated project is used."""
    for project in sorted(p for p in generated.iterdir() if (p / "pyproject.toml").is_file()):
        found = lint(VULTURE, "src", "tests", "--min-confidence", "60",
                     "--ignore-names", VULTURE_IGNORE, cwd=project)  # fmt: skip
        dead = [line for line in found.stdout.splitlines() if "unused attribute" not in line]
        assert not dead, project.name + ":\n" + "\n".join(dead)


def test_no_dead_module_in_any_generated_example(generated):
    """Each module of a generated package is imported by another or is a `python -m` entry
    point that the project's README documents."""
    for project in sorted(p for p in generated.iterdir() if (p / "pyproject.toml").is_file()):
        (package,) = [p for p in (project / "src").iterdir() if p.is_dir()]
        sources = {path.stem: path.read_text() for path in package.glob("*.py")}
        readme = (project / "README.md").read_text()
        for name, text in sources.items():
            if name == "__init__":
                continue
            imported = any(
                f"from .{name} import" in other or f"from . import {name}" in other
                for stem, other in sources.items()
                if stem != name
            )
            entry = 'if __name__ == "__main__":' in text and f"{package.name}.{name}" in readme
            assert (
                imported or entry
            ), f"{project.name}: {name}.py is neither imported nor documented"
