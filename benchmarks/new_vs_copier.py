"""Benchmark: `scaffold new --spec` against a bare `copier copy` of the same template and answers.

Both run as a user runs them, as fresh processes, interleaved, on the same
machine in one run; the script prints the median wall time of each and the
ratio. `scaffold new` does more than Copier: it validates the spec first, and
makes the project a git repository with a first commit.

    python benchmarks/new_vs_copier.py [--runs 7] [--spec examples/conv-vae.yaml]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--spec", type=Path, default=ROOT / "examples" / "conv-vae.yaml")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="scaffold-bench-"))
    env = {**os.environ, "SCAFFOLD_HOME": str(work / "home")}
    bin_dir = Path(sys.executable).parent
    scaffold = [str(bin_dir / "scaffold")] if (bin_dir / "scaffold").exists() else [sys.executable, "-m", "scaffold.cli"]
    copier = [str(bin_dir / "copier")] if (bin_dir / "copier").exists() else [sys.executable, "-m", "copier"]

    # The same answers scaffold passes to Copier, and the same template repository and tag.
    from scaffold.render import sync_template_repo

    os.environ["SCAFFOLD_HOME"] = env["SCAFFOLD_HOME"]
    repo, tag = sync_template_repo()
    spec = yaml.safe_load(args.spec.read_text())
    answers = work / "answers.yml"
    answers.write_text(yaml.safe_dump({"project_name": "bench", "from_spec": True, "spec": {**spec, "project": "bench"}}))

    times: dict[str, list[float]] = {"scaffold new": [], "copier copy": []}
    for i in range(args.runs + 1):  # the first round warms caches and is dropped
        a, b = work / f"a{i}" / "bench", work / f"b{i}" / "bench"
        a.parent.mkdir()
        b.parent.mkdir()
        t_new = timed([*scaffold, "new", str(a), "--spec", str(args.spec)], work, env)
        t_copy = timed(
            [*copier, "copy", "--trust", "--defaults", "--quiet", "--vcs-ref", tag, "--data-file", str(answers), str(repo), str(b)],
            work,
            env,
        )
        if i:
            times["scaffold new"].append(t_new)
            times["copier copy"].append(t_copy)
        # same files, apart from scaffold's .git
        assert sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if ".git/" not in p.as_posix() + "/") == sorted(
            p.relative_to(b).as_posix() for p in b.rglob("*")
        )

    med = {name: statistics.median(values) for name, values in times.items()}
    print(f"spec: {args.spec.name}, {args.runs} runs each, interleaved, medians")
    for name, value in med.items():
        spread = f"{min(times[name]):.2f}-{max(times[name]):.2f}"
        print(f"  {name:<13} {value:6.3f} s   (range {spread} s)")
    print(f"  ratio         {med['scaffold new'] / med['copier copy']:.2f}x  (scaffold new / copier copy; goal <= 1.3x)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
