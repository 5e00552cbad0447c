"""Generated sequence models, driven through their command lines as a user would (issues 14, 17, 18).

A small language model, generated from a spec written here, trains on a text written here (lines
of a small grammar) to a validation loss well below that text's unigram entropy, and samples
words of it; the order task (which of two marker tokens comes first) is learnt well above
chance (50%) by the transformer and the GRU of examples/order-*.yaml.

The trainer's promises, in real processes: a run stopped by SIGINT or SIGTERM between two rows
and resumed writes the same metrics.jsonl as a run never stopped; under torchrun (two CPU
processes, gloo) no collective runs between the checks, a signal to one process stops both
after the same step, and the checkpoint continues in one process; a loss that stops being
finite in validation ends the run with exit code 1 and no checkpoint of its weights.

The moments are made, not waited for: the runs go through a launcher written here, which
wraps the project's learning_rate() (called once at the start of every step) to send the
signal at a given step, and torch.distributed's collectives to count them, step by step.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from conftest import GIT_IDENTITY, ROOT, run_cli

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

SUBJECTS = ["the king", "a fool", "my lord", "the queen", "thy father", "that knave"]
VERBS = ["doth love", "shall see", "hath slain", "would fear", "must greet"]
OBJECTS = ["the crown", "his sword", "her ring", "the night", "our cause"]


def grammar_text(lines: int = 300, seed: int = 0) -> str:
    """Lines of subject, verb, object and a stop: a few KB with structure a model can learn."""
    rng = random.Random(seed)
    return "".join(
        f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice('.!?;')}\n"
        for _ in range(lines)
    )


def unigram_entropy(text: str) -> float:
    """Entropy of the character frequencies in nats: the loss of the best model that ignores
    context."""
    counts = Counter(text)
    return -sum(n / len(text) * math.log(n / len(text)) for n in counts.values())


def tiny_lm_spec(vocab: int, name: str = "tiny-lm") -> dict:
    """A 2-layer, 64-wide transformer LM over a context of 32 (nanoGPT's layout)."""
    return {
        "project": name,
        "model": {
            "kind": "lm",
            "input": [32],
            "vocab": vocab,
            "seq": [
                {"type": "embedding", "features": 64},
                {"type": "transformer", "layers": 2, "heads": 4},
                {"type": "norm"},
            ],
            "tie_embeddings": True,
        },
        "train": {"batch_size": 32, "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 0.1}},
    }


def new_project(tmp_path: Path, env: dict, spec: Path, name: str) -> Path:
    result = run_cli("new", name, "--spec", spec, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    return tmp_path / name


def run_module(project: Path, env: dict, module: str, *args: str) -> subprocess.CompletedProcess:
    package = project.name.replace("-", "_")
    result = subprocess.run(
        [sys.executable, "-m", f"{package}.{module}", *args],
        cwd=project,
        env={**env, "PYTHONPATH": str(project / "src")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def last_row(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])


def test_language_model_learns_a_text_and_samples_from_it(tmp_path, env):
    text = grammar_text()
    (tmp_path / "verses.txt").write_text(text)
    spec = tiny_lm_spec(len(set(text)))
    (tmp_path / "tiny-lm.yaml").write_text(yaml.safe_dump(spec))
    project = new_project(tmp_path, env, tmp_path / "tiny-lm.yaml", "tiny-lm")
    run = tmp_path / "run"
    flags = ["--max-steps", "200", "--eval-every", "100", "--warmup-steps", "20", "--device", "cpu"]
    run_module(project, env, "train", "--data", str(tmp_path / "verses.txt"), "--out", str(run), *flags)

    entropy = unigram_entropy(text)  # 2.92 nats (27 characters)
    val_loss = last_row(run)["val_loss"]
    print(f"validation loss {val_loss:.3f} nats, unigram entropy {entropy:.3f} nats")
    assert val_loss < 0.5 * entropy, f"validation loss {val_loss:.3f}, unigram entropy {entropy:.3f}"

    args = ["--checkpoint", str(run / "checkpoint.pt"), "--prompt", "the king", "--tokens", "200"]
    sampled = run_module(project, env, "sample", *args, "--temperature", "0.8", "--top-k", "5").stdout
    assert sampled.startswith("the king") and set(sampled) <= set(text)
    words = set(" ".join(SUBJECTS + VERBS + OBJECTS).split())
    said = sampled.replace("\n", " ").replace(".", " ").replace("!", " ").replace("?", " ")
    said = said.replace(";", " ").split()[2:-1]  # after the prompt, before a cut-off last word
    assert said and sum(word in words for word in said) >= 0.8 * len(said), sampled

    refused = subprocess.run(
        [sys.executable, "-m", "tiny_lm.sample", *args[:2], "--prompt", "ROMEO:"],
        cwd=project, env={**env, "PYTHONPATH": str(project / "src")}, capture_output=True, text=True,
    )
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "not in the vocabulary" in refused.stderr


@pytest.mark.parametrize("example", ["order-transformer", "order-gru"])
def test_sequence_classifier_learns_which_marker_comes_first(example, tmp_path, env):
    project = new_project(tmp_path, env, ROOT / "examples" / f"{example}.yaml", example)
    run = tmp_path / "run"
    flags = ["--samples", "2048", "--epochs", "8", "--device", "cpu", "--out", str(run)]
    output = run_module(project, env, "train", *flags).stdout
    row = last_row(run)
    print(f"{example}: validation accuracy {row['val_acc']:.3f} after {row['step']} steps")
    assert row["val_acc"] >= 0.9, output  # chance: 0.5


# --------------------------------------------------------------------------- the trainer's promises

LAUNCHER = """\
import json, os, signal, sys

import torch.distributed as dist

package, stop_at, stop_rank, signum, log = sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5]
train = __import__(f"{package}.train", fromlist=["main"])
rank = int(os.environ.get("RANK", "0"))
step, calls = [0], []  # the step under way, and (step, collective) of every collective call


def counted(name, collective):
    def call(*args, **kwargs):
        calls.append((step[0], name))
        return collective(*args, **kwargs)

    return call


for name in ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "barrier", "reduce"):
    setattr(dist, name, counted(name, getattr(dist, name)))
schedule = train.learning_rate


def learning_rate(done, config, total):  # called once, as step done + 1 begins
    step[0] = done + 1
    if step[0] == stop_at and rank == stop_rank:
        os.kill(os.getpid(), signum)
    return schedule(done, config, total)


train.learning_rate = learning_rate
try:
    train.main(sys.argv[6:])
finally:
    with open(f"{log}.{rank}.json", "w") as file:
        json.dump(calls, file)
"""


@pytest.fixture(scope="module")
def trainers(tmp_path_factory) -> dict:
    """A tiny LM (spec written here) and examples/order-gru.yaml generated once, the launcher,
    and an environment to run them in."""
    root = tmp_path_factory.mktemp("seq-trainers")
    env = {
        **os.environ,
        **GIT_IDENTITY,
        "SCAFFOLD_HOME": str(root / "scaffold-home"),
        "COPIER_SETTINGS_PATH": str(root / "no-copier-settings.yml"),
        "OMP_NUM_THREADS": "1",
    }
    (root / "tiny-lm.yaml").write_text(yaml.safe_dump(tiny_lm_spec(65)))
    projects = {
        "lm": new_project(root, env, root / "tiny-lm.yaml", "tiny-lm"),
        "seq": new_project(root, env, ROOT / "examples" / "order-gru.yaml", "order-gru"),
    }
    (root / "launch.py").write_text(LAUNCHER)
    return {"root": root, "env": env, "launcher": root / "launch.py", **projects}


SHORT = {  # 60 steps, a row every 20; CHECK_EVERY (50) is the other check
    "lm": ["--samples", "64", "--batch-size", "8", "--eval-batches", "2", "--warmup-steps", "5"],
    "seq": ["--samples", "512", "--batch-size", "16"],
}


def launch(trainers, kind: str, *args, log: Path, processes: int = 1, stop_at: int = 0, stop_rank: int = 0,
           signum: int = signal.SIGTERM) -> subprocess.CompletedProcess:
    """Run the kind's train.py through the launcher (under torchrun with processes > 1): `signum`
    to rank `stop_rank` as step `stop_at` begins; each rank's collectives logged to log.RANK.json."""
    project = trainers[kind]
    package = project.name.replace("-", "_")
    launcher = [str(trainers["launcher"]), package, str(stop_at), str(stop_rank), str(int(signum)), str(log)]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    else:
        command = [sys.executable]
    env = {**trainers["env"], "PYTHONPATH": str(project / "src")}
    flags = [*SHORT[kind], "--max-steps", "60", "--eval-every", "20", "--device", "cpu", *map(str, args)]
    return subprocess.run(
        [*command, *launcher, *flags], cwd=project, env=env, capture_output=True, text=True, timeout=600
    )


def resume(trainers, kind: str, checkpoint: Path, *flags: str) -> subprocess.CompletedProcess:
    """`python -m <package>.train --resume checkpoint`, in one process."""
    project = trainers[kind]
    return subprocess.run(
        [sys.executable, "-m", f"{project.name.replace('-', '_')}.train", "--resume", str(checkpoint), *flags],
        cwd=project, env={**trainers["env"], "PYTHONPATH": str(project / "src")},
        capture_output=True, text=True, timeout=600,
    )


def metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the timings (tokens_per_s, time), which differ from run to run."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in ("tokens_per_s", "time")} for row in rows]


def files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def checkpoint_step(path: Path) -> int:
    import torch

    return torch.load(path, weights_only=True)["run"]["step"]


@pytest.mark.parametrize("kind, signum", [("lm", signal.SIGINT), ("seq", signal.SIGTERM)])
def test_a_stopped_run_resumes_to_the_same_metrics_file(trainers, tmp_path, kind, signum):
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    result = launch(trainers, kind, "--out", whole, log=tmp_path / "whole")
    assert result.returncode == 0, result.stderr[-3000:]

    # the signal at step 30: between the rows of steps 20 and 40, and not at a check
    result = launch(trainers, kind, "--out", stopped, log=tmp_path / "stopped", stop_at=30, signum=signum)
    assert result.returncode == 128 + signum, result.stderr[-3000:]
    assert result.stderr.count("resume with:") == 1 and "Traceback" not in result.stderr
    assert checkpoint_step(stopped / "checkpoint.pt") == 30
    assert len(metrics(stopped)) == 1  # the row of step 20
    other = tmp_path / "other"
    shutil.copytree(stopped, other)  # the same stop, to continue with another batch size

    resumed = resume(trainers, kind, stopped / "checkpoint.pt")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(metrics(whole)) == 3 and metrics(stopped) == metrics(whole)  # float for float

    # another --batch-size continues too (the losses of the steps before the stop are kept)
    resumed = resume(trainers, kind, other / "checkpoint.pt", "--out", str(other), "--batch-size", "4")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = metrics(other)
    assert [row["step"] for row in rows] == [20, 40, 60] and rows[0] == metrics(whole)[0]
    assert all(math.isfinite(row["train_loss"]) for row in rows) and rows[1] != metrics(whole)[1]


def test_two_processes_agree_only_at_the_checks_and_resume_exactly(trainers, tmp_path):
    whole, stopped, log = tmp_path / "whole", tmp_path / "stopped", tmp_path / "calls"
    result = launch(trainers, "lm", "--out", whole, log=log, processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("step 60/60") == 1  # rank 0 alone prints
    checks = {20, 40, 50, 60}  # the rows (every 20 steps, and the last) and CHECK_EVERY
    for rank in (0, 1):
        calls = json.loads(Path(f"{log}.{rank}.json").read_text())
        between = [(step, name) for step, name in calls if step and step not in checks]
        per_check = {step: sum(1 for s, _ in calls if s == step) for step in sorted(checks)}
        print(f"rank {rank}: {len(calls)} collectives, at set-up {sum(1 for s, _ in calls if s == 0)}, "
              f"at the checks {per_check}, between the checks {len(between)}")
        assert not between, between
        assert all(per_check.values())  # the checks do agree

    # SIGTERM to rank 1 alone at step 45: both processes stop after step 50, the next check
    result = launch(trainers, "lm", "--out", stopped, log=log, processes=2, stop_at=45, stop_rank=1)
    assert result.returncode != 0
    assert result.stderr.count("resume with:") == 1 and "SIGTERM: stopped at step 50" in result.stderr
    worker_tracebacks = result.stderr.count("Traceback") - result.stderr.count("ChildFailedError:")
    assert worker_tracebacks == 0, result.stderr[-3000:]  # (torchrun reports a failed child its own way)
    assert checkpoint_step(stopped / "checkpoint.pt") == 50
    before = files(stopped)

    # a second run into that directory is refused by rank 0, in one message
    refused = launch(trainers, "lm", "--out", stopped, log=log, processes=2)
    assert refused.returncode != 0 and refused.stderr.count("error:") == 1, refused.stderr[-3000:]
    assert "holds an earlier run" in refused.stderr and files(stopped) == before

    # one process cannot continue the sums of two between rows: one line says what must match
    alone = resume(trainers, "lm", stopped / "checkpoint.pt")
    assert alone.returncode == 2 and alone.stderr.count("\n") == 1, alone.stderr[-3000:]
    assert "by 2 process(es)" in alone.stderr and files(stopped) == before

    # two processes continue it to the very floats of the run never stopped
    result = launch(trainers, "lm", "--resume", stopped / "checkpoint.pt", log=log, processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(metrics(whole)) == 3 and metrics(stopped) == metrics(whole)


def test_a_validation_loss_that_is_not_finite_stops_the_run(trainers, tmp_path):
    # an enormous weight decay: one step, and every weight is about 1e33; validation overflows
    out = tmp_path / "run"
    flags = ["--weight-decay", "1e38", "--warmup-steps", "0", "--max-steps", "1", "--eval-every", "1"]
    result = launch(trainers, "lm", "--out", out, *flags, log=tmp_path / "calls")
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.count("\n") == 1 and "at step 1" in result.stderr and "validation loss" in result.stderr
    assert not (out / "checkpoint.pt").exists() and not (out / "best.pt").exists()
