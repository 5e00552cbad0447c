"""Benchmark: the generated trainer against two hand-written PyTorch loops, on two models.

Each model is generated from its example spec (digits-cnn, a small CNN; tabular-mlp, a small
MLP) and trained on the same data, for the same epochs, from the same seed, with AdamW at a
constant learning rate, in this one process, by three contenders:

* generated:  the project's own `train()` (data from a .pt file, its in-memory shuffled
  batching, each step's results kept on the device and their metrics computed every 50
  steps at once (loop.py's Tally, with the NaN and the signal checks), a checkpoint at the
  end, not timed);
* bare loop:  a seeded permutation of in-memory tensors, indexed per batch; the loss summed on
  the device; nothing else;
* DataLoader: DataLoader(TensorDataset(x, y), shuffle=True), one step per batch.

Runs are interleaved (a warm-up round first, dropped), and the script prints, per model, the
best training throughput (on a shared machine, interference only ever slows a run down) of each in samples/s and the generated trainer's ratio to each
(above 1: the generated trainer is faster), with the final training losses (they differ only
by the order of the batches and the dropout masks).

    python benchmarks/train_speed.py [--epochs 3] [--runs 5] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"digits-cnn": 4096, "tabular-mlp": 20000}  # example spec -> samples


def generate(spec: Path, work: Path) -> str:
    """`scaffold new` a project from spec into work; make its package importable; return its name."""
    env = {
        **os.environ,
        "SCAFFOLD_HOME": str(work / "home"),
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@localhost",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@localhost",
    }
    subprocess.run([sys.executable, "-m", "scaffold.cli", "new", spec.stem, "--spec", str(spec)], cwd=work, env=env,
                   check=True, capture_output=True)
    sys.path.insert(0, str(work / spec.stem / "src"))
    return spec.stem.replace("-", "_")


def bare_loop(model_class, x, y, epochs, batch_size, lr, weight_decay, seed, device) -> tuple[float, float, int]:
    """The least a training loop can do. Returns (training seconds, last epoch's mean loss, samples)."""
    torch.manual_seed(seed)
    model = model_class().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    x, y = x.to(device), y.to(device)
    n = len(x)
    seconds, samples = 0.0, 0
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=generator)
        total, steps = torch.zeros((), device=device), 0
        for begin in range(0, n - batch_size + 1, batch_size):
            index = order[begin : begin + batch_size]
            loss = F.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
            steps += 1
        final = total.item() / steps
        seconds += time.perf_counter() - start
        samples += steps * batch_size
    return seconds, final, samples


def dataloader_loop(model_class, x, y, epochs, batch_size, lr, weight_decay, seed, device) -> tuple[float, float, int]:
    """The textbook loop: a DataLoader over a TensorDataset. Returns (seconds, final loss, samples)."""
    torch.manual_seed(seed)
    model = model_class().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    seconds, samples = 0.0, 0
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        total, count = 0.0, 0
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(xb)
            count += len(xb)
        seconds += time.perf_counter() - start
        samples += count
    return seconds, total / count, samples


def generated_loop(train_module, data_file, n, epochs, batch_size, lr, weight_decay, seed, device, out) -> tuple[float, float, int]:
    """The generated trainer on the same data. Returns (training seconds, last epoch's mean loss, samples)."""
    config = train_module.TrainConfig(
        epochs=epochs, batch_size=batch_size, optimizer="adamw", lr=lr, weight_decay=weight_decay,
        scheduler="none", data=str(data_file), val_fraction=0.0, seed=seed, out=str(out), device=device,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # its per-epoch lines
        history = train_module.train(config)
    samples = epochs * (n // batch_size) * batch_size  # full batches only, like drop_last
    return sum(row["time"] for row in history), history[-1]["train_loss"], samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the issue's figures: 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--projects", type=Path, help="a folder holding the projects already generated (skips `scaffold new`)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    work = Path(tempfile.mkdtemp(prefix="scaffold-train-bench-"))
    table = []
    for name in args.models:
        if args.projects:
            sys.path.insert(0, str(args.projects.resolve() / name / "src"))
            package = name.replace("-", "_")
        else:
            package = generate(ROOT / "examples" / f"{name}.yaml", work)
        train_module = importlib.import_module(f"{package}.train")
        data_module = importlib.import_module(f"{package}.data")
        model_class = getattr(importlib.import_module(f"{package}.model"), importlib.import_module(package).__all__[0])
        defaults = train_module.TrainConfig()
        lr, weight_decay, seed = defaults.lr, defaults.weight_decay, defaults.seed
        n = MODELS[name]
        x, y = data_module.make_data(n, seed=1)
        data_file = work / f"{package}-data.pt"
        torch.save({"x": x, "y": y}, data_file)
        common = (args.epochs, args.batch_size, lr, weight_decay, seed)
        results: dict[str, list[tuple[float, float, int]]] = {"generated": [], "bare loop": [], "DataLoader": []}
        for i in range(args.runs + 1):  # round 0 warms up and is dropped
            rounds = {
                "generated": generated_loop(train_module, data_file, n, *common, args.device, work / f"{package}-run{i}"),
                "bare loop": bare_loop(model_class, x, y, *common, device),
                "DataLoader": dataloader_loop(model_class, x, y, *common, device),
            }
            if i:
                for contender, result in rounds.items():
                    results[contender].append(result)
        speed = {c: max(s / t for t, _, s in runs) for c, runs in results.items()}  # best: noise only slows
        loss = {c: statistics.median(final for _, final, _ in runs) for c, runs in results.items()}
        table.append((name, n, speed, loss))

    print(f"{args.batch_size} per batch, {args.epochs} epochs, AdamW, device {args.device}, {args.threads} thread(s); "
          f"best of {args.runs} interleaved runs; samples/s (median final train loss)")
    contenders = ["generated", "bare loop", "DataLoader"]
    print(f"{'model':<12} {'samples':>7}  " + "  ".join(f"{c:>18}" for c in contenders) + "   vs bare   vs DataLoader")
    for name, n, speed, loss in table:
        cells = "  ".join(f"{speed[c]:>9.0f} ({loss[c]:.4f})" for c in contenders)
        print(f"{name:<12} {n:>7}  {cells}   {speed['generated'] / speed['bare loop']:>6.2f}x   "
              f"{speed['generated'] / speed['DataLoader']:>6.2f}x")


if __name__ == "__main__":
    main()
