"""The user's own git configuration never hangs or breaks scaffold.

Each case runs the real CLI with a throwaway HOME and GIT_CONFIG_GLOBAL holding
settings a user may well have: signed tags (`tag.gpgSign`, which turns `git tag`
into an annotated tag that opens an editor), signed commits with no usable key
(a gpg program that fails), and a global `core.hooksPath` whose commit-msg hook
demands a prefix and whose post-checkout hook fails. The editor, the gpg
program and each hook write a marker when git runs them; the editor then waits
(as a real one would, for a person), so a hang is seen at once as its marker.

scaffold's own template repository must not use any of it (no marker from
`scaffold template`, unsigned template commits); the project's first commit
uses the user's settings: when they refuse it, the project is still created,
uncommitted, and the message says what to do; `scaffold update` runs none of
the user's hooks, signing or editor.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import GIT_IDENTITY, ROOT

SPEC = ROOT / "examples" / "tabular-mlp.yaml"
CONFIGS = {
    "signed tags": {"tag": {"gpgSign": "true"}},
    "signed commits, no key": {"commit": {"gpgsign": "true"}, "user": {"signingkey": "0xDEADBEEF"}},
    "commit-msg hook demanding a prefix": {"core": {"hooksPath": "HOOKS"}},
    "all of them": {
        "tag": {"gpgSign": "true"},
        "commit": {"gpgsign": "true"},
        "user": {"signingkey": "0xDEADBEEF"},
        "core": {"hooksPath": "HOOKS"},
    },
}
TRIED: list[str] = []


def user_environment(root: Path, settings: dict) -> tuple[dict, Path]:
    """HOME and GIT_CONFIG_GLOBAL of a user with `settings`; returns (env, marker dir)."""
    home, marks, hooks = root / "user-home", root / "marks", root / "hooks"
    for path in (home, marks, hooks):
        path.mkdir(parents=True, exist_ok=True)
    editor = root / "editor"
    editor.write_text(
        f'#!/bin/sh\ntouch "{marks}/editor"\nwhile [ ! -e "{root}/go" ]; do sleep 0.01; done\n'
    )
    gpg = root / "gpg"
    gpg.write_text(
        f'#!/bin/sh\ntouch "{marks}/gpg"\necho "gpg: signing failed: No secret key" >&2\nexit 2\n'
    )
    (hooks / "commit-msg").write_text(
        f'#!/bin/sh\ntouch "{marks}/commit-msg"\n'
        'grep -q "^JIRA-" "$1" || { echo "commit message must start with JIRA-" >&2; exit 1; }\n'
    )
    (hooks / "post-checkout").write_text(f'#!/bin/sh\ntouch "{marks}/post-checkout"\nexit 1\n')
    for script in (editor, gpg, hooks / "commit-msg", hooks / "post-checkout"):
        script.chmod(0o755)
    config = {
        "user": {"name": "Test User", "email": "test@example.invalid"},
        "core": {"editor": str(editor)},
        "gpg": {"program": str(gpg)},
    }
    for section, values in settings.items():
        config.setdefault(section, {}).update(
            {k: v.replace("HOOKS", str(hooks)) for k, v in values.items()}
        )
    text = "".join(
        f"[{section}]\n" + "".join(f"\t{k} = {v}\n" for k, v in values.items())
        for section, values in config.items()
    )
    (home / ".gitconfig").write_text(text)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("GIT_EDITOR", "EDITOR", "VISUAL") and not k.startswith("GIT_CONFIG")
    }
    env.update(
        GIT_IDENTITY,
        HOME=str(home),
        GIT_CONFIG_GLOBAL=str(home / ".gitconfig"),
        XDG_CONFIG_HOME=str(home / ".config"),
        SCAFFOLD_HOME=str(root / "scaffold-home"),
        COPIER_SETTINGS_PATH=str(root / "none.yml"),
    )
    return env, marks


def scaffold(root: Path, env: dict, *args) -> subprocess.CompletedProcess:
    """The CLI, watched for an editor: git opening one is a hang, reported at once."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "scaffold.cli", *map(str, args)],
        cwd=root,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    marks = root / "marks"
    deadline = time.monotonic() + 600  # a safety net, not a timing
    while proc.poll() is None and not (marks / "editor").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    if proc.poll() is None:
        proc.kill()
        (root / "go").touch()
        proc.communicate()
        pytest.fail(f"`scaffold {' '.join(map(str, args))}` hangs: git opened the user's editor")
    out, err = proc.communicate()
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def marks_of(root: Path) -> set[str]:
    found = {p.name for p in (root / "marks").iterdir()}
    for p in (root / "marks").iterdir():
        p.unlink()
    return found


