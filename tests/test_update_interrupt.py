"""An interrupted `scaffold update` leaves the project exactly as before, or finished.

A real `scaffold update` process (a template upgrade that changes model.py, the
tests and the answers and adds a file, plus a changed spec) is stopped with a
real signal at known moments: at each of scaffold's stages, and while it waits
on its N-th git command (scaffold's own and Copier's, spread over the whole
update), the signal sent while that command runs. Afterwards the project is
compared with its state before (HEAD, index, status with untracked and ignored
files, every file's bytes and mode) and with the state a complete update gives:
it must be one of the two, and the message must say which. Before the fix, a
SIGINT in the middle left `.copier-answers.yml` at the new version, model.py
with the template's changes but without the user's line, and an untracked file.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import yaml
from conftest import GIT_IDENTITY, ROOT, git, run_cli
from signal_helpers import Stopper, differences, project_state

EXAMPLE = ROOT / "examples" / "conv-vae.yaml"
NAME = "vision"
USER_LINE = "USER_LINE = 1"
# `scaffold update` with the template of a newer scaffold (9.0.0): the process is real,
# only which template counts as installed is changed.
DRIVER = """
import sys
from pathlib import Path
from scaffold import render
newer = Path(sys.argv[1])
render.template_source = lambda: newer
render.__version__ = "9.0.0"
sys.argv = ["scaffold", *sys.argv[2:]]
from scaffold.cli import main
main()
"""
STAGES = ["update.synced", "update.cloned", "update.merged", "update.prepared", "update.writing"]
TRIED: dict[str, int] = {}


@pytest.fixture(scope="module")
def upgrade(tmp_path_factory):
    """A project with a committed user line, a newer template published, and the state a
    complete update gives (measured once, with the number of git commands it runs)."""
    from scaffold.render import read_answers, sync_template_repo, template_source

    root = tmp_path_factory.mktemp("interrupt")
    env = {
        **os.environ,
        **GIT_IDENTITY,
        "SCAFFOLD_HOME": str(root / "home"),
        "COPIER_SETTINGS_PATH": str(root / "none.yml"),
    }
    result = run_cli("new", NAME, "--spec", EXAMPLE, cwd=root, env=env)
    assert result.returncode == 0, result.stderr
    project = root / NAME
    model = project / "src" / NAME / "model.py"
    model.write_text(model.read_text() + f"\n{USER_LINE}\n")
    git(project, "commit", "-qam", "my line")
    newer = root / "template-9"
    shutil.copytree(template_source(), newer, ignore=shutil.ignore_patterns("__pycache__"))
    extra = newer / "project" / "src" / "{{package_name}}" / "extras.py.jinja"
    extra.write_text('"""Added by template 9 for {{ project_name }}."""\n\nVERSION = 9\n')
    readme = next((newer / "project").glob("README.md*"))
    readme.write_text(readme.read_text() + "\n<!-- template 9 -->\n")
    _, tag = sync_template_repo(newer, "9.0.0", repo=Path(read_answers(project)["_src_path"]))
    spec = yaml.safe_load(EXAMPLE.read_text())
    spec["model"]["latent"] = 32
    (root / "latent32.yaml").write_text(yaml.safe_dump(spec))
    stopper = Stopper(root, env)
    args = ["-c", DRIVER, newer, "update", project, "--spec", root / "latent32.yaml"]
    before = project_state(project)
    code, out, err, _ = stopper.run(args, root)
    assert code == 0, err
    after = project_state(project)
    assert differences(before, after), "the update changed nothing"
    assert USER_LINE in model.read_text() and (project / "src" / NAME / "extras.py").is_file()
    assert stopper.leftovers() == []
    calls = stopper.git_calls()
    reset(project)
    assert project_state(project) == before
    return {
        "root": root,
        "project": project,
        "args": args,
        "stopper": stopper,
        "before": before,
        "after": after,
        "calls": calls,
        "tag": tag,
    }


def reset(project: Path) -> None:
    git(project, "reset", "-q", "--hard", "HEAD")
    git(project, "clean", "-qfd")


def check(upgrade, sig, **where) -> str:
    """One interrupted update: the project is as before (and it says so) or complete."""
    project, stopper = upgrade["project"], upgrade["stopper"]
    code, out, err, stopped = stopper.run(upgrade["args"], upgrade["root"], sig, **where)
    assert stopped, f"never reached {where}: {err}"
    assert "Traceback" not in err, err
    state = project_state(project)
    assert stopper.leftovers() == [], f"left in TMPDIR after {stopped}"
    if state == upgrade["before"]:
        assert code == 128 + sig, (stopped, code, err)
        assert "interrupted" in err and "unchanged" in err, err
        outcome = "unchanged"
    else:
        assert state == upgrade["after"], (
            f"half an update after {signal.Signals(sig).name} at "
            f"{stopped}: {differences(upgrade['before'], state)[:8]}"
        )
        assert code == 0 and f"updated {project}" in out, (code, out, err)
        outcome = "finished"
        reset(project)
    TRIED[outcome] = TRIED.get(outcome, 0) + 1
    return outcome


def test_sigint_at_any_git_command_of_an_update(upgrade):
    """SIGINT while scaffold waits on its N-th git command, for N over the whole update."""
    calls = upgrade["calls"]
    points = sorted({1, 3, *(calls * k // 6 for k in range(1, 6)), calls - 1, calls} - {0})
    outcomes = [check(upgrade, signal.SIGINT, git_call=n) for n in points]
    assert (
        outcomes.count("unchanged") >= len(points) - 2
    )  # only the last commands come after the merge
    TRIED["git commands in an update"] = calls
    TRIED["git-command points"] = len(points)


@pytest.mark.parametrize("stage", STAGES)
def test_sigint_at_each_stage_of_an_update(upgrade, stage):
    outcome = check(upgrade, signal.SIGINT, stage=stage)
    # the last stage is inside the few file writes, where signals are held: it finishes
    assert outcome == ("finished" if stage == "update.writing" else "unchanged")
    TRIED["stages"] = TRIED.get("stages", 0) + 1


@pytest.mark.parametrize(
    ("sig", "stage"),
    [
        (signal.SIGTERM, "update.merged"),
        (signal.SIGHUP, "update.merged"),
        (signal.SIGHUP, "update.writing"),
    ],
    ids=["SIGTERM", "SIGHUP", "SIGHUP-held"],
)
def test_sigterm_and_sighup_too(upgrade, sig, stage):
    """SIGTERM (kill) and SIGHUP (a closed terminal) are handled like Ctrl-C."""
    outcome = check(upgrade, sig, stage=stage)
    assert outcome == ("finished" if stage == "update.writing" else "unchanged")


def test_after_all_that_an_update_still_works(upgrade):
    code, out, err, _ = upgrade["stopper"].run(upgrade["args"], upgrade["root"])
    assert code == 0, err
    assert project_state(upgrade["project"]) == upgrade["after"]
    assert (
        yaml.safe_load((upgrade["project"] / ".copier-answers.yml").read_text())["_commit"]
        == upgrade["tag"]
    )
    reset(upgrade["project"])
    print(f"\nupdate interruptions: {TRIED}")
