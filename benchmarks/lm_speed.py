"""Benchmark: training tokens per second of a generated language model's trainer against
nanoGPT's own training loop, on the same small configuration, on the CPU.

nanoGPT is not a dependency of scaffold; give the path of a checkout of it:

    git clone https://github.com/karpathy/nanoGPT /tmp/nanogpt
    python benchmarks/lm_speed.py /tmp/nanogpt        # or NANOGPT_DIR=/tmp/nanogpt

Both train a GPT of the same shape (--layers, --heads, --width, --context; vocabulary 65, no
bias, no dropout, tied embeddings; AdamW, clipping at 1.0, float32) on the same text (65
distinct characters), batch --batch-size, from a fresh process each:

* generated: a project rendered by `scaffold new` from a spec written here; its
  `python -m <package>.train --data text.txt --max-steps 2N --eval-every N`: the speed is the
  `tokens_per_s` of the second N steps in metrics.jsonl (the first N are a warm-up);
* nanoGPT: its train.py, run with its configurator's flags on the same text prepared as its
  data/shakespeare_char/prepare.py does (train.bin, val.bin, meta.pkl); the speed is from its
  `iter k: ... time T ms` lines over the same second N iterations.

Runs are interleaved, --runs rounds of one each, and the best of each is printed (on a shared
machine interference only slows a run down), with the ratio (above 1: the generated trainer
is faster).

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


def run_generated(project: Path, text: Path, out: Path, args, env) -> float:
    steps = args.steps
    flags = ["--data", str(text), "--max-steps", str(2 * steps), "--eval-every", str(steps)]
    flags += ["--eval-batches", "1", "--warmup-steps", "0", "--device", "cpu", "--out", str(out)]
    subprocess.run(
        [sys.executable, "-m", "bench_lm.train", *flags, "--overwrite"],
        cwd=project, env={**env, "PYTHONPATH": str(project / "src")}, check=True,
        capture_output=True,
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return rows[1]["tokens_per_s"]


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
    result = subprocess.run(
        [sys.executable, str(nano_dir / "train.py"), *(f"--{k}={v}" for k, v in flags.items())],
        cwd=workdir, env=env, check=True, capture_output=True, text=True,
    )
    times = {int(i): float(t) for i, t in re.findall(r"iter (\d+): loss \S+, time ([\d.]+)ms", result.stdout)}
    window = [times[i] for i in range(steps + 1, 2 * steps + 1)]
    return args.batch_size * args.context * len(window) / (sum(window) / 1000)


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
    print(f"\nCPU, {config}, best of {args.runs} interleaved runs of {args.steps} timed steps:")
    print(f"  generated trainer  {max(ours):>10,.0f} tokens/s")
    print(f"  nanoGPT train.py   {max(theirs):>10,.0f} tokens/s")
    print(f"  ratio              {max(ours) / max(theirs):>10.2f}  (above 1: the generated trainer is faster)")


if __name__ == "__main__":
    main()
