"""`scaffold update` scenarios, scripted end to end, with figures.

Each scenario generates a project, commits user work (edits, new files,
deletions), changes something upstream (an answer, or a new template version
published into the project's own template repository), updates, and then
checks, line by line, that everything the user wrote is still there: every
line the user added is in its file (inside conflict markers if both sides
changed it), user files are byte-identical, user deletions stay deleted, and
conflicts are marked and reported. An update to an invalid answer, and one on
a dirty work tree, are refused before anything changes.

The figures (scenarios, user lines checked, lines preserved, conflicts) are
printed by test_update_figures for docs/robustness.md.
"""

from __future__ import annotations

import ast
import hashlib
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, git, run_cli

from scaffold.builders import plan_from_raw
from scaffold.errors import ScaffoldError
from scaffold.render import (
    new_project,
    read_answers,
    sync_template_repo,
    template_source,
    update_project,
)

EXAMPLE = ROOT / "examples" / "conv-vae.yaml"
PROJECT = "vision"
PACKAGE = "vision"
FIGURES: dict[str, dict[str, int]] = {}

HELPER = '''

def count_parameters(model) -> int:
    """A user's helper, added after generation."""
    return sum(p.numel() for p in model.parameters())
'''


# --------------------------------------------------------------------------- helpers


def spec(**model) -> dict:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["model"].update(model)
    data["project"] = PROJECT
    return data


@pytest.fixture
def project(tmp_path, env) -> Path:
    """A fresh project from examples/conv-vae.yaml (own template repository)."""
    path = new_project(
        tmp_path / PROJECT, {"project_name": PROJECT, "from_spec": True, "spec": spec()}
    )
    assert git(path, "status", "--porcelain") == ""
    return path


def src(project: Path, name: str) -> Path:
    return project / "src" / PACKAGE / name


def commit(project: Path, message: str) -> str:
    git(project, "add", "-A")
    git(project, "commit", "-qm", message)
    return git(project, "rev-parse", "HEAD").strip()


def user_work(project: Path, base: str) -> tuple[dict[str, list[str]], set[str]]:
    """Lines the user added per file since `base`, and the files the user deleted."""
    diff = git(project, "diff", "--unified=0", "--no-renames", base, "HEAD")
    added: dict[str, list[str]] = {}
    current = None
    for line in diff.splitlines():
        if line.startswith("+++ "):
            current = line[6:] if line.startswith("+++ b/") else None
        elif line.startswith("+") and current is not None and line[1:].strip():
            added.setdefault(current, []).append(line[1:])
    deleted = set(git(project, "diff", "--name-only", "--diff-filter=D", base, "HEAD").split())
    return added, deleted


def check_preserved(
    project: Path,
    scenario: str,
    base: str,
    before: dict[str, list[str]] | None = None,
    deleted: set[str] | None = None,
) -> dict[str, int]:
    """Every line the user added is still in its file; user deletions stay deleted."""
    added, gone = (before, deleted) if before is not None else user_work(project, base)
    checked = preserved = 0
    for name, lines in added.items():
        path = project / name
        assert path.is_file(), f"{scenario}: the user's file {name} is gone"
        have = path.read_text(encoding="utf-8").splitlines()
        for line in lines:
            checked += 1
            assert line in have, f"{scenario}: lost from {name}: {line!r}"
            preserved += 1
    for name in gone:
        assert not (
            project / name
        ).exists(), f"{scenario}: the user deleted {name}, the update brought it back"
    conflicts = marked_files(project)
    FIGURES[scenario] = {
        "user lines": checked,
        "preserved": preserved,
        "user deletions kept": len(gone),
        "conflicted files": len(conflicts),
    }
    return FIGURES[scenario]


def marked_files(project: Path) -> list[str]:
    out = []
    for path in project.rglob("*"):
        if path.is_file() and ".git" not in path.relative_to(project).parts:
            text = path.read_text(encoding="utf-8", errors="replace")
            if "<<<<<<< " in text and ">>>>>>> " in text:
                out.append(str(path.relative_to(project)))
    return sorted(out)


