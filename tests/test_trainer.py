"""The generated trainer, driven as a user would: a digits-like task end to end, a run killed
with SIGKILL and resumed, DistributedDataParallel on two CPU processes, and the exit codes of
bad data and a diverging loss.

One digits-cnn project is generated for the whole module; every run is a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import GIT_IDENTITY, ROOT, run_cli

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow

PACKAGE = "digits_cnn"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """examples/digits-cnn.yaml generated once; returns the project and an environment for it."""
    root = tmp_path_factory.mktemp("trainer")
    env = {
        **os.environ,
        **GIT_IDENTITY,
        "SCAFFOLD_HOME": str(root / "scaffold-home"),
        "COPIER_SETTINGS_PATH": str(root / "no-copier-settings.yml"),
    }
    result = run_cli("new", "digits-cnn", "--spec", ROOT / "examples" / "digits-cnn.yaml", cwd=root, env=env)
    assert result.returncode == 0, result.stderr
    path = root / "digits-cnn"
    return path, {**env, "PYTHONPATH": str(path / "src")}


def run(project, *args: str, module: str = "train", timeout: int = 600) -> subprocess.CompletedProcess:
    """python -m digits_cnn.<module> ARGS in the project, in a fresh interpreter."""
    path, env = project
    command = [sys.executable, "-m", f"{PACKAGE}.{module}", *map(str, args)]
    return subprocess.run(command, cwd=path, env=env, capture_output=True, text=True, timeout=timeout)


def metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the timings: what must repeat exactly."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "time"} for row in rows]


# --------------------------------------------------------------------------- a digits-like task

# A seven-segment display in a box of height h and width w, stroke t: rows and columns of each segment.
SEGMENTS = {
    "a": lambda h, w, t: (slice(0, t), slice(0, w)),
    "b": lambda h, w, t: (slice(0, h // 2 + 1), slice(w - t, w)),
    "c": lambda h, w, t: (slice(h // 2, h), slice(w - t, w)),
    "d": lambda h, w, t: (slice(h - t, h), slice(0, w)),
    "e": lambda h, w, t: (slice(h // 2, h), slice(0, t)),
    "f": lambda h, w, t: (slice(0, h // 2 + 1), slice(0, t)),
    "g": lambda h, w, t: (slice(h // 2 - t // 2, h // 2 - t // 2 + t), slice(0, w)),
}
DIGITS = ["abcdef", "bc", "abdeg", "abcdg", "bcfg", "acdfg", "acdefg", "abc", "abcdefg", "abcdfg"]


def digit_glyphs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n images 1 x 28 x 28 of seven-segment digits 0-9: random size, stroke, place (up to 3
    pixels off centre) and brightness, broken strokes, and Gaussian noise."""
    g = torch.Generator().manual_seed(seed)

    def draw(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (1,), generator=g))

    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.zeros(n, 1, 28, 28)
    for i, label in enumerate(labels.tolist()):
        h, w, t = draw(16, 20), draw(9, 13), draw(2, 3)
        top, left = (28 - h) // 2 + draw(-3, 3), (28 - w) // 2 + draw(-3, 3)
        glyph = torch.zeros(h, w)
        for segment in DIGITS[label]:
            glyph[SEGMENTS[segment](h, w, t)] = 1.0
        glyph *= (torch.rand(h, w, generator=g) > 0.1).float()  # broken strokes
        images[i, 0, top : top + h, left : left + w] = glyph * (0.6 + 0.4 * torch.rand(1, generator=g))
    images += 0.25 * torch.randn(images.shape, generator=g)
    return images, labels


