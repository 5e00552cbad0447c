"""copier update on generated projects: answers change, template upgrades, conflicts.

Each scenario commits a user edit first and checks that nothing the user wrote
is lost.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, git, run_cli, run_project_tests

USER_CODE = '''

def count_parameters(model) -> int:
    """A user's own helper, added after generation."""
    return sum(p.numel() for p in model.parameters())
'''


@pytest.fixture
def project(tmp_path, env):
    """conv-vae generated from its example, plus a committed user edit."""
    result = run_cli(
        "new", "conv-vae", "--spec", ROOT / "examples" / "conv-vae.yaml", cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr
    path = tmp_path / "conv-vae"
    model = path / "src" / "conv_vae" / "model.py"
    model.write_text(model.read_text() + USER_CODE)
    git(path, "commit", "-qam", "my helper")
    return path


def spec_with(tmp_path, **model):
    spec = yaml.safe_load((ROOT / "examples" / "conv-vae.yaml").read_text())
    spec["model"].update(model)
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.slow
def test_changed_answer_rerenders_shapes_and_keeps_user_code(project, tmp_path, env):
    result = run_cli(
        "update", project, "--spec", spec_with(tmp_path, latent=32), cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr
    code = (project / "src" / "conv_vae" / "model.py").read_text()
    assert "LATENT_DIM = 32" in code
    assert "self.fc_mu = nn.Linear(3136, latent_dim)" in code  # latent_dim: LATENT_DIM by default
    assert "def count_parameters(model) -> int:" in code
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert answers["spec"]["model"]["latent"] == 32
    # the re-rendered tests agree with the re-rendered model
    tests = run_project_tests(project, env)
    assert tests.returncode == 0, tests.stdout[-3000:]


def test_new_template_version_reaches_the_project(project, tmp_path, env):
    from scaffold.render import sync_template_repo, template_source

    # publish a newer template (v9.0.0) with a change to the trainer
    newer = tmp_path / "newer-template"
    shutil.copytree(template_source(), newer)
    train = newer / "includes" / "train" / "classic.py.jinja"  # the mlp/cnn/ae/vae train.py
    train.write_text(train.read_text() + "\n# Command-line entry point (template 9).\n")
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    _, tag = sync_template_repo(
        newer, "9.0.0", repo=__import__("pathlib").Path(answers["_src_path"])
    )
    assert tag.startswith("v9.0.0+t")  # the version, and the content's tree

    # plain Copier, as the project README says
    result = subprocess.run(
        [sys.executable, "-m", "copier", "update", "--trust", "--defaults", "--skip-answered"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "(template 9)" in (project / "src" / "conv_vae" / "train.py").read_text()
    assert (
        "def count_parameters(model) -> int:"
        in (project / "src" / "conv_vae" / "model.py").read_text()
    )
    assert yaml.safe_load((project / ".copier-answers.yml").read_text())["_commit"] == tag
    assert git(project, "diff", "--name-only", "--diff-filter=U") == ""


def test_conflicting_edit_is_marked_not_lost(project, tmp_path, env):
    model = project / "src" / "conv_vae" / "model.py"
    model.write_text(
        model.read_text().replace("LATENT_DIM = 16\n", "LATENT_DIM = 16  # tuned by hand\n")
    )
    git(project, "commit", "-qam", "tune")
    result = run_cli(
        "update", project, "--spec", spec_with(tmp_path, latent=32), cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr
    assert "conflicts" in result.stderr and "src/conv_vae/model.py" in result.stderr
    code = model.read_text()
    assert "<<<<<<< before updating" in code and ">>>>>>> after updating" in code
    assert "LATENT_DIM = 16  # tuned by hand" in code  # the user's line
    assert "LATENT_DIM = 32" in code  # the template's line
    assert "def count_parameters(model) -> int:" in code


def test_invalid_answer_is_refused_before_anything_changes(project, tmp_path, env):
    head = git(project, "rev-parse", "HEAD")
    bad = spec_with(
        tmp_path, input=[1, 4, 4]
    )  # two stride-2 convs: 4 -> 2 -> 1, fine; make it fail:
    spec = yaml.safe_load(bad.read_text())
    spec["model"]["conv"].append({"channels": 128, "kernel": 5, "padding": 0})
    bad.write_text(yaml.safe_dump(spec))
    result = run_cli("update", project, "--spec", bad, cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("error: model.conv[2]:") and "Traceback" not in result.stderr
    assert git(project, "status", "--porcelain") == ""
    assert git(project, "rev-parse", "HEAD") == head


def test_dirty_project_is_refused(project, tmp_path, env):
    (project / "scratch.py").write_text("x = 1\n")
    result = run_cli("update", project, cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert "uncommitted changes" in result.stderr
