"""Benchmark: the generated trainer against a plain hand-written PyTorch loop.

Both train the same generated model (digits-cnn by default) on the same data, for the same
epochs, from the same seed, with AdamW at a constant learning rate, in this one process:

* generated: the project's own `train()` (data from a .pt file, its in-memory shuffled
  batching, loss and accuracy bookkeeping, NaN check, checkpoint at the end);
* plain:     DataLoader(TensorDataset(x, y), shuffle=True), AdamW, one step per batch.

Runs are interleaved (a warm-up of each first, dropped), and the script prints the median
training throughput of each in samples/s, their ratio, and the final training losses (they
differ only by the order of the batches and the dropout masks, so they should be close).

    python benchmarks/train_speed.py [--epochs 3] [--samples 4096] [--runs 3] [--device cpu]
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
    subprocess.run([sys.executable, "-m", "scaffold.cli", "new", spec.stem, "--spec", str(spec)], cwd=work, env=env, check=True, capture_output=True)
    sys.path.insert(0, str(work / spec.stem / "src"))
    return spec.stem.replace("-", "_")


def plain_loop(model_class, x, y, epochs, batch_size, lr, weight_decay, seed, device) -> tuple[float, float, int]:
    """The hand-written baseline. Returns (training seconds, last epoch's mean loss, samples)."""
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


def generated_loop(train_module, data_file, epochs, batch_size, lr, weight_decay, seed, device, out) -> tuple[float, float, int]:
    """The generated trainer on the same data. Returns (training seconds, last epoch's mean loss, samples)."""
    config = train_module.TrainConfig(
        epochs=epochs, batch_size=batch_size, optimizer="adamw", lr=lr, weight_decay=weight_decay,
        scheduler="none", data=str(data_file), val_fraction=0.0, seed=seed, out=str(out), device=device,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # its per-epoch lines
        history = train_module.train(config)
    n = torch.load(data_file, weights_only=True)["y"].numel()
    samples = epochs * (n // batch_size) * batch_size  # full batches only, like drop_last
    return sum(row["time"] for row in history), history[-1]["train_loss"], samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "examples" / "digits-cnn.yaml", help="a classification spec")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--project", type=Path, help="an already generated project of --spec (skips `scaffold new`)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="scaffold-train-bench-"))
    if args.project:
        sys.path.insert(0, str(args.project.resolve() / "src"))
        package = args.project.resolve().name.replace("-", "_")
    else:
        package = generate(args.spec, work)
    train_module = importlib.import_module(f"{package}.train")
    model_module = importlib.import_module(f"{package}.model")
    data_module = importlib.import_module(f"{package}.data")
    model_class = getattr(model_module, importlib.import_module(package).__all__[0])
    defaults = train_module.TrainConfig()
    lr, weight_decay, seed = defaults.lr, defaults.weight_decay, defaults.seed

    x, y = data_module.make_data(args.samples, seed=1)
    data_file = work / "data.pt"
    torch.save({"x": x, "y": y}, data_file)

    results: dict[str, list[tuple[float, float, int]]] = {"generated": [], "plain": []}
    for i in range(args.runs + 1):  # round 0 warms up and is dropped
        gen = generated_loop(train_module, data_file, args.epochs, args.batch_size, lr, weight_decay, seed, args.device, work / f"run{i}")
        plain = plain_loop(model_class, x, y, args.epochs, args.batch_size, lr, weight_decay, seed, torch.device(args.device))
        if i:
            results["generated"].append(gen)
            results["plain"].append(plain)

    print(f"{args.spec.stem}: {args.samples} samples, batch {args.batch_size}, {args.epochs} epochs, AdamW lr {lr}, "
          f"device {args.device}, {torch.get_num_threads()} threads; median of {args.runs} interleaved runs")
    speed = {}
    for name, runs in results.items():
        rates = [samples / seconds for seconds, _, samples in runs]
        speed[name] = statistics.median(rates)
        final = statistics.median(loss for _, loss, _ in runs)
        print(f"  {name:<10} {speed[name]:9.0f} samples/s  (range {min(rates):.0f}-{max(rates):.0f})  final train loss {final:.4f}")
    print(f"  ratio      {speed['generated'] / speed['plain']:.2f}x  (generated / plain; above 1 means the generated trainer is faster)")


if __name__ == "__main__":
    main()