def template_file(root: Path, output: str, data: dict) -> Path:
    """The template file (under root/project) that renders to `output` for this spec."""
    import jinja2

    env = jinja2.Environment()
    context = {"spec": data, "project_name": PROJECT, "package_name": PACKAGE}
    found = None
    for path in sorted((root / "project").rglob("*.jinja")):
        if "_copier_conf" in path.name:
            continue
        relative = path.relative_to(root / "project").as_posix()[: -len(".jinja")]
        parts = [env.from_string(part).render(context) for part in relative.split("/")]
        if all(parts) and "/".join(parts) == output:
            found = path  # Copier: the last one wins
    assert found is not None, output
    return followed(root, found, data)


def followed(root: Path, path: Path, data: dict) -> Path:
    """The file a one-line template includes (train.py.jinja: includes/train/<family>.py.jinja),
    else the template itself."""
    import jinja2

    text = path.read_text().strip()
    include = re.fullmatch(r"\{%-? include (pathjoin\(.*\)) -?%\}", text)
    if include is None:
        return path
    kind = data["model"]["kind"]
    family = "gan" if kind == "gan" else "seq" if kind in ("lm", "seq") else "classic"
    parts = jinja2.Environment().from_string("{{ " + include.group(1) + " | join('/') }}")
    return root / parts.render(pathjoin=lambda *names: names, family=family)


def publish_template(project: Path, tmp_path: Path, edit, monkeypatch) -> str:
    """Scaffold 9.0.0 with a changed template: copy the shipped template, let `edit(root)`
    change it, publish it as v9.0.0 into the repository the project was made from (its
    _src_path), and make it the installed template (what `scaffold update` syncs)."""
    from scaffold import render

    newer = tmp_path / "template-9"
    shutil.copytree(template_source(), newer, ignore=shutil.ignore_patterns("__pycache__"))
    edit(newer)
    repo = Path(read_answers(project)["_src_path"])
    _, tag = sync_template_repo(newer, "9.0.0", repo=repo)
    assert tag.startswith("v9.0.0+t")
    monkeypatch.setattr(render, "template_source", lambda: newer)
    monkeypatch.setattr(render, "__version__", "9.0.0")
    return tag


def append_inside_filter(path: Path, code: str) -> None:
    """Add Python code at the end of a template file, inside its black filter."""
    text = path.read_text()
    cut = text.rindex("{% endfilter %}")
    path.write_text(text[:cut].rstrip("\n") + "\n" + code + "\n" + text[cut:])


def prepend_to_output(path: Path, line: str) -> None:
    """Add a line at the top of the generated file: just before the template's black filter
    (the statements above it print nothing)."""
    text = path.read_text()
    cut = text.index("{% filter black %}\n")
    path.write_text(text[:cut] + line + "\n" + text[cut:])


def model_class(path: Path, class_name: str):
    module = types.ModuleType("updated_model")
    exec(compile(path.read_text(), str(path), "exec"), module.__dict__)
    return getattr(module, class_name)


# --------------------------------------------------------------------------- scenarios


def test_edit_in_the_model_survives_an_answer_change(project):
    """User code in model.py (a helper at the end, a comment inside the class); then latent 16 -> 32."""
    base = git(project, "rev-parse", "HEAD").strip()
    model = src(project, "model.py")
    text = model.read_text()
    text = text.replace(
        "        super().__init__()\n",
        "        super().__init__()\n        # tuned for my data set\n",
        1,
    )
    model.write_text(text + HELPER)
    commit(project, "my helper")
    tag, conflicts = update_project(project, {"from_spec": True, "spec": spec(latent=32)})
    assert conflicts == []
    code = model.read_text()
    assert "LATENT_DIM = 32" in code and "nn.Linear(3136, latent_dim)" in code
    figures = check_preserved(project, "edit in the model file", base)
    assert figures["user lines"] == 4 and figures["conflicted files"] == 0


