"""Benchmark: training tokens per second of a generated language model's trainer against
nanoGPT's own training loop, on the same small configuration, on the CPU.

nanoGPT is not a dependency of scaffold; give the path of a checkout of it:

    git clone https://github.com/karpathy/nanoGPT /tmp/nanogpt
    python benchmarks/lm_speed.py /tmp/nanogpt        # or NANOGPT_DIR=/tmp/nanogpt

Both train a GPT of the same shape (--layers, --heads, --width, --context; vocabulary 65, no
bias, no dropout, tied embeddings; AdamW, clipping at 1.0, float32) on the same text (65
distinct characters), batch --batch-size, from a fresh process each:

* generated: a project rendered by `scaffold new` from a spec written here; its train.py's
  main() with `--data text.txt --max-steps 2N --eval-every 2N`, started by a launcher written
  here that wraps the project's learning_rate() (called once as each step begins) to note the
  time; a step's time is the time from its start to the next step's;
* nanoGPT: its train.py, run with its configurator's flags on the same text prepared as its
  data/shakespeare_char/prepare.py does (train.bin, val.bin, meta.pkl); a step's time is its
  `iter k: ... time T ms` line.

The speed of a run is batch x context over its median step time among the second N steps (the
first N are a warm-up): the median, because other work slows some steps down. --clock cpu
(the default) times the steps by the process's CPU time (time.process_time(); nanoGPT's
time.time() is pointed at it), which other processes on a shared machine do not inflate; with
--threads 1 it is the time one core spends on the step. --clock wall: the wall clock. Runs are interleaved, --runs rounds of one each; printed: every round, the best of each
trainer, and the median of the rounds' ratios (above 1: the generated trainer is faster).

    python benchmarks/lm_speed.py /tmp/nanogpt [--steps 30] [--runs 3] [--threads 1]

On a machine shared with other work, --threads 1 keeps both loops from fighting over cores
(with 2 threads on a loaded 2-core machine both ran 10x slower, and the ratio was noise).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # shakespeare's 65


def make_text(length: int = 200_000, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return "".join(np.array(list(CHARS))[rng.integers(len(CHARS), size=length)])


def generated_project(work: Path, args: argparse.Namespace, env: dict) -> Path:
    spec = {
        "project": "bench-lm",
        "model": {
            "kind": "lm",
            "input": [args.context],
            "vocab": len(CHARS),
            "seq": [
                {"type": "embedding", "features": args.width},
                {"type": "transformer", "layers": args.layers, "heads": args.heads, "bias": False},
                {"type": "norm", "bias": False},
            ],
            "tie_embeddings": True,
        },
        "train": {"batch_size": args.batch_size},
    }
    (work / "bench-lm.yaml").write_text(yaml.safe_dump(spec))
    subprocess.run(
        [sys.executable, "-m", "scaffold.cli", "new", "bench-lm", "--spec", "bench-lm.yaml"],
        cwd=work, env=env, check=True, capture_output=True,
    )
    return work / "bench-lm"


def nanogpt_data(work: Path, text: str) -> Path:
    """text as nanoGPT's prepare.py leaves it: data/<name>/{train,val}.bin and meta.pkl."""
    data = work / "nano" / "data" / "bench"
    data.mkdir(parents=True)
    stoi = {ch: i for i, ch in enumerate(CHARS)}
    ids = np.array([stoi[ch] for ch in text], dtype=np.uint16)
    n = int(0.9 * len(ids))
    ids[:n].tofile(data / "train.bin")
    ids[n:].tofile(data / "val.bin")
    meta = {"vocab_size": len(CHARS), "itos": dict(enumerate(CHARS)), "stoi": stoi}
    (data / "meta.pkl").write_bytes(pickle.dumps(meta))
    return work / "nano"


LAUNCHER = """\
import json, sys, time

from bench_lm import train

clock = time.process_time if sys.argv[2] == "cpu" else time.perf_counter
starts, schedule = [], train.learning_rate


def learning_rate(done, config, total):  # called once, as step done + 1 begins
    starts.append(clock())
    return schedule(done, config, total)


train.learning_rate = learning_rate
train.main(sys.argv[3:])
with open(sys.argv[1], "w") as file:
    json.dump(starts, file)
"""

