"""Render: a validated plan becomes a project, through the Copier template.

Why a template repository: ``copier update`` needs the template to be a git
repository with version tags, reachable at an absolute path recorded in the
project's ``.copier-answers.yml``. A directory inside the installed package is
neither. So scaffold keeps a small git repository per user (by default
``~/.local/share/scaffold/template``; ``SCAFFOLD_HOME`` moves it) and, before
any render, commits the template shipped with the installed scaffold into it
and tags that content ``v<version>`` (``v<version>.postN`` if the same version
shipped different content, as in a development checkout). Upgrading scaffold
therefore adds a newer tag, and ``copier update`` in a project moves to it
with its three-way merge.

Generation is all or nothing: the project is rendered into a temporary
sibling directory, committed, and only then renamed into place. Any failure,
Ctrl-C included, removes the temporary directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

from scaffold import __version__
from scaffold.errors import GenerateError, ScaffoldError, SpecError

PACKAGE_DIR = Path(__file__).resolve().parent
GIT_ENV = {
    "GIT_AUTHOR_NAME": "scaffold",
    "GIT_AUTHOR_EMAIL": "scaffold@localhost",
    "GIT_COMMITTER_NAME": "scaffold",
    "GIT_COMMITTER_EMAIL": "scaffold@localhost",
}


def template_source() -> Path:
    """The template shipped with this scaffold: in the wheel, or in the source tree."""
    for candidate in (PACKAGE_DIR / "template", PACKAGE_DIR.parent / "templates"):
        if (candidate / "copier.yml").is_file():
            return candidate
    raise GenerateError(f"the project template is missing from the installation ({PACKAGE_DIR})")


def scaffold_home() -> Path:
    if os.environ.get("SCAFFOLD_HOME"):
        return Path(os.environ["SCAFFOLD_HOME"]).expanduser().resolve()
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return (Path(data) / "scaffold").resolve()


def _git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    if shutil.which("git") is None:
        raise GenerateError("git is not installed; scaffold needs it to create projects and to update them")
    result = subprocess.run(
        ["git", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV, **(env or {})},
    )
    if result.returncode != 0:
        raise GenerateError(f"git {' '.join(args)} failed in {repo}: {result.stderr.strip()}")
    return result.stdout.strip()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


TEMPLATE_MARKER = "scaffold-template-repository"  # a file in .git/ of the repositories scaffold made


def _owned_template_repo(repo: Path, source: Path) -> bool:
    """True if ``repo`` may be overwritten with the template: it does not exist, is an
    empty directory, or is a template repository that scaffold made. Syncing replaces
    the work tree and commits, so a path read from a project's ``_src_path`` must
    never lead here to somebody else's repository (or home directory)."""
    if not repo.exists():
        return True
    if not repo.is_dir() or repo.is_symlink():
        return False
    entries = {child.name for child in repo.iterdir()}
    if not (repo / ".git").is_dir():
        return not entries
    if (repo / ".git" / TEMPLATE_MARKER).is_file():
        return True
    try:  # made by an older scaffold: nothing but template commits
        subjects = _git(repo, "log", "--all", "--format=%s").splitlines()
    except GenerateError:
        subjects = []
    if subjects:
        return all(subject.startswith("scaffold template ") for subject in subjects)
    # no commits yet: a first sync that was interrupted, holding template files only
    return entries <= {".git"} | {child.name for child in source.iterdir()}


