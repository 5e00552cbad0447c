"""Shared helpers: torch is the oracle for every shape the engine infers."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def torch_check_plan(plan) -> None:
    """Build every layer of the plan with torch on the meta device and compare.

    Each part is run from its recorded input shape; every layer's output shape
    and parameter count must equal the plan's static values.
    """
    torch = pytest.importorskip("torch")
    from torch import nn

    from scaffold.plan import Block

    batch = 2
    for part in plan.parts:
        x = torch.empty((batch, *part.in_shape), device="meta")
        for item in part.items:
            layers = item.layers if isinstance(item, Block) else (item,)
            for layer in layers:
                module = eval(layer.code, {"nn": nn}).to("meta")  # the exact code the template emits
                x = module(x)
                where = item.where if isinstance(item, Block) else part.name
                assert tuple(x.shape) == (batch, *layer.out_shape), f"{where} {layer.code}"
                got = sum(p.numel() for p in module.parameters())
                assert got == layer.params, f"{where} {layer.code}: {got} != {layer.params}"
        assert tuple(x.shape[1:]) == part.out_shape


import os
import subprocess
import sys

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Test User",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test User",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An isolated scaffold home (template repository) and a git identity."""
    home = tmp_path / "scaffold-home"
    monkeypatch.setenv("SCAFFOLD_HOME", str(home))
    monkeypatch.setenv("COPIER_SETTINGS_PATH", str(tmp_path / "no-copier-settings.yml"))
    for key, value in GIT_IDENTITY.items():
        monkeypatch.setenv(key, value)
    return dict(os.environ)


def run_cli(*args, cwd, env, stdin=subprocess.DEVNULL, timeout=300):
    """Run the scaffold CLI in a fresh interpreter, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "scaffold.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_project_tests(project: Path, env: dict) -> subprocess.CompletedProcess:
    """The generated project's own test suite, with the current interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x"],
        cwd=project,
        env={**env, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )


def git(project: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=project, capture_output=True, text=True, check=True
    ).stdout
