"""Benchmark: `scaffold validate` on MLP specs of 100 and 1,000 layers, side by side.

Two figures for each size, from the same run:

* engine: reading the spec file, checking it and building the plan with every shape, in this
  process (median of --repeats runs);
* CLI:    `scaffold validate SPEC` as a fresh process, the way a user runs it (median of
  --cli-repeats runs), interpreter start-up included.

The engine's cost should grow linearly with the number of layers (1,000 / 100 close to 10x);
the CLI's is dominated by start-up, and must stay well under a second at 1,000 layers.

    python benchmarks/validate_scaling.py [--repeats 20] [--cli-repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scaffold.builders import build_plan
from scaffold.spec import load_spec_file, parse_spec

SIZES = (100, 1000)


def write_spec(layers: int, directory: Path) -> Path:
    """An MLP with `layers` linear blocks (batch norm and ReLU on the hidden ones)."""
    hidden = ["    - {features: 64}"] * (layers - 1)
    text = "\n".join(
        [
            f"project: mlp-{layers}",
            "model:",
            "  kind: mlp",
            "  input: [32]",
            "  defaults: {norm: batch, activation: relu}",
            "  mlp:",
            *hidden,
            "    - {features: 10}",
            "train: {task: classification}",
            "",
        ]
    )
    path = directory / f"mlp-{layers}.yaml"
    path.write_text(text)
    return path


def time_engine(path: Path, repeats: int) -> tuple[float, int]:
    """Median seconds to load, check and plan the spec; and the plan's layer count."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        plan = build_plan(parse_spec(load_spec_file(path)))
        times.append(time.perf_counter() - start)
    return statistics.median(times), plan.num_layers


def time_cli(path: Path, repeats: int) -> float:
    """Median seconds of `scaffold validate SPEC` in a fresh interpreter."""
    command = [sys.executable, "-m", "scaffold.cli", "validate", str(path)]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="in-process runs per size")
    parser.add_argument("--cli-repeats", type=int, default=5, help="CLI runs per size")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        specs = {n: write_spec(n, Path(tmp)) for n in SIZES}
        engine, cli, layers = {}, {}, {}
        for n in SIZES:  # warm-up: imports, caches
            time_engine(specs[n], 1)
        for n in SIZES:
            engine[n], layers[n] = time_engine(specs[n], args.repeats)
            cli[n] = time_cli(specs[n], args.cli_repeats)

    small, large = SIZES
    print(f"{'blocks':>7} {'torch layers':>13} {'engine':>10} {'per block':>10} {'scaffold validate':>18}")
    for n in SIZES:
        print(
            f"{n:>7} {layers[n]:>13} {engine[n] * 1e3:>8.1f}ms {engine[n] / n * 1e6:>8.1f}us "
            f"{cli[n] * 1e3:>16.0f}ms"
        )
    print(
        f"engine {large} / {small} blocks: {engine[large] / engine[small]:.1f}x "
        f"(linear: {large / small:.0f}x); CLI at {large} blocks: {cli[large]:.2f} s"
    )


if __name__ == "__main__":
    main()