def test_digit_glyphs_train_far_above_chance(project, tmp_path):
    for name, n, seed in (("train", 800, 0), ("val", 200, 1)):
        x, y = digit_glyphs(n, seed)
        torch.save({"x": x, "y": y}, tmp_path / f"{name}.pt")
    out = tmp_path / "run"
    result = run(project, "--data", tmp_path / "train.pt", "--val-data", tmp_path / "val.pt", "--epochs", "6",
                 "--batch-size", "32", "--lr", "0.003", "--out", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "800 training samples, 200 validation" in result.stdout
    rows = metrics(out)
    assert len(rows) == 6
    assert rows[-1]["val_acc"] >= 0.7, rows  # chance is 0.1
    assert (out / "best.pt").is_file() and (out / "checkpoint.pt").is_file()


# --------------------------------------------------------------------------- kill -9, resume


def test_a_run_killed_after_a_checkpoint_resumes_to_the_same_losses(project, tmp_path):
    args = ["--epochs", "10", "--samples", "512", "--batch-size", "32", "--save-every", "1", "--device", "cpu"]
    whole = run(project, *args, "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr

    killed = tmp_path / "killed"
    path, env = project
    process = subprocess.Popen([sys.executable, "-m", f"{PACKAGE}.train", *args, "--out", str(killed)],
                               cwd=path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (killed / "metrics.jsonl").is_file() or (killed / "metrics.jsonl").read_text().count("\n") < 3:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # no chance to clean up: only the atomic write protects the checkpoint
    process.wait()
    assert process.returncode == -signal.SIGKILL
    epoch = torch.load(killed / "checkpoint.pt", weights_only=True)["epoch"]
    assert 2 <= epoch < 10

    resumed = run(project, "--resume", killed / "checkpoint.pt")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {killed / 'checkpoint.pt'} after epoch {epoch}" in resumed.stdout
    assert metrics(killed) == metrics(tmp_path / "whole")  # exactly equal floats, every epoch


# --------------------------------------------------------------------------- distributed


def torchrun(project, *args: str) -> subprocess.CompletedProcess:
    path, env = project
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", f"{PACKAGE}.train", *map(str, args)]
    env = {**env, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=path, env=env, capture_output=True, text=True, timeout=600)


def test_distributed_data_parallel_on_two_cpu_processes(project, tmp_path):
    out = tmp_path / "ddp"
    result = torchrun(project, "--epochs", "2", "--samples", "256", "--batch-size", "32", "--val-fraction", "0",
                      "--out", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 processes" in result.stdout
    # rank 0 alone logs and saves: one line per epoch, one checkpoint
    assert result.stdout.count("epoch 1/2") == 1 and result.stdout.count("epoch 2/2") == 1
    drawn = {"curves.png"}  # the run's picture, where matplotlib is installed
    assert sorted(p.name for p in out.iterdir() if p.name not in drawn) == ["checkpoint.pt", "metrics.jsonl", "run.lock"]
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 2 and not any(name.startswith("module.") for name in checkpoint["model"])
    assert len(metrics(out)) == 2

    # validation is sharded too, and its metrics are gathered from both processes
    result = torchrun(project, "--epochs", "1", "--samples", "256", "--batch-size", "32", "--out", tmp_path / "val",
                      "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    assert 0.0 <= metrics(tmp_path / "val")[0]["val_acc"] <= 1.0


def test_under_torchrun_a_refusal_and_a_ctrl_c_are_said_once_by_rank_0(project, tmp_path):
    out = tmp_path / "run"
    args = ["--samples", "512", "--batch-size", "32", "--out", out, "--device", "cpu"]
    path, env = project
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               f"{PACKAGE}.train", "--epochs", "50", *map(str, args)]
    # Ctrl-C reaches the whole process group: torchrun, which forwards it, and both workers
    process = subprocess.Popen(command, cwd=path, env={**env, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (out / "metrics.jsonl").is_file():  # the moment: an epoch is done, the next one trains
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    ours = [line for line in stderr.splitlines() if line.startswith(("SIGINT:", "error:", "stopped by"))]
    assert len(ours) == 1 and ours[0].startswith("SIGINT: stopped "), stderr[-3000:]
    assert ours[0].endswith(f"resume with: python -m {PACKAGE}.train --resume {out / 'checkpoint.pt'}")
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert saved["run"]["world_size"] == 2 and 1 <= saved["epoch"] < 50

    again = torchrun(project, "--epochs", "1", *args)  # a second run into the same directory
    assert again.returncode != 0
    ours = [line for line in again.stderr.splitlines() if line.startswith("error:")]
    assert ours == [f"error: {out}: holds an earlier run (checkpoint.pt, best.pt, metrics.jsonl); continue it "
                    f"with --resume {out / 'checkpoint.pt'}, replace it with --overwrite, or give another --out"]
    assert "refused by rank 0" not in again.stderr
    for stderr in (stderr, again.stderr):  # torchrun prints its own summary; no worker prints a traceback
        assert f"src/{PACKAGE}/" not in stderr, stderr[-3000:]


def test_a_nan_in_one_process_stops_both_instead_of_hanging(project, tmp_path):
    # one poisoned sample: at that step one process's loss is NaN and the other's is finite
    x = torch.rand(64, 1, 28, 28)
    x[17] = 3e38  # finite, but it overflows float32 inside the network
    torch.save({"x": x, "y": torch.zeros(64, dtype=torch.int64)}, tmp_path / "poisoned.pt")
    path, env = project
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               f"{PACKAGE}.train", "--data", str(tmp_path / "poisoned.pt"), "--val-fraction", "0", "--epochs", "1",
               "--batch-size", "16", "--out", str(tmp_path / "run"), "--device", "cpu"]
    try:
        result = subprocess.run(command, cwd=path, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True,
                                text=True, timeout=240)
    except subprocess.TimeoutExpired:
        raise AssertionError("the healthy process hung in backward()") from None
    assert result.returncode != 0
    # rank 0 alone says it, once: the step of its own NaN, or of the other process's
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(("error: the loss became nan at step", "error: the loss became nan or inf in another process at step")), errors


# --------------------------------------------------------------------------- exit codes


def test_bad_data_is_one_line_with_exit_code_2(project, tmp_path):
    torch.save({"x": torch.zeros(8, 3, 28, 28), "y": torch.zeros(8, dtype=torch.int64)}, tmp_path / "rgb.pt")
    result = run(project, "--data", tmp_path / "rgb.pt", "--out", tmp_path / "run", "--device", "cpu")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "NumPy" not in line and "_conversion_method" not in line]
    assert lines == [f"error: {tmp_path / 'rgb.pt'}: x has shape (8, 3, 28, 28), but the model takes (N, 1, 28, 28)"]


def test_a_diverging_loss_exits_1_and_keeps_the_last_good_checkpoint(project, tmp_path):
    out = tmp_path / "run"
    common = ["--batch-size", "32", "--out", out, "--device", "cpu"]
    assert run(project, "--epochs", "1", "--samples", "128", *common).returncode == 0
    # finite inputs that overflow float32 inside the network: the loss becomes NaN
    torch.save({"x": torch.full((64, 1, 28, 28), 3e38), "y": torch.zeros(64, dtype=torch.int64)}, tmp_path / "huge.pt")
    result = run(project, "--resume", out / "checkpoint.pt", "--epochs", "2", "--data", tmp_path / "huge.pt")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"error: the loss became nan at step 1 of epoch 2/2; the last good checkpoint, {out / 'checkpoint.pt'} (epoch 1), is kept" in result.stderr
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1


# --------------------------------------------------------------------------- other entry points


def test_finetune_and_diagnose_from_the_command_line(project, tmp_path):
    out = tmp_path / "run"
    assert run(project, "--epochs", "1", "--samples", "128", "--batch-size", "32", "--out", out, "--device", "cpu").returncode == 0
    tuned = run(project, "--checkpoint", out / "checkpoint.pt", "--num-classes", "4", "--epochs", "1", "--samples", "128",
                "--batch-size", "32", "--out", tmp_path / "tuned", "--device", "cpu", module="finetune")
    assert tuned.returncode == 0, tuned.stderr
    assert "(frozen: features" in tuned.stdout  # the backbone: everything before the output layer
    state = torch.load(tmp_path / "tuned" / "checkpoint.pt", weights_only=True)["model"]
    output_weight = [name for name in state if name.startswith("head") and name.endswith("weight")][-1]
    assert tuple(state[output_weight].shape) == (4, 64)

    report = run(project, "--checkpoint", tmp_path / "tuned" / "checkpoint.pt", "--batch-size", "16", "--device", "cpu",
                 module="diagnose")
    assert report.returncode == 0, report.stderr
    assert output_weight.removesuffix(".weight") in report.stdout and "features.0" in report.stdout


def test_compiled_model_trains(project, tmp_path):
    result = run(project, "--compile", "--epochs", "1", "--samples", "64", "--batch-size", "32", "--out", tmp_path / "run",
                 "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    assert metrics(tmp_path / "run")[0]["train_loss"] > 0
