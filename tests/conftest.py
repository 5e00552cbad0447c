"""Shared helpers: torch is the oracle for every shape the engine infers."""

from __future__ import annotations

import posixpath
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

    # blocks whose forward runs its layers in order
    sequential = {"LinearBlock", "ConvBlock", "UpBlock"}
    batch = 2
    for part in plan.parts:
        x = torch.empty((batch, *part.in_shape), device="meta")
        for item in part.items:
            if part.is_dict:  # parallel items (multi-task heads): each reads the part's input
                x = torch.empty((batch, *part.in_shape), device="meta")
            layers = item.layers if isinstance(item, Block) else (item,)
            in_order = not isinstance(item, Block) or item.cls in sequential
            for layer in layers:
                if not layer.torch_class or layer.op == "Sequential":
                    # a class of the generated model (Scale, Gate, a pooling over time), or a
                    # shortcut whose members are listed after it: checked by check_rendered_model
                    if not isinstance(item, Block):
                        x = torch.empty((batch, *item.out_shape), device="meta")
                    continue
                module = eval(layer.code, {"nn": nn}).to("meta")  # the exact code the template emits
                where = item.where if isinstance(item, Block) else part.name
                got = sum(p.numel() for p in module.parameters())
                assert got == layer.params, f"{where} {layer.code}: {got} != {layer.params}"
                if in_order:
                    x = module(x)
                    assert tuple(x.shape) == (batch, *layer.out_shape), f"{where} {layer.code}"
            if not in_order:
                x = torch.empty((batch, *item.out_shape), device="meta")
            if part.is_dict:
                assert tuple(x.shape[1:]) == item.out_shape, f"{part.name}: {item.out_shape}"
        if not part.is_dict:
            assert tuple(x.shape[1:]) == part.out_shape


def render_template(relative: str, spec: dict, project: str = "demo") -> str:
    """Render one template file the way Copier does (same extension, same answers)."""
    import jinja2

    from scaffold.jinja_ext import ScaffoldExtension

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(ROOT / "templates")),  # copier's root: includes/ too
        extensions=[ScaffoldExtension],
        keep_trailing_newline=True,
    )
    env.globals["pathjoin"] = posixpath.join  # as copier defines it
    package = project.replace("-", "_")
    template = env.get_template(f"project/{relative}")
    return template.render(spec=spec, project_name=project, package_name=package)


def first(output):
    """A module's output, or the first of several (a GRU's (output, h_n))."""
    return output[0] if isinstance(output, tuple) else output


def load_source(source: str, name: str):
    """Run generated code as the module `name` (registered, as an import would: @dataclass
    looks its module up in sys.modules)."""
    import sys
    import types

    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(source, f"{name}.py", "exec"), module.__dict__)
    return module


def check_rendered_model(plan, spec: dict, project: str | None = None) -> None:
    """Render model.py, build the model, run a forward pass on the meta device, and compare
    every hooked module's output shape and the parameter total with the plan."""
    torch = pytest.importorskip("torch")

    source = render_template("src/{{package_name}}/model.py.jinja", spec, project or plan.project)
    module = load_source(source, "generated_model")
    with torch.device("meta"):
        model = getattr(module, plan.class_name)()
    assert sum(p.numel() for p in model.parameters()) == plan.params
    modules = dict(model.named_modules())
    seen = {}
    for name, _ in plan.module_shapes():
        modules[name].register_forward_hook(
            lambda mod, args, out, name=name: seen.update({name: tuple(first(out).shape[1:])})
        )
    if plan.kind in ("lm", "seq"):  # token ids
        x = torch.zeros((2, *plan.input_shape), dtype=torch.long, device="meta")
    else:
        x = torch.empty((2, *plan.input_shape), device="meta")
    model.train()
    if plan.kind == "gan":
        model.discriminator(x)
        model.generator(torch.empty((2, plan.latent), device="meta"))
    else:
        model(x)
    assert seen == dict(plan.module_shapes())


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