def plain_git(path: Path, *args: str) -> subprocess.CompletedProcess:
    """git without any user configuration (to inspect what scaffold made)."""
    env = {
        **os.environ,
        **GIT_IDENTITY,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    return subprocess.run(["git", *args], cwd=path, env=env, capture_output=True, text=True)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_users_git_configuration_never_hangs_or_breaks_scaffold(name, tmp_path):
    TRIED.append(name)
    env, marks = user_environment(tmp_path, CONFIGS[name])
    settings = CONFIGS[name]

    # the template repository: none of the user's settings (no editor, gpg or hook ran)
    result = scaffold(tmp_path, env, "template")
    assert result.returncode == 0, result.stderr
    assert marks_of(tmp_path) == set()
    repo = tmp_path / "scaffold-home" / "template"
    commits = plain_git(repo, "rev-list", "--all").stdout.split()
    assert commits and all(
        "gpgsig" not in plain_git(repo, "cat-file", "commit", c).stdout for c in commits
    )
    tags = plain_git(repo, "for-each-ref", "--format=%(objecttype)", "refs/tags").stdout.split()
    assert tags == ["commit"]  # a plain tag, never an annotated (signed) one

    # a new project: created whatever the user's settings do to its first commit
    result = scaffold(tmp_path, env, "new", "proj", "--spec", SPEC)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    project = tmp_path / "proj"
    assert (project / "src" / "proj" / "model.py").is_file()
    refuses = "commit" in settings or "core" in settings
    head = plain_git(project, "rev-parse", "-q", "--verify", "HEAD")
    if refuses:
        assert head.returncode != 0  # not committed ...
        assert (
            "first commit failed" in result.stderr and "git commit" in result.stderr
        ), result.stderr
        assert plain_git(project, "status", "--porcelain").stdout.startswith(
            "A  "
        )  # ... but all staged
        ran = marks_of(tmp_path)
        assert ran & {"gpg", "commit-msg"}, ran  # the user's own settings were honoured
        # the update says what to do first
        result = scaffold(tmp_path, env, "update", "proj")
        assert result.returncode == 2 and "uncommitted" in result.stderr
        # what the message suggests, for this one commit
        done = subprocess.run(
            ["git", "commit", "-q", "--no-verify", "--no-gpg-sign", "-m", "Generate project"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, done.stderr
    else:
        assert head.returncode == 0, result.stderr
        assert "warning" not in result.stderr, result.stderr
    marks_of(tmp_path)

    # an update: none of the user's hooks, signing or editor
    spec = yaml.safe_load(SPEC.read_text())
    spec["model"]["mlp"][0]["features"] = 24
    (tmp_path / "wider.yaml").write_text(yaml.safe_dump(spec))
    result = scaffold(tmp_path, env, "update", "proj", "--spec", "wider.yaml")
    assert result.returncode == 0, result.stderr
    assert "(in_features, 24" in (project / "src" / "proj" / "model.py").read_text()
    assert marks_of(tmp_path) == set()


def test_git_configuration_figures():
    if not TRIED:
        pytest.skip("run with the cases above")
    print(f"\ngit configurations tried: {len(TRIED)} ({'; '.join(TRIED)})")