def test_edit_in_the_trainer_survives_a_template_upgrade(project, tmp_path, monkeypatch):
    """User lines inside train.py's functions; the new template adds a function to train.py."""
    base = git(project, "rev-parse", "HEAD").strip()
    train = src(project, "train.py")
    lines = train.read_text().splitlines(keepends=True)
    # a comment line at the top of every function body of the trainer
    out = []
    for i, line in enumerate(lines):
        out.append(line)
        if re.match(r"def \w+\(.*\).*:\s*$", line) and i + 1 < len(lines) and '"""' in lines[i + 1]:
            out.append(f"    # user note {i}: checked on my data\n")
    train.write_text("".join(out).replace("\nimport ", "\nimport logging  # mine\nimport ", 1))
    commit(project, "my trainer notes")
    added, _ = user_work(project, base)
    assert len(added["src/vision/train.py"]) >= 3

    data = read_answers(project)["spec"]
    tag = publish_template(
        project,
        tmp_path,
        lambda root: append_inside_filter(
            template_file(root, f"src/{PACKAGE}/train.py", data),
            '\n\ndef template_nine() -> int:\n    """Added by template 9."""\n    return 9\n',
        ),
        monkeypatch,
    )
    got, conflicts = update_project(project)
    assert got == tag and conflicts == []
    assert "def template_nine() -> int:" in train.read_text()
    assert read_answers(project)["_commit"] == tag
    figures = check_preserved(project, "edit in the trainer", base)
    assert figures["conflicted files"] == 0


def test_new_user_files_are_kept_byte_for_byte(project, tmp_path, monkeypatch):
    """User files (code, notes, data, a nested folder) and a template upgrade that adds a file."""
    base = git(project, "rev-parse", "HEAD").strip()
    files = {
        f"src/{PACKAGE}/augment.py": "import torch\n\n\ndef flip(x):\n    return torch.flip(x, dims=[-1])\n",
        "notebooks/explore.md": "# Exploration\n\n- latent 16 looks fine\n",
        "data/README.txt": "raw data go here\n",
        "tests/test_augment.py": f"from {PACKAGE}.augment import flip\n\n\ndef test_flip():\n    assert flip\n",
    }
    for name, text in files.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    commit(project, "my files")
    digests = {name: hashlib.sha256((project / name).read_bytes()).hexdigest() for name in files}

    def add_file(root: Path) -> None:
        extra = root / "project" / "src" / "{{package_name}}" / "extras.py.jinja"
        extra.write_text('"""Added by template 9 for {{ project_name }}."""\n\nVERSION = 9\n')

    publish_template(project, tmp_path, add_file, monkeypatch)
    _, conflicts = update_project(project)
    assert conflicts == []
    assert src(project, "extras.py").read_text().startswith('"""Added by template 9 for vision."""')
    for name, digest in digests.items():
        assert hashlib.sha256((project / name).read_bytes()).hexdigest() == digest, name
    figures = check_preserved(project, "new user files", base)
    assert figures["user lines"] == 9


def test_a_deleted_generated_file_stays_deleted(project, tmp_path, monkeypatch):
    """The user removes README.md and tests/test_train.py; the template changes both."""
    base = git(project, "rev-parse", "HEAD").strip()
    git(project, "rm", "-q", "README.md", "tests/test_train.py")
    commit(project, "not needed")
    data = read_answers(project)["spec"]

    def edit(root: Path) -> None:
        readme = template_file(root, "README.md", data)
        readme.write_text(readme.read_text() + "\n## Added by template 9\n")
        append_inside_filter(
            template_file(root, "tests/test_train.py", data),
            "\n\ndef test_template_nine():\n    assert True\n",
        )

    publish_template(project, tmp_path, edit, monkeypatch)
    tag, conflicts = update_project(project)
    assert tag.startswith("v9.0.0+t")
    figures = check_preserved(project, "user-deleted generated file", base)
    assert figures["user deletions kept"] == 2
    assert (
        not (project / "README.md").exists() and not (project / "tests" / "test_train.py").exists()
    )


def test_a_conflicting_edit_is_marked_with_both_sides(project):
    """User and update change the same line: both versions in conflict markers, reported."""
    base = git(project, "rev-parse", "HEAD").strip()
    model = src(project, "model.py")
    model.write_text(
        model.read_text().replace("LATENT_DIM = 16\n", "LATENT_DIM = 16  # tuned by hand\n")
        + HELPER
    )
    commit(project, "tune")
    result_tag, conflicts = update_project(project, {"from_spec": True, "spec": spec(latent=32)})
    assert f"src/{PACKAGE}/model.py" in conflicts
    code = model.read_text()
    mine = code.index("LATENT_DIM = 16  # tuned by hand")
    theirs = code.index("LATENT_DIM = 32")
    start = code.rindex("<<<<<<< ", 0, min(mine, theirs))
    end = code.index(">>>>>>> ", max(mine, theirs))
    assert "=======" in code[start:end]
    figures = check_preserved(project, "conflicting edit", base)
    assert figures["conflicted files"] >= 1