# nanoGPT's train.py times its iterations with time.time(): on the CPU clock, process_time()
NANO_LAUNCHER = """\
import os, runpy, sys, time

if sys.argv[1] == "cpu":
    time.time = time.process_time
sys.argv = sys.argv[2:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))  # its model.py
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_generated(project: Path, text: Path, out: Path, args, env) -> float:
    steps = args.steps
    flags = ["--data", str(text), "--max-steps", str(2 * steps), "--eval-every", str(2 * steps)]
    flags += ["--eval-batches", "1", "--warmup-steps", "0", "--device", "cpu", "--out", str(out)]
    (project / "launch.py").write_text(LAUNCHER)
    times = project / "times.json"
    subprocess.run(
        [sys.executable, str(project / "launch.py"), str(times), args.clock, *flags, "--overwrite"],
        cwd=project, env={**env, "PYTHONPATH": str(project / "src")}, check=True,
        capture_output=True,
    )
    starts = json.loads(times.read_text())
    window = [b - a for a, b in zip(starts[steps:2 * steps - 1], starts[steps + 1:2 * steps])]
    return args.batch_size * args.context / statistics.median(window)  # (the last step evaluates)


def run_nanogpt(nano_dir: Path, workdir: Path, args, env) -> float:
    steps = args.steps
    flags = {
        "dataset": "bench", "device": "cpu", "compile": False, "dtype": "float32",
        "n_layer": args.layers, "n_head": args.heads, "n_embd": args.width,
        "block_size": args.context, "batch_size": args.batch_size, "dropout": 0.0, "bias": False,
        "gradient_accumulation_steps": 1, "max_iters": 2 * steps, "eval_interval": 10 * steps,
        "eval_iters": 1, "log_interval": 1, "warmup_iters": 0, "always_save_checkpoint": False,
        "wandb_log": False, "out_dir": str(workdir / "out"),
    }
    (workdir / "launch.py").write_text(NANO_LAUNCHER)
    result = subprocess.run(
        [sys.executable, "launch.py", args.clock, str(nano_dir / "train.py"), *(f"--{k}={v}" for k, v in flags.items())],
        cwd=workdir, env=env, check=True, capture_output=True, text=True,
    )
    times = {int(i): float(t) for i, t in re.findall(r"iter (\d+): loss \S+, time ([\d.]+)ms", result.stdout)}
    window = [times[i] for i in range(steps + 1, 2 * steps + 1)]
    return args.batch_size * args.context / (statistics.median(window) / 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("nanogpt", nargs="?", default=os.environ.get("NANOGPT_DIR"), help="a nanoGPT checkout")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run (after as many untimed)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (OMP_NUM_THREADS)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="time steps by the process's CPU time (other work on the machine does not count) or the wall clock")
    args = parser.parse_args()
    if not args.nanogpt or not (Path(args.nanogpt) / "train.py").is_file():
        parser.error("give the path of a nanoGPT checkout (git clone https://github.com/karpathy/nanoGPT)")
    nano_dir = Path(args.nanogpt).resolve()
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env.update(SCAFFOLD_HOME=str(work / "home"), GIT_AUTHOR_NAME="bench", GIT_COMMITTER_NAME="bench",
                   GIT_AUTHOR_EMAIL="bench@example.invalid", GIT_COMMITTER_EMAIL="bench@example.invalid")
        env["PYTHONPATH"] = str(ROOT)
        text = make_text()
        (work / "text.txt").write_text(text)
        project = generated_project(work, args, env)
        nano_work = nanogpt_data(work, text)
        shutil.copy(nano_dir / "configurator.py", nano_work)  # train.py execs it from its cwd
        ours, theirs = [], []
        for round_ in range(args.runs):
            ours.append(run_generated(project, work / "text.txt", work / "run", args, env))
            theirs.append(run_nanogpt(nano_dir, nano_work, args, env))
            print(f"round {round_ + 1}: generated {ours[-1]:,.0f} tokens/s, nanoGPT {theirs[-1]:,.0f} tokens/s")
    config = f"{args.layers} layers, {args.heads} heads, width {args.width}, context {args.context}, batch {args.batch_size}"
    ratio = statistics.median(a / b for a, b in zip(ours, theirs))
    print(f"\nCPU, {config}, {args.runs} interleaved runs of {args.steps} timed steps (median step, {args.clock} clock):")
    print(f"  generated trainer  {max(ours):>10,.0f} tokens/s (best run)")
    print(f"  nanoGPT train.py   {max(theirs):>10,.0f} tokens/s (best run)")
    print(f"  ratio              {max(ours) / max(theirs):>10.2f}  of the best runs (above 1: the generated trainer is faster)")
    print(f"  ratio              {ratio:>10.2f}  median of the rounds' ratios")


if __name__ == "__main__":
    main()
