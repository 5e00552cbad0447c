"""Atomicity and no clobbering: generation is all or nothing.

A failure is injected at every stage of ``scaffold new`` (validation, template
sync, render, black formatting, git init/add/commit, chmod, the final rename,
a target that appears meanwhile), as an ordinary error and as Ctrl-C
(KeyboardInterrupt), and a real SIGINT, SIGTERM and SIGHUP is sent to a
``scaffold new`` process held at a known moment: at each of its stages, and at
its git commands (no timing is guessed). Afterwards the working directory must
be exactly as before: no project, no ``.*.scaffold-tmp`` staging directory, and
an existing target (a non-empty directory, a file, a symlink) never touched. A
staging directory that SIGKILL left behind is removed by the next run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, git
from typer.testing import CliRunner

from scaffold import render
from scaffold.cli import app
from scaffold.errors import GenerateError, ScaffoldError

SPEC = ROOT / "examples" / "digits-cnn.yaml"
STAGES = [
    "validation",
    "template sync",
    "render",
    "black",
    "git init",
    "git add",
    "git commit",
    "chmod",
    "rename",
    "target taken meanwhile",
]
ERRORS = {
    "error": lambda: RuntimeError("injected failure"),
    "oserror": lambda: OSError(28, "No space left on device"),
    "ctrl-c": lambda: KeyboardInterrupt(),
}
INJECTED: list[str] = []  # stage/error pairs tried (docs/robustness.md)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root: kind, content and mtime; the template repository aside."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] == "scaffold-home":
            continue
        if path.is_symlink():
            out[str(rel)] = ("link", os.readlink(path))
        elif path.is_dir():
            out[str(rel)] = ("dir", path.stat().st_mtime_ns)
        else:
            out[str(rel)] = ("file", path.read_bytes(), path.stat().st_mtime_ns)
    return out


@pytest.fixture
def work(tmp_path, env, monkeypatch):
    """A working directory with a sentinel tree next to where the project would go."""
    (tmp_path / "sentinel" / "deep").mkdir(parents=True)
    (tmp_path / "sentinel" / "deep" / "keep.txt").write_text("keep me\n")
    (tmp_path / "notes.md").write_text("# mine\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def inject(stage: str, make_error, monkeypatch, work: Path) -> None:
    """Make `stage` of generation raise make_error() (once, where it happens)."""
    import black

    import scaffold.builders
    import scaffold.jinja_ext

    def staging(path) -> bool:
        return str(path).endswith(".scaffold-tmp")

    def fail(*args, **kwargs):
        raise make_error()

    if stage == "validation":
        monkeypatch.setattr(scaffold.builders, "plan_from_raw", fail)
    elif stage == "template sync":
        monkeypatch.setattr(render, "sync_template_repo", fail)
    elif stage == "render":  # the third template file fails: some files are already written
        calls = []
        real = scaffold.jinja_ext.scaffold_plan

        def plan(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                raise make_error()
            return real(*args, **kwargs)

        monkeypatch.setattr(scaffold.jinja_ext, "scaffold_plan", plan)
    elif stage == "black":
        calls = []
        real_format = black.format_str

        def format_str(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise make_error()
            return real_format(*args, **kwargs)

        monkeypatch.setattr(black, "format_str", format_str)
    elif stage.startswith("git "):
        command = stage.split()[1]
        real_git = render._git

        def git_(repo, *args, **kwargs):
            if args and args[0] == command and staging(repo):
                raise make_error()
            return real_git(repo, *args, **kwargs)

        monkeypatch.setattr(render, "_git", git_)
    elif stage == "chmod":
        real_chmod = os.chmod

        def chmod(path, *args, **kwargs):
            if staging(path):
                raise make_error()
            return real_chmod(path, *args, **kwargs)

        monkeypatch.setattr(render.os, "chmod", chmod)
    elif stage == "rename":
        real_rename = os.rename

        moved = []

        def rename(src, dst, *args, **kwargs):
            if staging(src):
                raise make_error()
            if staging(os.path.dirname(src)):  # an empty target is filled in place: fail midway
                moved.append(src)
                if len(moved) == 3:
                    raise make_error()
            return real_rename(src, dst, *args, **kwargs)

        monkeypatch.setattr(render.os, "rename", rename)
    elif stage == "target taken meanwhile":  # another process creates the target during the render
        real_git = render._git

        def git_(repo, *args, **kwargs):
            if args and args[0] == "commit" and staging(repo):
                (work / "proj").mkdir()
                (work / "proj" / "theirs.txt").write_text("written meanwhile\n")
            return real_git(repo, *args, **kwargs)

        monkeypatch.setattr(render, "_git", git_)
    else:  # pragma: no cover
        raise AssertionError(stage)


# every stage with every error; "target taken meanwhile" is a race, not an injected error
CASES = [
    (stage, error)
    for stage in STAGES
    for error in ERRORS
    if stage != "target taken meanwhile" or error == "error"
]


@pytest.mark.parametrize(("stage", "error"), CASES)
def test_failure_at_every_stage_leaves_nothing(stage, error, work, monkeypatch):
    """`scaffold new` (the command, in process): a clear failure, and the directory as before."""
    INJECTED.append(f"{stage}/{error}")
    before = snapshot(work)
    inject(stage, ERRORS[error], monkeypatch, work)
    result = CliRunner().invoke(app, ["new", "proj", "--spec", str(SPEC)])
    after = snapshot(work)
    if stage == "target taken meanwhile":
        assert result.exit_code == 2, result.output
        assert "already exists and is not empty" in result.stderr
        assert (work / "proj" / "theirs.txt").read_text() == "written meanwhile\n"
        assert sorted(p.name for p in (work / "proj").iterdir()) == ["theirs.txt"]
        del after["proj"], after["proj/theirs.txt"]
    elif error == "ctrl-c":
        assert result.exit_code != 0  # click: "Aborted!", exit 1
    elif stage == "validation" or (stage == "template sync" and error == "error"):
        assert type(result.exception) is type(
            ERRORS[error]()
        )  # an internal error; main() reports it
    else:
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert after == before, f"left behind: {set(after) ^ set(before)}"


@pytest.mark.parametrize("stage", ["render", "git commit", "rename"])
def test_an_empty_target_directory_survives_a_failure(stage, work, monkeypatch):
    """The empty directory the user made for the project is still there afterwards."""
    (work / "proj").mkdir()
    before = snapshot(work)
    INJECTED.append(f"{stage}/empty target")
    inject(stage, ERRORS["error"], monkeypatch, work)
    data = {"project_name": "proj", "from_spec": True, "spec": yaml.safe_load(SPEC.read_text())}
    with pytest.raises(ScaffoldError):
        render.new_project(work / "proj", data)
    assert (work / "proj").is_dir() and not any((work / "proj").iterdir())
    after = snapshot(work)
    after["proj"] = before["proj"]  # mtime of a recreated directory may differ
    assert after == before


@pytest.mark.parametrize(
    "kind",
    [
        "non-empty dir",
        "hidden file only",
        "file",
        "symlink to dir",
        "symlink to file",
        "broken symlink",
    ],
)
def test_an_existing_target_is_never_touched(kind, work):
    target = work / "proj"
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "data.txt").write_text("elsewhere\n")
    if kind == "non-empty dir":
        target.mkdir()
        (target / "model.py").write_text("# my own model\n")
    elif kind == "hidden file only":
        target.mkdir()
        (target / ".git").mkdir()
    elif kind == "file":
        target.write_text("a file\n")
    elif kind == "symlink to dir":
        target.symlink_to(elsewhere)
    elif kind == "symlink to file":
        target.symlink_to(elsewhere / "data.txt")
    else:
        target.symlink_to(work / "missing")
    before = snapshot(work)
    result = CliRunner().invoke(app, ["new", "proj", "--spec", str(SPEC)])
    assert result.exit_code == 2, result.output
    assert "already exists" in result.stderr and "Traceback" not in result.stderr
    assert snapshot(work) == before
    assert not (work / "scaffold-home").exists()  # refused before anything was written
    with pytest.raises(GenerateError):  # the library refuses too
        render.new_project(
            target,
            {"project_name": "proj", "from_spec": True, "spec": yaml.safe_load(SPEC.read_text())},
        )
    assert snapshot(work) == before


def test_an_interrupted_template_sync_recovers(work, monkeypatch):
    """Ctrl-C halfway through publishing the template: the next `scaffold new` still works."""
    real_git = render._git

    def git_(repo, *args, **kwargs):
        if args and args[0] == "write-tree":  # the work tree was already replaced
            raise KeyboardInterrupt
        return real_git(repo, *args, **kwargs)

    monkeypatch.setattr(render, "_git", git_)
    with pytest.raises(KeyboardInterrupt):
        render.sync_template_repo()
    monkeypatch.setattr(render, "_git", real_git)
    result = CliRunner().invoke(app, ["new", "proj", "--spec", str(SPEC)])
    assert result.exit_code == 0, result.output
    assert git(work / "proj", "status", "--porcelain") == ""


# --------------------------------------------------------------------------- real signals
#
# A real `scaffold new` process is held at a known moment and signalled there:
# at each of its stages (SCAFFOLD_TEST_PAUSE), and while it waits on its N-th git
# command (a git wrapper on PATH holds that command until the signal has landed).
# No timing is guessed, so every signal lands mid-generation, every time.

NEW_STAGES = ["new.staged", "new.rendered", "new.committed"]


def staging_dirs(work: Path) -> list[Path]:
    return [p for p in work.rglob("*.scaffold-tmp")]


@pytest.fixture
def stopper(work, env, tmp_path_factory):
    from signal_helpers import Stopper

    return Stopper(tmp_path_factory.mktemp("stopper"), env)


def new_args():
    return ["-m", "scaffold.cli", "new", "proj", "--spec", SPEC]


def git_points(stopper, work, sig) -> list[int]:
    """Git commands of one `scaffold new` (counted on a complete run, the template already
    published): every fourth one for SIGINT, two for the others."""
    render.sync_template_repo()
    code, _, err, _ = stopper.run(new_args(), work)
    assert code == 0, err
    subprocess.run(["rm", "-rf", str(work / "proj")], check=True)
    calls = stopper.git_calls()
    return list(range(1, calls + 1, 4)) if sig == signal.SIGINT else [calls // 3, 2 * calls // 3]


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"]
)
def test_a_real_signal_mid_generation_leaves_nothing_half_written(sig, work, env, stopper):
    """A signal at every stage and at many git commands of a real `scaffold new`: afterwards
    the directory is exactly as before (no project, no staging directory)."""
    points = [{"stage": stage} for stage in NEW_STAGES] + [
        {"git_call": n} for n in git_points(stopper, work, sig)
    ]
    before = snapshot(work)
    for where in points:
        code, _, stderr, stopped = stopper.run(new_args(), work, sig, **where)
        INJECTED.append(f"real {signal.Signals(sig).name} at {stopped}")
        assert stopped, f"never reached {where}"
        assert "Traceback" not in stderr, stderr
        assert code == 128 + sig, (stopped, code, stderr)
        assert (
            staging_dirs(work) == []
        ), f"staging left after {signal.Signals(sig).name} at {stopped}"
        assert not (work / "proj").exists(), stderr
        assert snapshot(work) == before, stopped
        assert stopper.leftovers() == []
    print(f"\nreal {signal.Signals(sig).name} at {len(points)} points of `scaffold new`")


@pytest.mark.parametrize("empty_target", [False, True], ids=["new directory", "empty directory"])
def test_staging_left_by_sigkill_is_cleaned_by_the_next_run(empty_target, work, env, stopper):
    """SIGKILL cannot be handled: the staging directory stays; the next `scaffold new` there
    removes it (its process is gone) and succeeds. A live one's is never touched."""
    if empty_target:
        (work / "proj").mkdir()
    code, _, _, stopped = stopper.run(new_args(), work, signal.SIGKILL, stage="new.rendered")
    assert stopped and code == -signal.SIGKILL
    left = staging_dirs(work)
    assert len(left) == 1
    live = work / f".other.{os.getpid()}.abcdefgh.scaffold-tmp"  # this test process is alive
    live.mkdir()
    result = subprocess.run(
        [sys.executable, *map(str, new_args())],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert staging_dirs(work) == [live]
    assert git(work / "proj", "status", "--porcelain") == ""
    INJECTED.append("SIGKILL, then a new run")