def test_an_answer_change_that_alters_shapes_keeps_model_and_tests_in_step(project, tmp_path, env):
    """New conv channels and input size: every shape comment, EXPECTED_SHAPES and the model
    agree with torch afterwards; the user's own test and helper survive (through the CLI)."""
    import torch

    base = git(project, "rev-parse", "HEAD").strip()
    test_model = project / "tests" / "test_model.py"
    test_model.write_text(
        test_model.read_text() + "\n\ndef test_my_own_check():\n    assert INPUT_SHAPE[0] == 1\n"
    )
    src(project, "model.py").write_text(src(project, "model.py").read_text() + HELPER)
    commit(project, "my test")
    changed = spec(input=[1, 32, 32], conv=[{"channels": 8}, {"channels": 24}, {"channels": 40}])
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(changed))
    result = run_cli("update", project, "--spec", tmp_path / "changed.yaml", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    plan = plan_from_raw(changed, PROJECT)
    code = src(project, "model.py").read_text()
    assert (
        "INPUT_SHAPE = (1, 32, 32)" in code
        and "(24, 40, " in code  # a conv from 24 to 40 channels, however the template spells it
    )
    # the project's own EXPECTED_SHAPES equal the new plan, and torch agrees with both
    tree = ast.parse(test_model.read_text())
    expected = next(
        ast.literal_eval(n.value)
        for n in tree.body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "EXPECTED_SHAPES"
    )
    assert expected == {name: tuple(shape) for name, shape in plan.module_shapes()}
    with torch.device("meta"):
        model = model_class(src(project, "model.py"), plan.class_name)()
    seen = {}
    modules = dict(model.named_modules())
    for name in expected:
        modules[name].register_forward_hook(
            lambda m, a, out, name=name: seen.update({name: tuple(out.shape[1:])})
        )
    model(torch.empty((2, 1, 32, 32), device="meta"))
    assert seen == expected
    figures = check_preserved(project, "answer change that alters shapes", base)
    assert figures["conflicted files"] == 0


def test_a_template_upgrade_reaches_every_file_and_keeps_all_user_work(
    project, tmp_path, env, monkeypatch
):
    """Edits in model.py, train.py, the tests and the README, a new file, then template 9
    changes model.py, train.py and the README."""
    base = git(project, "rev-parse", "HEAD").strip()
    src(project, "model.py").write_text(src(project, "model.py").read_text() + HELPER)
    src(project, "train.py").write_text(
        src(project, "train.py").read_text() + "\n\nEXPERIMENT = 'baseline'\n"
    )
    readme = project / "README.md"
    readme.write_text(readme.read_text() + "\n## My notes\n\nTrained on my scans.\n")
    (project / "tests" / "test_model.py").write_text(
        (project / "tests" / "test_model.py").read_text()
        + "\n\ndef test_mine():\n    assert PARAM_COUNT > 0\n"
    )
    src(project, "notes.py").write_text("NOTE = 'mine'\n")
    commit(project, "my work")
    data = read_answers(project)["spec"]

    def edit(root: Path) -> None:
        prepend_to_output(
            template_file(root, f"src/{PACKAGE}/model.py", data), "# Made with template 9."
        )
        prepend_to_output(
            template_file(root, f"src/{PACKAGE}/train.py", data), "# Trained with template 9."
        )
        path = template_file(root, "README.md", data)
        path.write_text(path.read_text().replace("## Test\n", "## Test (template 9)\n", 1))

    tag = publish_template(project, tmp_path, edit, monkeypatch)
    # plain Copier, as the generated README says: it takes the newest tag, v9.0.0+t...
    result = subprocess.run(
        [sys.executable, "-m", "copier", "update", "--trust", "--defaults", "--skip-answered"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert read_answers(project)["_commit"] == tag
    assert marked_files(project) == []
    assert src(project, "model.py").read_text().startswith("# Made with template 9.\n")
    assert src(project, "train.py").read_text().startswith("# Trained with template 9.\n")
    assert "## Test (template 9)" in readme.read_text()
    for path in project.rglob("*.py"):
        ast.parse(path.read_text())
    figures = check_preserved(project, "template upgrade", base)
    assert figures["user lines"] == 9 and figures["conflicted files"] == 0


def test_an_invalid_answer_is_refused_before_anything_changes(project, tmp_path, env):
    """A shrinking conv stack, an unknown key, a wrong type: exit 2, the same files, the same HEAD."""
    base = git(project, "rev-parse", "HEAD").strip()
    src(project, "model.py").write_text(src(project, "model.py").read_text() + HELPER)
    head = commit(project, "mine")
    files = {p: p.read_bytes() for p in project.rglob("*") if p.is_file() and ".git" not in p.parts}
    bad_specs = [
        spec(
            input=[1, 4, 4],
            conv=[{"channels": 8}, {"channels": 8}, {"channels": 8, "kernel": 5, "padding": 0}],
        ),
        spec(latent="sixteen"),
        {**spec(), "model": {**spec()["model"], "chanels": 3}},
    ]
    for i, bad in enumerate(bad_specs):
        (tmp_path / f"bad{i}.yaml").write_text(yaml.safe_dump(bad))
        result = run_cli(
            "update", project, "--spec", tmp_path / f"bad{i}.yaml", cwd=tmp_path, env=env
        )
        assert result.returncode == 2 and result.stderr.startswith("error: model"), result.stderr
        assert "Traceback" not in result.stderr
        assert git(project, "rev-parse", "HEAD").strip() == head
        assert git(project, "status", "--porcelain") == ""
        assert {
            p: p.read_bytes() for p in project.rglob("*") if p.is_file() and ".git" not in p.parts
        } == files
    check_preserved(project, "invalid answer refused", base)


def test_uncommitted_work_is_refused_not_overwritten(project):
    """Update on a dirty tree would mix the user's uncommitted edits with the merge: refused."""
    model = src(project, "model.py")
    model.write_text(model.read_text() + HELPER)
    (project / "scratch.py").write_text("x = 1\n")
    before = {
        p: p.read_bytes() for p in project.rglob("*") if p.is_file() and ".git" not in p.parts
    }
    with pytest.raises(ScaffoldError, match="uncommitted changes"):
        update_project(project, {"from_spec": True, "spec": spec(latent=32)})
    assert {
        p: p.read_bytes() for p in project.rglob("*") if p.is_file() and ".git" not in p.parts
    } == before
    mine = {
        f"src/{PACKAGE}/model.py": [line for line in HELPER.splitlines() if line.strip()],
        "scratch.py": ["x = 1"],
    }
    check_preserved(project, "uncommitted work refused", "", before=mine, deleted=set())


def test_an_update_with_nothing_new_changes_nothing(project):
    """Same template, same spec: the project is left exactly as it was (user edits included)."""
    base = git(project, "rev-parse", "HEAD").strip()
    src(project, "model.py").write_text(src(project, "model.py").read_text() + HELPER)
    commit(project, "mine")
    _, conflicts = update_project(project)
    assert conflicts == []
    assert git(project, "status", "--porcelain") == ""
    check_preserved(project, "nothing new", base)


def test_update_figures():
    """The figures for docs/robustness.md."""
    if len(FIGURES) < 6:
        pytest.skip("run with the scenarios above")
    lines = sum(f["user lines"] for f in FIGURES.values())
    kept = sum(f["preserved"] for f in FIGURES.values())
    print(
        f"\nupdate scenarios: {len(FIGURES)}; user lines checked {lines}, preserved {kept}; "
        f"user deletions kept {sum(f['user deletions kept'] for f in FIGURES.values())}; "
        f"conflicted files {sum(f['conflicted files'] for f in FIGURES.values())}"
    )
    for name, figures in FIGURES.items():
        print(f"  {name}: {figures}")
    assert kept == lines
