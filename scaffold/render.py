"""Render: a validated plan becomes a project, through the Copier template.

Why a template repository: ``copier update`` needs the template to be a git
repository with version tags, reachable at an absolute path recorded in the
project's ``.copier-answers.yml``. A directory inside the installed package is
neither. So scaffold keeps a small git repository per user (by default
``~/.local/share/scaffold/template``; ``SCAFFOLD_HOME`` moves it) and, before
any render, commits the template shipped with the installed scaffold into it
and tags that content ``v<version>+t<tree>`` (``v<version>.postN+t<tree>`` when
the same version shipped different content, as in a development checkout). The
tree hash makes a tag name a function of the content: a tag never names two
contents, even after the repository is deleted and made again. Upgrading
scaffold therefore adds a newer tag, and ``copier update`` in a project moves
to it with its three-way merge. The template repository's git commands ignore
the user's git configuration (signing, hooks, editor): it is scaffold's own.

Generation is all or nothing: the project is rendered into a temporary
directory (a sibling of the target, or inside an existing empty target, which
is filled in place, never replaced), committed, and only then moved into
place. Any failure, Ctrl-C included, removes the temporary directory.

An update is all or nothing too: Copier merges in a temporary clone of the
project, and the result is written into the project at the end, with
SIGINT/SIGTERM/SIGHUP held for those few file writes. An interrupted update
leaves the project exactly as it was. An update holds a lock in the project's
git directory from start to end; a second update of the same project is
refused, naming the first.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from scaffold import __version__
from scaffold.errors import GenerateError, GitError, ScaffoldError, SpecError

PACKAGE_DIR = Path(__file__).resolve().parent
GIT_ENV = {
    "GIT_AUTHOR_NAME": "scaffold",
    "GIT_AUTHOR_EMAIL": "scaffold@localhost",
    "GIT_COMMITTER_NAME": "scaffold",
    "GIT_COMMITTER_EMAIL": "scaffold@localhost",
}
# git never waits for a person when scaffold runs it: no editor, no prompt, no pager
GIT_NO_PROMPT = {
    "GIT_EDITOR": "true",
    "GIT_SEQUENCE_EDITOR": "true",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_PAGER": "cat",
}
# settings of the user's that must not apply to scaffold's own git commands
GIT_OVERRIDES = {"commit.gpgSign": "false", "tag.gpgSign": "false", "core.hooksPath": os.devnull}
PAUSE_ENV = (
    "SCAFFOLD_TEST_PAUSE"  # STAGE:FILE, for tests: write FILE at STAGE and wait for a signal
)
HELD_ENV = "SCAFFOLD_TEST_HELD"  # FILE, for tests: touched when a signal arrives while held
HELD_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)
_pending: list[int] = []  # signals that arrived while held
# what the last call finished (read by the CLI when a signal lands just after it)
finished: dict[str, Path | None] = {"new": None, "update": None}


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


def git_env(*, user_config: bool = True, user_hooks: bool = False) -> dict[str, str]:
    """Environment for a git command of scaffold's.

    ``user_config=False``: the user's global and system configuration are not read
    at all (the template repository). ``user_hooks=False``: their signing and hook
    settings are overridden (everything but the project's first commit)."""
    env = {**GIT_NO_PROMPT, **GIT_ENV}
    count = 0
    if user_config:
        with contextlib.suppress(ValueError):
            count = int(os.environ.get("GIT_CONFIG_COUNT", "0") or 0)
    else:
        env.update(GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1")
    if not user_hooks:
        for key, value in GIT_OVERRIDES.items():
            env[f"GIT_CONFIG_KEY_{count}"] = key
            env[f"GIT_CONFIG_VALUE_{count}"] = value
            count += 1
    env["GIT_CONFIG_COUNT"] = str(count)
    return env


def _git_run(repo: Path, args: tuple[str, ...], env, isolated, user_hooks, input, text):
    if shutil.which("git") is None:
        raise GenerateError(
            "git is not installed; scaffold needs it to create projects and to update them"
        )
    kwargs: dict[str, Any] = (
        {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
    )
    return subprocess.run(
        ["git", *args],
        cwd=repo,
        capture_output=True,
        text=text,
        env={
            **os.environ,
            **git_env(user_config=not isolated, user_hooks=user_hooks),
            **(env or {}),
        },
        **kwargs,
    )


def _git(
    repo: Path,
    *args: str,
    env: dict[str, str] | None = None,
    isolated: bool = False,
    user_hooks: bool = False,
    input: str | None = None,
) -> str:
    result = _git_run(repo, args, env, isolated, user_hooks, input, True)
    if result.returncode != 0:
        stderr = result.stderr.strip()
        raise GitError(f"git {' '.join(args)} failed in {repo}: {stderr}", stderr=stderr)
    return result.stdout.strip()


def _git_bytes(
    repo: Path, *args: str, input: bytes | None = None, env: dict[str, str] | None = None
) -> bytes:
    result = _git_run(repo, args, env, False, False, input, False)
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace").strip()
        raise GitError(f"git {' '.join(args)} failed in {repo}: {stderr}", stderr=stderr)
    return result.stdout


def checkpoint(stage: str) -> None:
    """A test hook: with SCAFFOLD_TEST_PAUSE=STAGE:FILE in the environment, write FILE
    when the process reaches STAGE and wait there until a signal arrives. Tests
    interrupt a real process at a known moment this way, instead of guessing timings."""
    wanted, sep, marker = os.environ.get(PAUSE_ENV, "").partition(":")
    if not sep or wanted != stage:
        return
    Path(marker + ".tmp").write_text(f"{os.getpid()} {stage}\n")
    os.replace(marker + ".tmp", marker)
    while not _pending:  # a handler that raises ends the wait; a held signal is recorded
        time.sleep(0.1)  # not signal.pause(): a signal just before it would be waited for forever


@contextlib.contextmanager
def signals_held() -> Iterator[list[int]]:
    """Hold SIGINT, SIGTERM and SIGHUP for a short step that must not stop halfway;
    yields the list of those that arrived (the caller finishes, then reports them)."""
    _pending.clear()
    previous = {}

    def hold(signum, frame) -> None:
        _pending.append(signum)
        if os.environ.get(HELD_ENV):  # tests wait for this file, not for a guessed moment
            Path(os.environ[HELD_ENV]).touch()

    if threading.current_thread() is threading.main_thread():
        for sig in HELD_SIGNALS:
            with contextlib.suppress(ValueError, OSError):
                previous[sig] = signal.signal(sig, hold)
    try:
        yield _pending
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


TEMPLATE_MARKER = (
    "scaffold-template-repository"  # a file in .git/ of the repositories scaffold made
)


def _owned_template_repo(repo: Path, source: Path) -> bool:
    """True if ``repo`` may be written with the template: it does not exist, is an
    empty directory, or is a template repository that scaffold made. Syncing commits
    and checks out, so a path read from a project's ``_src_path`` must never lead
    here to somebody else's repository (or home directory)."""
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
        subjects = _git(repo, "log", "--all", "--format=%s", isolated=True).splitlines()
    except GenerateError:
        subjects = []
    if subjects:
        return all(subject.startswith("scaffold template ") for subject in subjects)
    # no commits yet: a first sync that was interrupted, holding template files only
    return entries <= {".git"} | {child.name for child in source.iterdir()}


def _source_tree(repo: Path, source: Path, scratch: Path, read_only: bool) -> str:
    """The git tree of the template in ``source``, computed with a scratch index (and,
    ``read_only``, scratch object storage): the repository's work tree is not read."""
    env = {
        "GIT_DIR": str(repo / ".git"),
        "GIT_WORK_TREE": str(source),
        "GIT_INDEX_FILE": str(scratch / "index"),
    }
    if read_only:
        (scratch / "objects").mkdir()
        env.update(
            GIT_OBJECT_DIRECTORY=str(scratch / "objects"),
            GIT_ALTERNATE_OBJECT_DIRECTORIES=str(repo / ".git" / "objects"),
        )
    excluded = (":(exclude,glob)**/__pycache__/**", ":(exclude,glob)**/*.pyc")
    _git(source, "add", "-A", "--", ".", *excluded, env=env, isolated=True)
    return _git(source, "write-tree", env=env, isolated=True)


def _tag_trees(repo: Path) -> dict[str, str]:
    """Every version tag of the template repository and the tree it names."""
    tags = _git(
        repo, "for-each-ref", "--format=%(refname:strip=2)", "refs/tags/v*", isolated=True
    ).split()
    if not tags:
        return {}
    trees = _git(
        repo, "rev-parse", *(f"refs/tags/{tag}^{{tree}}" for tag in tags), isolated=True
    ).split()
    return dict(zip(tags, trees))


def _new_tag(version: str, tree: str, tags: dict[str, str]) -> str:
    """``v<version>+t<tree>``, or ``v<version>.postN+t<tree>`` after other contents of
    the same version: newer contents sort higher for plain ``copier update``, and the
    tree hash keeps one name for one content, even in a repository made again."""
    same = re.compile(rf"v{re.escape(version)}(?:\.post(\d+))?(?:\+.*)?")
    posts = [int(m.group(1) or 0) for tag in tags if (m := same.fullmatch(tag))]
    base = f"v{version}" if not posts else f"v{version}.post{max(posts) + 1}"
    return f"{base}+t{tree[:10]}"


def _writable(repo: Path) -> bool:
    """Whether scaffold can write the template repository (and its lock file)."""
    if (repo / ".git").is_dir():
        paths = [
            repo.parent,
            repo,
            repo / ".git",
            repo / ".git" / "objects",
            repo / ".git" / "refs" / "tags",
        ]
        return all(os.access(path, os.W_OK) for path in paths if path.exists())
    existing = repo
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return os.access(existing, os.W_OK)


def _unwritable(repo: Path, why: str) -> GenerateError:
    return GenerateError(
        f"cannot write the template repository {repo} ({why}); make it writable "
        f"(for example `chmod -R u+w {repo}`), or set SCAFFOLD_HOME to a writable directory"
    )


def sync_template_repo(
    source: Path | None = None, version: str | None = None, repo: Path | None = None
) -> tuple[Path, str]:
    """Make sure the template repository holds ``source`` at a tag; return (repo, tag).

    The same content always maps to the same tag, so calling this before every
    render is cheap and idempotent. A directory that is not a template repository
    made by scaffold is refused, never overwritten; files in its work tree that the
    template did not put there are left alone. A read-only repository that already
    holds the content is used as it is.
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
    if not _writable(repo):
        found = None
        if (repo / ".git").is_dir():
            with (
                contextlib.suppress(GenerateError, OSError),
                tempfile.TemporaryDirectory(prefix="scaffold-") as tmp,
            ):
                tree = _source_tree(repo, source, Path(tmp), read_only=True)
                found = next((tag for tag, have in _tag_trees(repo).items() if have == tree), None)
        if found:
            return repo, found
        raise _unwritable(repo, "permission denied, or a read-only file system")
    try:
        with _locked(repo.parent / ".template.lock"):
            if not _owned_template_repo(repo, source):
                raise refusal
            return repo, _sync_locked(repo, source, version)
    except OSError as exc:
        raise _unwritable(repo, exc.strerror or str(exc)) from None
    except GitError as exc:
        if any(word in exc.stderr for word in ("Permission denied", "Read-only file system")):
            raise _unwritable(repo, exc.stderr.splitlines()[-1]) from None
        raise


def _sync_locked(repo: Path, source: Path, version: str) -> str:
    if not (repo / ".git").is_dir():
        repo.mkdir(parents=True, exist_ok=True)
        _git(repo, "init", "-q", "-b", "main", isolated=True)
        (repo / ".git" / TEMPLATE_MARKER).write_text(
            "made by scaffold; scaffold checks the template out here and commits it\n"
        )
    with tempfile.TemporaryDirectory(prefix="scaffold-") as tmp:
        tree = _source_tree(repo, source, Path(tmp), read_only=False)
    tags = _tag_trees(repo)
    tag = next((tag for tag, have in tags.items() if have == tree), None)
    if tag is None:
        tag = _new_tag(version, tree, tags)
        parent = ""
        with contextlib.suppress(GitError):  # no commit yet
            parent = _git(repo, "rev-parse", "-q", "--verify", "HEAD^{commit}", isolated=True)
        parents = ("-p", parent) if parent else ()
        # plumbing: no hooks, no signing, no editor, whatever the user's configuration says
        commit = _git(
            repo, "commit-tree", tree, *parents, "-m", f"scaffold template {tag}", isolated=True
        )
        _git(repo, "update-ref", f"refs/tags/{tag}", commit, "", isolated=True)
    # the work tree at that content, for plain `copier copy`; other files stay
    _git(repo, "reset", "-q", "--hard", f"refs/tags/{tag}", isolated=True)
    return tag


def _staging_owner(path: Path) -> int | None:
    """The process id in a staging directory's name (``.NAME.PID.XXXX.scaffold-tmp``)."""
    match = re.fullmatch(r"\.[^.]+\.(\d+)\.[^.]+\.scaffold-tmp", path.name)
    return int(match.group(1)) if match else None


def _is_stale_staging(path: Path) -> bool:
    """A staging directory left by a scaffold process that no longer runs (SIGKILL)."""
    pid = _staging_owner(path)
    if pid is None or pid == os.getpid() or path.is_symlink() or not path.is_dir():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False
    return False


def _remove_stale_staging(directory: Path) -> None:
    with contextlib.suppress(OSError):
        for path in list(directory.iterdir()):
            if _is_stale_staging(path):
                shutil.rmtree(path, ignore_errors=True)


def check_target(dest: Path, *, ours: str | None = None) -> None:
    """Refuse to touch an existing file or non-empty directory (``ours``: the name of
    our own staging directory inside it; staging left by a killed scaffold is ignored)."""
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise GenerateError(f"{dest} already exists and is not a directory; choose another name")
    if dest.is_dir() and any(p.name != ours and not _is_stale_staging(p) for p in dest.iterdir()):
        raise GenerateError(
            f"{dest} already exists and is not empty; scaffold never overwrites a directory"
        )


def _inside_template_repo(dest: Path) -> Path | None:
    """The template repository that ``dest`` would be inside of, if any."""
    home = Path(os.path.abspath(scaffold_home() / "template"))
    for parent in (dest, *dest.parents):
        if parent == home or (parent / ".git" / TEMPLATE_MARKER).is_file():
            return parent
    return None


def new_project(
    dest: Path,
    data: dict[str, Any],
    *,
    interactive: bool = False,
    quiet: bool = True,
    git_init: bool = True,
    notes: list[str] | None = None,
) -> Path:
    """Render the template into ``dest`` atomically and make it a git repository.

    ``data`` are Copier answers (``project_name``, and ``from_spec``/``spec``
    for a spec file). With ``interactive`` Copier asks the remaining questions.
    An existing empty ``dest`` (the current directory, a mount point) is filled in
    place. If the user's git configuration refuses the first commit (signing,
    hooks), the project is still made, uncommitted, and ``notes`` says what to do.
    """
    from copier import Settings, run_copy  # imported here: it is the slow part of startup

    dest = Path(os.path.abspath(dest))
    finished["new"] = None
    inside = _inside_template_repo(dest)
    if inside is not None:
        raise GenerateError(
            f"{dest} is inside scaffold's template repository ({inside}), which scaffold rewrites; "
            "create the project somewhere else"
        )
    check_target(dest)
    if not dest.parent.is_dir():
        raise GenerateError(f"{dest.parent} does not exist; create it first")
    in_place = (
        dest.is_dir()
    )  # empty: filled in place, so the directory itself stays (cwd, mount point)
    where = dest if in_place else dest.parent
    _remove_stale_staging(dest.parent)
    if in_place:
        _remove_stale_staging(dest)
    try:
        repo, tag = sync_template_repo()
    except OSError as exc:
        raise GenerateError(
            f"cannot publish the template into {scaffold_home()} ({exc.strerror or exc})"
        ) from None
    try:
        staging = Path(
            tempfile.mkdtemp(
                prefix=f".{dest.name}.{os.getpid()}.", suffix=".scaffold-tmp", dir=where
            )
        )
    except OSError as exc:
        raise GenerateError(
            f"cannot create a directory in {where} ({exc.strerror or exc})"
        ) from None
    moved: list[Path] = []
    message = f"Generate project with scaffold {__version__} ({tag})"
    refused = ""
    try:
        checkpoint("new.staged")
        with _copier_git_env():
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
        checkpoint("new.rendered")
        if git_init:
            _git(staging, "init", "-q", "-b", "main")
            _git(staging, "add", "-A")
            try:  # the user's own settings (signing, hooks) apply to their project's commit
                _git(staging, "commit", "-q", "-m", message, user_hooks=True)
            except GitError as exc:
                refused = exc.stderr.splitlines()[-1] if exc.stderr else str(exc)
        checkpoint("new.committed")
        with signals_held():
            if in_place:
                check_target(dest, ours=staging.name)  # still empty but for our staging?
                for child in sorted(staging.iterdir()):
                    os.rename(child, dest / child.name)
                    moved.append(dest / child.name)
                staging.rmdir()
            else:
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(staging, 0o777 & ~umask)  # mkdtemp made it private
                check_target(dest)  # still free?
                os.rename(staging, dest)
            finished["new"] = dest
    except BaseException as exc:
        for path in moved:
            with contextlib.suppress(OSError):
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, (ScaffoldError, KeyboardInterrupt)) or not isinstance(exc, Exception):
            raise  # Copier's CopierAnswersInterrupt is a KeyboardInterrupt too: Ctrl-C stays Ctrl-C
        raise _explain(exc) from exc
    if refused and notes is not None:
        notes.append(
            f"the project's first commit failed, so {dest} is not committed yet; git said: {refused}\n"
            "  your git configuration refused it (commit signing or a commit hook: see "
            "`git config --show-origin --get-regexp 'gpgsign|hookspath|signingkey'`).\n"
            f'  Fix that, then commit: cd {dest} && git commit -m "{message}"\n'
            "  (or, for this commit only: git commit --no-verify --no-gpg-sign -m ...)"
        )
    return dest


def read_answers(project: Path) -> dict[str, Any]:
    """The project's stored Copier answers."""
    import yaml

    path = project / ".copier-answers.yml"
    if not path.is_file():
        raise GenerateError(
            f"{project} has no .copier-answers.yml; is it a project made by scaffold?"
        )
    try:
        answers = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise GenerateError(
            f"{path}{where}: not valid YAML ({problem}); restore it from git "
            "(`git checkout -- .copier-answers.yml`) or fix that line"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GenerateError(f"{path}: cannot read it ({exc}); restore it from git") from None
    if not isinstance(answers, dict):
        raise GenerateError(f"{path} is not a mapping of answers; restore it from git")
    return answers


def update_project(
    project: Path,
    data: dict[str, Any] | None = None,
    *,
    quiet: bool = True,
    notes: list[str] | None = None,
) -> tuple[str, list[str]]:
    """Run ``copier update`` on a generated project with the newest template.

    The spec (the stored one, or a new one in ``data``) is validated with the
    engine before anything changes. Copier merges in a temporary clone; the
    result is written into the project at the end, with signals held, so an
    interruption leaves the project as it was. One update at a time: a second one
    on the same project is refused while the first holds the project's lock.
    Returns the template tag and the files left with conflict markers.
    """
    project = project.resolve()
    finished["update"] = None
    read_answers(project)  # a project of scaffold's, before anything is written in its .git
    with _update_lock(project):
        return _update_locked(project, data, quiet=quiet, notes=notes)


UPDATE_LOCK = "scaffold-update.lock"  # in the project's git directory, held for a whole update


@contextlib.contextmanager
def _update_lock(project: Path) -> Iterator[None]:
    """Hold the project's update lock (an flock on <git dir>/scaffold-update.lock, which holds
    the holder's pid), or refuse naming the update that holds it. Outside a git repository
    there is nothing to lock: the update refuses that itself."""
    try:
        git_dir = Path(_git(project, "rev-parse", "--absolute-git-dir"))
    except GitError:
        yield
        return
    path = git_dir / UPDATE_LOCK
    while True:
        try:
            handle = open(path, "a+")
        except OSError as exc:
            raise GenerateError(
                f"cannot write {path} ({exc.strerror or exc}); is {project} writable?"
            ) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise GenerateError(
                f"another `scaffold update` ({holder}) is updating {project}; wait for it to "
                f"finish, then run this one again (the lock is {path})"
            ) from None
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()  # the holder before us removed the file as we opened it: take the new one
    with handle:
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}\n")
            handle.flush()
            yield
        finally:
            # removed while still held, so the project's .git is left as it was found; whoever
            # opened the old file meanwhile sees it is gone and opens a new one (above)
            with contextlib.suppress(OSError):
                path.unlink()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _update_locked(
    project: Path, data: dict[str, Any] | None, *, quiet: bool, notes: list[str] | None
) -> tuple[str, list[str]]:
    from copier import Settings, run_update

    from scaffold.builders import plan_from_raw

    answers = read_answers(project)
    data = dict(data or {})
    if "spec" not in data and answers.get("from_spec"):
        # Pass the stored spec back explicitly: Copier would silently replace a stored
        # answer that the new template rejects with a default; this way it is checked.
        data["spec"] = answers.get("spec")
    if "spec" in data:
        name = answers.get("project_name")
        data["spec"] = (
            {**data["spec"], "project": name} if isinstance(data["spec"], dict) else data["spec"]
        )
        plan_from_raw(data["spec"], name)  # refuse an invalid spec before anything changes
    if _git(project, "status", "--porcelain"):
        raise GenerateError(
            f"{project} has uncommitted changes; commit or stash them before updating"
        )
    try:
        head = _git(project, "rev-parse", "-q", "--verify", "HEAD^{commit}")
    except GitError:
        raise GenerateError(
            f"{project} has no commit yet; commit the generated files first: "
            f"cd {project} && git add -A && git commit -m 'Generate project with scaffold'"
        ) from None
    old = str(answers.get("_commit") or "")
    # Publish the installed template into the repository this project came from
    # (its _src_path), so that its old version and the new one sit side by side.
    recorded = Path(str(answers.get("_src_path", "")))
    own = recorded.is_absolute() and Path(os.path.abspath(recorded)) == Path(
        os.path.abspath(scaffold_home() / "template")
    )
    if not own and not (recorded.is_absolute() and (recorded / ".git").is_dir()):
        raise GenerateError(
            f"the template repository recorded in .copier-answers.yml ({recorded}) is missing; updates "
            f"need the template version the project was made from ({old or 'unknown'}). Run `scaffold "
            "template`: it publishes the installed template and prints its repository; set _src_path "
            "in .copier-answers.yml to that path and commit. If the project was made by another "
            "version of scaffold, install that one and run `scaffold template` once first"
        )
    _, tag = sync_template_repo(repo=recorded)  # scaffold's own repository is made again if deleted
    known = _git_run(
        recorded, ("show-ref", "-q", "--verify", f"refs/tags/{old}"), None, True, False, None, True
    )
    if old and known.returncode != 0:
        raise GenerateError(
            f"the template repository {recorded} has no {old}, the template version this project was "
            "made from (the repository was deleted and made again, or the project comes from another "
            "scaffold), so there is nothing to merge from. Either install the scaffold that made the "
            f"project, run `scaffold template` once (it adds {old} back), reinstall this one and run "
            f"`scaffold update` again; or take the installed template ({tag}) as the base without "
            f"merging: set `_commit: {tag}` in .copier-answers.yml and commit (compare with a fresh "
            "`scaffold new` to pick up what changed)"
        )
    checkpoint("update.synced")
    with tempfile.TemporaryDirectory(prefix="scaffold-update-") as tmp:
        clone = Path(tmp) / project.name
        _git(Path(tmp), "clone", "-q", "--shared", "--no-checkout", "--", str(project), str(clone))
        _git(clone, "checkout", "-q", "--detach", head)
        checkpoint("update.cloned")
        try:
            with _copier_git_env():
                run_update(
                    str(clone),
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
        checkpoint("update.merged")
        writes, deletes, index = _changes(clone, project)
        checkpoint("update.prepared")
        with signals_held() as arrived:
            _bring_in(project, clone, head, writes, deletes, index)
            conflicts = _git(project, "diff", "--name-only", "--diff-filter=U").split()
            finished["update"] = project
        if arrived and notes is not None:
            notes.append(
                "an interrupt arrived while the update was being written; it was finished, not undone"
            )
    return tag, conflicts


@contextlib.contextmanager
def _copier_git_env() -> Iterator[None]:
    """Copier's own git commands: no editor, prompt, signing or hooks of the user's."""
    from plumbum import local

    with local.env(**git_env()):
        yield


def _changes(clone: Path, project: Path) -> tuple[list[str], list[str], str]:
    """What the merge in ``clone`` changed: files to write, files to delete, and the
    index entries (conflict stages included) of those paths for ``update-index``.
    Blobs the project lacks are copied into its object store (invisible until used)."""
    status = _git_bytes(
        clone, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames"
    )
    paths = sorted({entry[3:].decode() for entry in status.split(b"\0") if entry})
    writes = [p for p in paths if os.path.lexists(clone / p)]
    deletes = [p for p in paths if not os.path.lexists(clone / p)]
    tracked = set(_git_bytes(project, "ls-files", "-z").decode().split("\0")) if writes else set()
    clash = [p for p in writes if p not in tracked and os.path.lexists(project / p)]
    if clash:
        raise GenerateError(
            f"the update adds {', '.join(clash[:3])}, which already exists in {project} but is not "
            "tracked by git (ignored?); move it aside and run `scaffold update` again. Nothing changed"
        )
    entries = _git_bytes(clone, "ls-files", "-s", "-z", "--", *paths).decode() if paths else ""
    lines = [f"0 {'0' * 40}\t{p}" for p in paths]  # forget the paths, then add the clone's entries
    shas = []
    for entry in filter(None, entries.split("\0")):
        meta, path = entry.split("\t", 1)
        mode, sha, stage = meta.split()
        lines.append(f"{mode} {sha} {stage}\t{path}")
        shas.append(sha)
    if shas:
        check = _git(project, "cat-file", "--batch-check", input="\n".join(shas) + "\n")
        for line in check.splitlines():
            if line.endswith(" missing"):
                sha = line.split()[0]
                blob = _git_bytes(clone, "cat-file", "blob", sha)
                _git_bytes(project, "hash-object", "-w", "--no-filters", "--stdin", input=blob)
    return writes, deletes, "".join(line + "\n" for line in lines)


def _bring_in(
    project: Path, clone: Path, head: str, writes: list[str], deletes: list[str], index: str
) -> None:
    """Write the merge result into the project; on any failure put it back as it was."""
    created: list[Path] = []
    try:
        for number, name in enumerate(writes):
            if number == len(writes) // 2:
                checkpoint("update.writing")
            source, target = clone / name, project / name
            missing = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
            target.parent.mkdir(parents=True, exist_ok=True)
            created += missing
            if not os.path.lexists(target):
                created.append(target)
            partial = target.with_name(f".{target.name}.scaffold-update")
            if source.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    partial.unlink()
                os.symlink(os.readlink(source), partial)
            else:
                shutil.copyfile(source, partial)
                shutil.copymode(source, partial)
            os.replace(partial, target)
        for name in deletes:
            target = project / name
            if os.path.lexists(target) and not target.is_dir():
                target.unlink()
        if index:
            _git(project, "update-index", "--index-info", input=index)
    except BaseException as exc:
        with contextlib.suppress(GenerateError, OSError):
            _git(project, "reset", "-q", "--hard", head)
        for path in sorted(created, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
        for name in writes:
            with contextlib.suppress(OSError):
                (project / name).with_name(f".{Path(name).name}.scaffold-update").unlink()
        if isinstance(exc, Exception):
            raise GenerateError(
                f"could not write the update into {project} ({exc}); it was put back as it was"
            ) from exc
        raise
    for name in deletes:  # directories that the update emptied
        for parent in (project / name).parents:
            if parent == project or not parent.is_dir() or any(parent.iterdir()):
                break
            parent.rmdir()


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
