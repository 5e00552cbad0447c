"""scaffold new: every example becomes a project whose own tests pass."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from conftest import EXAMPLES, ROOT, git, run_cli, run_project_tests

ALLOWED_IMPORTS = set(sys.stdlib_module_names) | {"torch", "pytest"}
# the generated project's optional extras (images, plots, onnx): imported only inside the
# function that needs one, never at a module's top
OPTIONAL_IMPORTS = {"PIL", "matplotlib", "onnx", "onnxscript", "onnxruntime"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_becomes_a_working_project(example, tmp_path, env):
    result = run_cli("new", example.stem, "--spec", example, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    project = tmp_path / example.stem
    package = example.stem.replace("-", "_")

    # a git repository with one commit and a clean tree
    assert git(project, "rev-list", "--count", "HEAD").strip() == "1"
    assert git(project, "status", "--porcelain") == ""
    # the answers remember the spec, so the project can be re-rendered
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert answers["from_spec"] is True
    assert answers["spec"]["model"] == yaml.safe_load(example.read_text())["model"]
    assert Path(answers["_src_path"]).is_absolute()
    # standalone: torch only at run time, nothing from scaffold, copier or jinja
    pyproject = (project / "pyproject.toml").read_text()
    assert 'dependencies = ["torch>=2.3"]' in pyproject
    for path in project.rglob("*.py"):
        extra = imported_modules(path) - ALLOWED_IMPORTS - {package}
        assert not extra - OPTIONAL_IMPORTS, f"{path.name} imports {extra}"
        top = [n for n in ast.parse(path.read_text()).body if isinstance(n, (ast.Import, ast.ImportFrom))]
        at_top = {a.name.split(".")[0] for n in top for a in n.names} | {
            n.module.split(".")[0] for n in top if isinstance(n, ast.ImportFrom) and n.module
        }
        assert not at_top & OPTIONAL_IMPORTS, f"{path.name} imports {at_top & OPTIONAL_IMPORTS} at its top"

    black = subprocess.run([sys.executable, "-m", "black", "--check", "-q", "."], cwd=project, capture_output=True, text=True)
    assert black.returncode == 0, black.stderr
    # black does not split strings and docstrings: the template keeps them within its 100 columns
    long_lines = [f"{path.name}:{number}" for path in project.rglob("*.py")
                  for number, line in enumerate(path.read_text().splitlines(), 1) if len(line) > 100]
    assert not long_lines, long_lines

    tests = run_project_tests(project, env)
    assert tests.returncode == 0, tests.stdout[-4000:]
    assert " passed" in tests.stdout and "failed" not in tests.stdout

    train = subprocess.run(
        [sys.executable, "-m", f"{package}.train", "--epochs", "2", "--samples", "256", "--out", str(tmp_path / "run")]
        + (["--batch-size", "4"] if answers["spec"]["model"]["kind"] == "lm" else []),  # 10M-parameter LM
        cwd=project, env={**env, "PYTHONPATH": str(project / "src")}, capture_output=True, text=True, timeout=600,
    )
    assert train.returncode == 0, train.stderr
    assert "epoch 2/2" in train.stdout
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_model_code_carries_the_plan(tmp_path, env):
    example = ROOT / "examples" / "odd-autoencoder.yaml"
    assert run_cli("new", "odd", "--spec", example, cwd=tmp_path, env=env).returncode == 0
    code = (tmp_path / "odd" / "src" / "odd" / "model.py").read_text()
    # blocks built from sizes, each with its spec entry and shapes from the plan
    assert "# mirrors model.conv[1]: (B, 16, 4, 6) -> (B, 8, 17, 25)" in code
    assert "upsample=nn.Upsample(size=(9, 13))" in code
    assert "# mirrors model.conv[0]: (B, 8, 17, 25) -> (B, 3, 37, 53)\n" in code
    assert "UpBlock(8, in_channels, 5, stride=2)," in code  # the channels from the constructor
    assert "class ResidualUpBlock" not in code  # only the blocks the model uses
    assert "if norm_layer is not None else nn.Identity()" in code  # one block style: timm's
    assert "import scaffold" not in code


@pytest.mark.parametrize("command", ["validate", "show", "new"])
def test_cli_does_not_import_torch(command, tmp_path, env):
    spec = ROOT / "examples" / "conv-vae.yaml"
    args = [command, str(spec)] if command != "new" else ["new", str(tmp_path / "p"), "--spec", str(spec)]
    probe = textwrap.dedent(
        f"""
        import sys
        from scaffold.cli import app
        try:
            app({args!r})
        except SystemExit as exit:
            assert exit.code in (0, None), exit.code
        print("torch" in sys.modules)
        """
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_refuses_a_non_empty_directory(tmp_path, env):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    result = run_cli("new", "taken", "--spec", EXAMPLES[0], cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert "not empty" in result.stderr and "Traceback" not in result.stderr
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    assert (target / "notes.txt").read_text() == "mine"


def test_an_empty_directory_is_used(tmp_path, env):
    (tmp_path / "empty").mkdir()
    result = run_cli("new", "empty", "--spec", ROOT / "examples" / "tabular-mlp.yaml", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "empty" / "src" / "empty" / "model.py").is_file()


def test_invalid_spec_writes_nothing(tmp_path, env):
    spec = tmp_path / "bad.yaml"
    spec.write_text("model:\n  kind: cnn\n  input: [1, 8, 8]\n  conv: [{chanels: 16}]\n  mlp: [{features: 2}]\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_cli("new", "proj", "--spec", spec, cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("error: model.conv[0]: unknown key `chanels`, did you mean `channels`?")
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_without_a_terminal_it_says_how_to_proceed(tmp_path, env):
    result = run_cli("new", "proj", cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert "--spec" in result.stderr and "--defaults" in result.stderr
    assert not (tmp_path / "proj").exists()


def test_defaults_make_a_project(tmp_path, env):
    result = run_cli("new", "quick", "--defaults", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    code = (tmp_path / "quick" / "src" / "quick" / "model.py").read_text()
    ast.parse(code)
    assert "NUM_CLASSES = 10" in code


@pytest.mark.parametrize("stage", ["run_copy", "git"])
@pytest.mark.parametrize("error", [RuntimeError("injected"), KeyboardInterrupt()])
def test_failure_at_any_stage_leaves_nothing(stage, error, tmp_path, env, monkeypatch):
    import copier

    from scaffold import render
    from scaffold.errors import ScaffoldError

    if stage == "run_copy":
        def fail(*args, **kwargs):
            raise error
        monkeypatch.setattr(copier, "run_copy", fail)
    else:
        real = render._git
        def fail(repo, *args, **kwargs):
            if args and args[0] == "commit" and "scaffold-tmp" in str(repo):
                raise error
            return real(repo, *args, **kwargs)
        monkeypatch.setattr(render, "_git", fail)
    data = {"project_name": "proj", "from_spec": True, "spec": yaml.safe_load(EXAMPLES[0].read_text())}
    with pytest.raises((ScaffoldError, KeyboardInterrupt)):
        render.new_project(tmp_path / "proj", data)
    assert [p.name for p in tmp_path.iterdir() if p.name != "scaffold-home"] == []


def test_installed_package_ships_the_template_and_updates(tmp_path, env):
    """A non-editable install (what `pip install scaffold` gives) can create and update."""
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert install.returncode == 0, install.stderr
    assert (target / "scaffold" / "template" / "copier.yml").is_file()
    env = {**env, "PYTHONPATH": str(target)}
    work = tmp_path / "work"
    work.mkdir()
    where = subprocess.run([sys.executable, "-c", "import scaffold.render as r; print(r.template_source())"],
                           cwd=work, env=env, capture_output=True, text=True)
    assert where.stdout.strip() == str(target / "scaffold" / "template")
    assert run_cli("new", "mlp", "--spec", ROOT / "examples" / "tabular-mlp.yaml", cwd=work, env=env).returncode == 0
    spec = yaml.safe_load((ROOT / "examples" / "tabular-mlp.yaml").read_text())
    spec["model"]["mlp"][0]["features"] = 24
    (work / "wider.yaml").write_text(yaml.safe_dump(spec))
    result = run_cli("update", "mlp", "--spec", "wider.yaml", cwd=work, env=env)
    assert result.returncode == 0, result.stderr
    assert "LinearBlock(in_features, 24, bias=False, act_layer=nn.ReLU)" in (work / "mlp" / "src" / "mlp" / "model.py").read_text()
