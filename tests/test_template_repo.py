"""The template repository: what scaffold keeps there, and what happens when it goes.

- A project is never created inside the template repository, and syncing the
  template never deletes files that the template did not put there (a project
  made there by an older scaffold, with its own .git, survived nothing).
- A tag never names two contents: the tag carries the content's tree hash, so a
  repository deleted and made again gives the same content the same tag, and
  other content another one. A project whose version is gone is told why and
  what to do; scaffold's own repository, deleted, is made again by `update`.
- `scaffold new .` in an empty directory fills it in place (the shell's
  directory stays), and so does an empty mount point (renaming onto one fails
  with EBUSY); a read-only template repository is used as it is when it holds
  the content, and otherwise refused in one line.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, git, run_cli
from typer.testing import CliRunner

from scaffold import render
from scaffold.cli import app
from scaffold.errors import GenerateError
from scaffold.render import read_answers, sync_template_repo, template_source

SPEC = ROOT / "examples" / "tabular-mlp.yaml"
TRIED: list[str] = []


def tree(root: Path) -> dict[str, bytes | None]:
    return {
        p.relative_to(root).as_posix(): (None if p.is_dir() else p.read_bytes())
        for p in sorted(root.rglob("*"))
        if not p.is_symlink()
    }


def wider_spec(tmp_path: Path, features: int = 24) -> Path:
    spec = yaml.safe_load(SPEC.read_text())
    spec["model"]["mlp"][0]["features"] = features
    path = tmp_path / f"wider{features}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def changed_template(tmp_path: Path, name: str = "template-b") -> Path:
    """A copy of the shipped template with different content (a development checkout)."""
    copy = tmp_path / name
    shutil.copytree(template_source(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    extra = copy / "project" / "NOTES.md.jinja"
    extra.write_text(f"Made by {name} for {{{{ project_name }}}}.\n")
    return copy


def new(tmp_path: Path, name: str = "proj") -> Path:
    result = CliRunner().invoke(app, ["new", str(tmp_path / name), "--spec", str(SPEC)])
    assert result.exit_code == 0, result.output
    return tmp_path / name


# --------------------------------------------------------------------------- a project in the repository


def test_a_project_is_never_created_inside_the_template_repository(tmp_path, env):
    result = run_cli("template", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    repo = Path(result.stdout.split()[0])
    before = tree(repo)
    for target in ("mywork", "deep/er/mywork"):
        result = run_cli("new", target, "--spec", SPEC, cwd=repo, env=env)
        assert result.returncode == 2, result.stdout
        assert "inside scaffold's template repository" in result.stderr
    assert tree(repo) == before
    TRIED.append("new inside the template repository")


def test_the_sync_never_deletes_what_the_template_did_not_put_there(tmp_path, env, monkeypatch):
    """A project (with its own .git and commits) and a stray file inside the template
    repository, as an older scaffold allowed: later syncs, of the same content and of
    new content, leave them alone."""
    repo, _ = sync_template_repo()
    mine = repo / "mywork"
    mine.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=mine, check=True)
    (mine / "train.py").write_text("print('years of work')\n")
    git(mine, "add", "-A")
    git(mine, "commit", "-qm", "my work")
    (mine / "draft.py").write_text("not committed yet\n")
    (repo / "notes.txt").write_text("mine\n")
    before = tree(mine)
    log = git(mine, "log", "--format=%H %s")
    monkeypatch.chdir(tmp_path)
    new(tmp_path)  # the same content again
    sync_template_repo(changed_template(tmp_path), "9.0.0")  # new content: a commit, a checkout
    sync_template_repo()  # and back
    assert tree(mine) == before and git(mine, "log", "--format=%H %s") == log
    assert (repo / "notes.txt").read_text() == "mine\n"
    assert (repo / "copier.yml").is_file()
    TRIED.append("foreign files in the template repository")


# --------------------------------------------------------------------------- tags and a wiped repository


def test_a_tag_never_names_two_contents(tmp_path, env):
    """Same content, two repositories made apart: the same tag. Other content under the
    same version: another tag, in a fresh repository as in the old one."""
    a, tag_a = sync_template_repo(repo=tmp_path / "one")
    _, again = sync_template_repo(repo=tmp_path / "two")
    assert again == tag_a
    other = changed_template(tmp_path)
    _, tag_b = sync_template_repo(other, repo=tmp_path / "three")  # same version, fresh repository
    _, tag_b_old = sync_template_repo(other, repo=a)  # same version, after tag_a
    assert tag_b != tag_a and tag_b_old != tag_a
    assert tag_b.split("+")[1] == tag_b_old.split("+")[1]  # the content's hash, wherever
    assert tag_b_old.startswith(tag_a.split("+")[0] + ".post1+")  # sorts after tag_a for copier
    trees = git(
        a, "for-each-ref", "--format=%(refname:strip=2) %(*objectname)%(objectname)", "refs/tags"
    )
    contents = {}
    for line in trees.splitlines():
        name, commit = line.split()[0], line.split()[-1]
        contents.setdefault(git(a, "rev-parse", f"{commit}^{{tree}}").strip(), []).append(name)
    assert all(len(names) == 1 for names in contents.values()), contents
    TRIED.append("tags in fresh and old repositories")


def test_a_deleted_template_repository_is_made_again_by_update(tmp_path, env, monkeypatch):
    """Same scaffold, its repository deleted (`rm -rf ~/.local/share/scaffold`): update works."""
    monkeypatch.chdir(tmp_path)
    project = new(tmp_path)
    shutil.rmtree(Path(env["SCAFFOLD_HOME"]))
    result = CliRunner().invoke(app, ["update", str(project), "--spec", str(wider_spec(tmp_path))])
    assert result.exit_code == 0, result.output
    assert re.search(r"LinearBlock\(\w+, 24\b", (project / "src" / "proj" / "model.py").read_text())
    TRIED.append("deleted repository, same version")


def test_a_missing_repository_elsewhere_says_how_to_recover(tmp_path, env, monkeypatch):
    monkeypatch.chdir(tmp_path)
    project = new(tmp_path)
    moved = tmp_path / "elsewhere"
    monkeypatch.setenv(
        "SCAFFOLD_HOME", str(moved)
    )  # the project's repository is not scaffold's own now
    shutil.rmtree(Path(read_answers(project)["_src_path"]))
    result = CliRunner().invoke(app, ["update", str(project)])
    assert result.exit_code == 2
    assert "is missing" in result.stderr and "`scaffold template`" in result.stderr
    assert git(project, "status", "--porcelain") == ""
    TRIED.append("missing repository, not scaffold's own")


@pytest.mark.parametrize("installed", ["other content, same version", "a newer version"])
def test_a_version_missing_from_a_remade_repository_is_explained(
    installed, tmp_path, env, monkeypatch
):
    """The project's version is gone (repository deleted, then a different scaffold
    installed): no silent no-op "updated", no "Unknown revision": what happened and the
    ways forward; the second of them (take the installed template as the base) works."""
    monkeypatch.chdir(tmp_path)
    project = new(tmp_path)
    old_tag = read_answers(project)["_commit"]
    head = git(project, "rev-parse", "HEAD")
    shutil.rmtree(Path(env["SCAFFOLD_HOME"]))
    other = changed_template(tmp_path)
    monkeypatch.setattr(render, "template_source", lambda: other)
    if installed == "a newer version":
        monkeypatch.setattr(render, "__version__", "9.0.0")
    result = CliRunner().invoke(app, ["update", str(project)])
    assert result.exit_code == 2, result.output
    assert f"has no {old_tag}" in result.stderr and "`scaffold template`" in result.stderr
    assert "Unknown revision" not in result.stderr and "Traceback" not in result.stderr
    assert git(project, "status", "--porcelain") == "" and git(project, "rev-parse", "HEAD") == head
    _, new_tag = sync_template_repo()
    assert new_tag != old_tag
    assert f"_commit: {new_tag}" in result.stderr
    answers = project / ".copier-answers.yml"
    answers.write_text(answers.read_text().replace(f"_commit: {old_tag}", f"_commit: {new_tag}"))
    git(project, "commit", "-qam", "take the installed template as the base")
    result = CliRunner().invoke(app, ["update", str(project), "--spec", str(wider_spec(tmp_path))])
    assert result.exit_code == 0, result.output
    assert re.search(r"LinearBlock\(\w+, 24\b", (project / "src" / "proj" / "model.py").read_text())
    TRIED.append(f"remade repository, {installed}")


# --------------------------------------------------------------------------- where the project goes


def test_new_dot_in_an_empty_directory_fills_it_in_place(tmp_path, env):
    """`mkdir proj && cd proj && scaffold new .`: the directory the shell stands in stays."""
    target = tmp_path / "proj"
    target.mkdir()
    inode = target.stat().st_ino
    held = os.open(target, os.O_RDONLY)  # like the shell's current directory
    try:
        result = run_cli("new", ".", "--spec", SPEC, cwd=target, env=env)
        assert result.returncode == 0, result.stderr
        assert target.stat().st_ino == inode
        assert "pyproject.toml" in os.listdir(held) and ".git" in os.listdir(held)
    finally:
        os.close(held)
    assert git(target, "status", "--porcelain") == ""
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".scaffold-tmp")] == []
    assert [p.name for p in target.iterdir() if p.name.endswith(".scaffold-tmp")] == []
    TRIED.append("new . in an empty directory")


@contextlib.contextmanager
def mounted(where: Path, *options: str):
    """A tmpfs (or a bind mount) at `where`, if this machine lets us mount; else skip."""
    args = ["mount", *options, str(where)]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_an_empty_mount_point_is_filled_in_place(tmp_path, env):
    target = tmp_path / "proj"
    target.mkdir()
    with mounted(target, "-t", "tmpfs", "none"):
        result = run_cli("new", "proj", "--spec", SPEC, cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        assert os.path.ismount(target) and (target / "pyproject.toml").is_file()
        assert git(target, "status", "--porcelain") == ""
    TRIED.append("empty mount point")


@contextlib.contextmanager
def read_only(path: Path):
    """Make `path` read-only the way it would be for a user: permissions, or (as root,
    whom permissions do not stop) a read-only bind mount."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")] if not p.is_symlink()}
        for p in modes:
            p.chmod(modes[p] & ~0o222)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    with mounted(path, "--bind", str(path)):
        done = subprocess.run(
            ["mount", "-o", "remount,ro,bind", str(path)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot remount read-only: {done.stderr.strip()}")
        yield


def test_a_read_only_template_repository(tmp_path, env, monkeypatch):
    """Holding the content: `update` and `template` work. New content to publish: one
    clear line (not "internal error: OSError ... a bug in scaffold")."""
    monkeypatch.chdir(tmp_path)
    project = new(tmp_path)
    home = Path(env["SCAFFOLD_HOME"])
    with read_only(home):
        result = run_cli("template", cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        result = run_cli("update", "proj", "--spec", wider_spec(tmp_path), cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        git(project, "commit", "-qam", "wider")
        other = changed_template(tmp_path)
        monkeypatch.setattr(render, "template_source", lambda: other)
        for command in (["template"], ["update", str(project)]):
            result = CliRunner().invoke(app, command)
            assert result.exit_code == 2, (command, result.output)
            assert result.stderr.startswith("error: cannot write the template repository")
            assert "SCAFFOLD_HOME" in result.stderr
        with pytest.raises(GenerateError, match="cannot write"):
            render.new_project(
                tmp_path / "other",
                {
                    "project_name": "other",
                    "from_spec": True,
                    "spec": yaml.safe_load(SPEC.read_text()),
                },
            )
    assert not (tmp_path / "other").exists()
    assert git(project, "status", "--porcelain") == ""
    TRIED.append("read-only template repository")


def test_template_repository_figures():
    if not TRIED:
        pytest.skip("run with the cases above")
    print(f"\ntemplate repository cases: {len(TRIED)} ({'; '.join(TRIED)})")