def sync_template_repo(
    source: Path | None = None, version: str | None = None, repo: Path | None = None
) -> tuple[Path, str]:
    """Make sure the template repository holds ``source`` at a tag; return (repo, tag).

    The same content always maps to the same tag, so calling this before every
    render is cheap and idempotent. A directory that is not a template repository
    made by scaffold is refused, never overwritten.
    """
    source = source or template_source()
    version = version or __version__
    repo = Path(os.path.abspath(repo or scaffold_home() / "template"))
    refusal = GenerateError(
        f"{repo} is not a template repository made by scaffold; refusing to overwrite it. "
        "Point SCAFFOLD_HOME (or the project's _src_path) at scaffold's own template repository"
    )
    if not _owned_template_repo(repo, source):  # checked before the lock file is written beside it
        raise refusal
    with _locked(repo.parent / ".template.lock"):
        if not _owned_template_repo(repo, source):
            raise refusal
        if not (repo / ".git").is_dir():
            repo.mkdir(parents=True, exist_ok=True)
            _git(repo, "init", "-q", "-b", "main")
            (repo / ".git" / TEMPLATE_MARKER).write_text("made by scaffold; `scaffold update` overwrites this work tree\n")
        for child in repo.iterdir():
            if child.name != ".git":
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        shutil.copytree(source, repo, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        _git(repo, "add", "-A")
        tree = _git(repo, "write-tree")
        tags = _git(repo, "tag", "--list", "v*").split()
        for tag in tags:
            if _git(repo, "rev-parse", f"{tag}^{{tree}}") == tree:
                _git(repo, "reset", "-q", "--hard", tag)  # a clean work tree at that content
                return repo, tag
        tag = f"v{version}"
        if tag in tags:
            posts = [int(m.group(1)) for t in tags if (m := re.fullmatch(rf"v{re.escape(version)}\.post(\d+)", t))]
            tag = f"v{version}.post{max(posts, default=0) + 1}"
        _git(repo, "commit", "-q", "--allow-empty", "-m", f"scaffold template {tag}")
        _git(repo, "tag", tag)
        return repo, tag


def check_target(dest: Path) -> None:
    """Refuse to touch an existing file or non-empty directory."""
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise GenerateError(f"{dest} already exists and is not a directory; choose another name")
    if dest.is_dir() and any(dest.iterdir()):
        raise GenerateError(f"{dest} already exists and is not empty; scaffold never overwrites a directory")


def new_project(
    dest: Path,
    data: dict[str, Any],
    *,
    interactive: bool = False,
    quiet: bool = True,
    git_init: bool = True,
) -> Path:
    """Render the template into ``dest`` atomically and make it a git repository.

    ``data`` are Copier answers (``project_name``, and ``from_spec``/``spec``
    for a spec file). With ``interactive`` Copier asks the remaining questions.
    """
    from copier import Settings, run_copy  # imported here: it is the slow part of startup

    dest = Path(os.path.abspath(dest))
    check_target(dest)
    if not dest.parent.is_dir():
        raise GenerateError(f"{dest.parent} does not exist; create it first")
    try:
        repo, tag = sync_template_repo()
    except OSError as exc:
        raise GenerateError(f"cannot publish the template into {scaffold_home()} ({exc.strerror or exc})") from None
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".scaffold-tmp", dir=dest.parent))
    except OSError as exc:
        raise GenerateError(f"cannot create a directory in {dest.parent} ({exc.strerror or exc})") from None
    emptied = False  # whether an empty target directory was removed to rename into its place
    try:
        run_copy(
            str(repo),
            str(staging),
            data=data,
            vcs_ref=tag,
            defaults=not interactive,
            unsafe=True,
            quiet=quiet,
            overwrite=True,
            settings=Settings(),  # the template's defaults, not the user's copier settings
        )
        if git_init:
            _git(staging, "init", "-q", "-b", "main")
            _git(staging, "add", "-A")
            _git(staging, "commit", "-q", "-m", f"Generate project with scaffold {__version__} ({tag})")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp made it private
        check_target(dest)  # still free?
        if dest.is_dir():
            dest.rmdir()  # empty; rename() then takes its place
            emptied = True
        os.rename(staging, dest)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if emptied and not dest.exists():
            with contextlib.suppress(OSError):
                dest.mkdir()  # give the user's empty directory back
        if isinstance(exc, (ScaffoldError, KeyboardInterrupt)) or not isinstance(exc, Exception):
            raise  # Copier's CopierAnswersInterrupt is a KeyboardInterrupt too: Ctrl-C stays Ctrl-C
        raise _explain(exc) from exc
    return dest


def read_answers(project: Path) -> dict[str, Any]:
    """The project's stored Copier answers."""
    import yaml

    path = project / ".copier-answers.yml"
    if not path.is_file():
        raise GenerateError(f"{project} has no .copier-answers.yml; is it a project made by scaffold?")
    answers = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(answers, dict):
        raise GenerateError(f"{path} is not a mapping of answers; restore it from git")
    return answers


def update_project(project: Path, data: dict[str, Any] | None = None, *, quiet: bool = True) -> tuple[str, list[str]]:
    """Run ``copier update`` on a generated project with the newest template.

    The spec (the stored one, or a new one in ``data``) is validated with the
    engine before anything changes. Returns the template tag and the files
    left with conflict markers.
    """
    from copier import Settings, run_update

    from scaffold.builders import plan_from_raw

    project = project.resolve()
    answers = read_answers(project)
    data = dict(data or {})
    if "spec" not in data and answers.get("from_spec"):
        # Pass the stored spec back explicitly: Copier would silently replace a stored
        # answer that the new template rejects with a default; this way it is checked.
        data["spec"] = answers.get("spec")
    if "spec" in data:
        name = answers.get("project_name")
        data["spec"] = {**data["spec"], "project": name} if isinstance(data["spec"], dict) else data["spec"]
        plan_from_raw(data["spec"], name)  # refuse an invalid spec before anything changes
    if _git(project, "status", "--porcelain"):
        raise GenerateError(f"{project} has uncommitted changes; commit or stash them before updating")
    # Publish the installed template into the repository this project came from
    # (its _src_path), so that its old version and the new one sit side by side.
    recorded = Path(str(answers.get("_src_path", "")))
    if not (recorded.is_absolute() and (recorded / ".git").is_dir()):
        raise GenerateError(
            f"the template repository recorded in .copier-answers.yml ({recorded}) is missing; "
            "updates need the version the project was made from. Restore that directory, or "
            "set _src_path to a copy of it and commit"
        )
    _, tag = sync_template_repo(repo=recorded)
    try:
        run_update(
            str(project),
            data=data,
            vcs_ref=tag,
            defaults=True,
            overwrite=True,
            unsafe=True,
            quiet=quiet,
            conflict="inline",
            skip_answered=True,
            settings=Settings(),
        )
    except ScaffoldError:
        raise
    except Exception as exc:
        raise _explain(exc) from exc
    conflicts = _git(project, "diff", "--name-only", "--diff-filter=U").split()
    return tag, conflicts


def _explain(exc: BaseException) -> ScaffoldError:
    """Turn an exception from Copier or Jinja into a message for people."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, SpecError):
            return cause
        cause = cause.__cause__ or cause.__context__
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else name
    if "Interactive" in name or "EOF" in name:
        return GenerateError(
            "no terminal to ask questions on; pass --spec FILE, or --defaults to take every default"
        )
    return GenerateError(f"generation failed ({name}): {text}")
