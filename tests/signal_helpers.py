"""Real processes stopped at known moments, for the interruption tests.

Two ways to hold a scaffold process at a known point, so that a signal lands
exactly there (no sleeps, no timings):

- ``SCAFFOLD_TEST_PAUSE=STAGE:FILE``: scaffold writes FILE at one of its named
  stages (``new.staged``, ``update.merged``, ...) and waits for a signal there;
- a ``git`` wrapper first on PATH counts every git command (scaffold's own and
  Copier's) and, at the N-th one, writes a marker and waits for a go file, so
  the signal lands while scaffold waits on that git command. The wrapper goes
  on when scaffold has the signal: it died of it, or it holds it for a step
  that must finish (scaffold touches SCAFFOLD_TEST_HELD then).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import git

GIT_WRAPPER = """#!/bin/sh
n=$(( $(cat "$SCAFFOLD_T_COUNT" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$SCAFFOLD_T_COUNT"
if [ "$n" = "${SCAFFOLD_T_STOP:-0}" ]; then
  echo "$n git $*" > "$SCAFFOLD_T_MARK.tmp" && mv "$SCAFFOLD_T_MARK.tmp" "$SCAFFOLD_T_MARK"
  # hold until scaffold has the signal: it died of it (then run nothing), or holds it
  while [ ! -e "$SCAFFOLD_T_GO" ] && [ ! -e "$SCAFFOLD_TEST_HELD" ]; do
    kill -0 "$PPID" 2>/dev/null || exit 1
    sleep 0.01
  done
fi
exec REAL_GIT "$@"
"""


class Stopper:
    """Runs a command with the git wrapper on PATH; stops it at a stage or a git call."""

    def __init__(self, root: Path, env: dict):
        self.root = root
        bin_dir = root / "bin"
        bin_dir.mkdir(exist_ok=True)
        wrapper = bin_dir / "git"
        wrapper.write_text(GIT_WRAPPER.replace("REAL_GIT", shutil.which("git")))
        wrapper.chmod(0o755)
        self.count, self.mark, self.go = root / "git-count", root / "marker", root / "go"
        self.held = root / "held"  # scaffold touches it when it holds a signal (a test hook)
        self.tmp = root / "tmpdir"
        self.tmp.mkdir(exist_ok=True)
        self.env = {
            **env,
            "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', os.defpath)}",
            "SCAFFOLD_T_COUNT": str(self.count),
            "SCAFFOLD_T_MARK": str(self.mark),
            "SCAFFOLD_T_GO": str(self.go),
            "SCAFFOLD_TEST_HELD": str(self.held),
            "TMPDIR": str(self.tmp),
        }

    def run(
        self,
        args: list,
        cwd: Path,
        sig: int | None = None,
        *,
        stage: str | None = None,
        git_call: int | None = None,
    ) -> tuple[int, str, str, str]:
        """Run `args`; at `stage` or at the `git_call`-th git command, send `sig`.
        Returns (exit code, stdout, stderr, where it stopped: '' if it never got there)."""
        for path in (self.count, self.mark, self.go, self.held):
            path.unlink(missing_ok=True)
        env = dict(self.env)
        if stage:
            env["SCAFFOLD_TEST_PAUSE"] = f"{stage}:{self.mark}"
        if git_call:
            env["SCAFFOLD_T_STOP"] = str(git_call)
        proc = subprocess.Popen(
            [sys.executable, *map(str, args)],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=default_signals,  # not inherited as ignored (nohup, a background job)
        )
        where = ""
        if stage or git_call:
            deadline = time.monotonic() + 600  # a safety net against a hang, not a timing
            while not self.mark.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)  # waiting for the marker: the moment is the marker, not the sleep
            if self.mark.exists() and proc.poll() is None:
                where = self.mark.read_text().strip()
                proc.send_signal(sig)
        try:
            out, err = proc.communicate(timeout=600)
        finally:
            self.go.touch()  # release a held git wrapper, if the process left one behind
        return proc.returncode, out, err, where

    def git_calls(self) -> int:
        return int(self.count.read_text()) if self.count.exists() else 0

    def leftovers(self) -> list[str]:
        """What the run left in its TMPDIR (scaffold's temporary clone, Copier's copies)."""
        return sorted(p.name for p in self.tmp.iterdir())


def project_state(project: Path) -> dict:
    """Everything `git` and a person can see of a project: HEAD, the index (conflict stages
    included), the status (untracked and ignored files too) and every file's mode and bytes."""
    files = {}
    for path in sorted(project.rglob("*")):
        rel = path.relative_to(project).as_posix()
        if rel == ".git" or rel.startswith(".git/"):
            continue
        if path.is_symlink():
            files[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            files[rel] = ("dir",)
        else:
            files[rel] = ("file", path.stat().st_mode, path.read_bytes())
    return {
        "HEAD": git(project, "rev-parse", "HEAD"),
        "index": git(project, "ls-files", "-s"),
        "status": git(project, "status", "--porcelain=v1", "--untracked-files=all", "--ignored"),
        "files": files,
    }


def differences(a: dict, b: dict) -> list[str]:
    out = [key for key in ("HEAD", "index", "status") if a[key] != b[key]]
    files = set(a["files"]) | set(b["files"])
    out += sorted(f for f in files if a["files"].get(f) != b["files"].get(f))
    return out


def default_signals() -> None:
    """In a child: SIGINT, SIGTERM and SIGHUP as a fresh terminal would deliver them, whatever
    this process inherited (a run under nohup ignores SIGHUP, a background job SIGINT)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
