"""Runs never lose work: the generated trainer driven as a new user would, in fresh interpreters,
with real signals, real concurrent processes and real write failures.

One tabular-mlp project (and, for a foreign checkpoint, one conv-vae project) is generated for
the module. Where a signal must land at a known step, the run is started through PAUSE, a
driver that patches the project's loop in the child process (the generated code has no test
hook): after that step it writes a marker file and waits there for a signal, so no test
depends on timing.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from conftest import GIT_IDENTITY, ROOT, run_cli

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow

PACKAGE = "tabular_mlp"
QUICK = ["--samples", "512", "--batch-size", "32", "--device", "cpu"]  # 410 training samples: 12 steps
STEPS = 12  # per epoch, with QUICK

# python -c PAUSE PACKAGE N MARKER ARGS...: the package's train.main(ARGS), held after the run's
# N-th step (counted over epochs) until a signal arrives, with MARKER written once it waits
PAUSE = """
import importlib, sys, time
from pathlib import Path

package, target, marker, *args = sys.argv[1:]
loop, train = (importlib.import_module(f"{package}.{name}") for name in ("loop", "train"))
real_add, seen = loop.Tally.add, []


def add(self, *results):
    real_add(self, *results)
    seen.append(1)
    if len(seen) == int(target):
        Path(marker).write_text("paused")
        while not self.stop.requested():
            time.sleep(0.01)


loop.Tally.add = add
train.main(args)
"""


def generate(root: Path, example: str) -> tuple[Path, dict[str, str]]:
    env = {
        **os.environ,
        **GIT_IDENTITY,
        "SCAFFOLD_HOME": str(root / "scaffold-home"),
        "COPIER_SETTINGS_PATH": str(root / "no-copier-settings.yml"),
        "OMP_NUM_THREADS": "1",
    }
    result = run_cli("new", example, "--spec", ROOT / "examples" / f"{example}.yaml", cwd=root, env=env)
    assert result.returncode == 0, result.stderr
    path = root / example
    return path, {**env, "PYTHONPATH": str(path / "src")}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    return generate(tmp_path_factory.mktemp("robust"), "tabular-mlp")


@pytest.fixture(scope="module")
def reference(project, tmp_path_factory) -> Path:
    """An uninterrupted run of 3 epochs: what every interrupted and resumed run must equal."""
    out = tmp_path_factory.mktemp("reference") / "run"
    result = run(project, "--epochs", "3", *QUICK, "--out", out)
    assert result.returncode == 0, result.stderr
    return out


def command(package: str = PACKAGE) -> list[str]:
    return [sys.executable, "-m", f"{package}.train"]


def run(project, *args, cwd: Path | None = None, package: str = PACKAGE, **kwargs) -> subprocess.CompletedProcess:
    path, env = project
    return subprocess.run([*command(package), *map(str, args)], cwd=cwd or path, env=env, capture_output=True,
                          text=True, timeout=300, **kwargs)


def start(project, *args, pause_at: tuple[int, int], marker: Path) -> subprocess.Popen:
    """The run, held after step pause_at[1] of epoch pause_at[0] until a signal (see PAUSE)."""
    path, env = project
    step = (pause_at[0] - 1) * STEPS + pause_at[1]
    driver = [sys.executable, "-c", PAUSE, PACKAGE, str(step), str(marker)]
    return subprocess.Popen([*driver, *map(str, args)], cwd=path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(marker: Path, process: subprocess.Popen) -> None:
    """Until the paused run has written its marker (it then waits for a signal)."""
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert process.poll() is None, f"the run ended before it paused: {process.communicate()}"
        assert time.monotonic() < deadline, "the run never paused"
        time.sleep(0.02)


def error_lines(stderr: str) -> list[str]:
    """stderr without torch's warning about a missing NumPy."""
    return [line for line in stderr.splitlines() if "NumPy" not in line and "_conversion_method" not in line]


def one_error(result, code: int = 2) -> str:
    lines = error_lines(result.stderr)
    assert result.returncode == code, (result.returncode, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def metrics(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "time"} for row in rows]


# --------------------------------------------------------------------------- 1. no silent overwrite


def test_a_second_run_with_default_flags_never_replaces_the_first(project, tmp_path):
    shutil.copytree(project[0] / "src", tmp_path / "src")  # a fresh working directory: runs/ is the default
    first = run(project, "--epochs", "2", *QUICK, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = {name: (tmp_path / "runs" / name).read_bytes() for name in ("best.pt", "checkpoint.pt", "metrics.jsonl")}

    second = run(project, "--epochs", "2", *QUICK, "--seed", "5", cwd=tmp_path)
    message = one_error(second)
    assert "runs: holds an earlier run" in message
    assert "--resume runs/checkpoint.pt" in message and "--overwrite" in message and "--out" in message
    assert {name: (tmp_path / "runs" / name).read_bytes() for name in before} == before

    replaced = run(project, "--epochs", "1", *QUICK, "--overwrite", cwd=tmp_path)
    assert replaced.returncode == 0, replaced.stderr
    assert len(metrics(tmp_path / "runs")) == 1


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_refused_command_leaves_every_file_in_out_as_it_was(project, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = tree(out)  # run.lock too: it names the pid of the run that made it
    torch.save({"x": torch.zeros(16, 9), "y": torch.zeros(16, dtype=torch.int64)}, tmp_path / "wrong.pt")
    refused = {
        "an earlier run": ([*QUICK, "--epochs", "1"], "holds an earlier run"),
        "missing data": ([*QUICK, "--overwrite", "--data", tmp_path / "missing.pt"], "missing.pt"),
        "wrong data": ([*QUICK, "--overwrite", "--data", tmp_path / "wrong.pt"], "x has shape (16, 9)"),
        "missing --init-from": ([*QUICK, "--overwrite", "--init-from", tmp_path / "missing.pt"], "no such checkpoint"),
        "a flag": (["--resume", out / "checkpoint.pt", "--weight-decay", "inf"], "must be a finite number"),
        "another batch size": (["--resume", out / "checkpoint.pt", "--batch-size", "0"], "at least 1"),
    }
    for case, (flags, words) in refused.items():
        message = one_error(run(project, *flags, "--out", out))
        assert words in message, (case, message)
        assert tree(out) == before, case
    fresh = tmp_path / "fresh" / "run"  # a refused run into a new directory leaves none behind
    one_error(run(project, *QUICK, "--data", tmp_path / "missing.pt", "--out", fresh))
    assert not (tmp_path / "fresh").exists()


# --------------------------------------------------------------------------- 2. SIGINT, SIGTERM


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_training_saves_a_checkpoint_that_resumes_exactly(project, reference, tmp_path, signum):
    out, marker = tmp_path / "run", tmp_path / "paused"
    process = start(project, "--epochs", "3", *QUICK, "--out", out, pause_at=(2, 5), marker=marker)
    wait_for(marker, process)
    process.send_signal(signum)  # the run is inside epoch 2, after its step 5
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    checkpoint = out / "checkpoint.pt"
    resume = f"python -m {PACKAGE}.train --resume {checkpoint}"
    assert error_lines(stderr) == [
        f"{signal.Signals(signum).name}: stopped at step 5 of epoch 2; saved {checkpoint}; resume with: {resume}"
    ]
    saved = torch.load(checkpoint, weights_only=True)
    assert (saved["epoch"], saved["run"]["step"]) == (1, 5)

    resumed = run(project, "--resume", checkpoint)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {checkpoint} after epoch 1, step 5" in resumed.stdout
    assert metrics(out) == metrics(reference)  # exactly equal floats, every epoch
    final = [torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"] for run_dir in (out, reference)]
    assert all(torch.equal(final[0][name], final[1][name]) for name in final[0])


# --------------------------------------------------------------------------- 3. one run per directory


def test_a_directory_in_use_by_a_live_run_is_refused(project, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "paused"
    live = start(project, "--epochs", "3", *QUICK, "--out", out, pause_at=(1, 2), marker=marker)
    wait_for(marker, live)
    try:
        second = run(project, "--epochs", "1", *QUICK, "--out", out, "--overwrite")
        message = one_error(second)
        assert message == f"error: {out}: in use by a run that is still going (pid {live.pid}); wait for it, or give another --out"
    finally:
        live.send_signal(signal.SIGTERM)
        live.communicate(timeout=240)
    assert live.returncode == 128 + signal.SIGTERM


def test_runs_started_together_into_one_directory_leave_one_intact_run(project, tmp_path):
    out = tmp_path / "run"
    path, env = project
    crowd = [subprocess.Popen([*command(), "--epochs", "2", *QUICK, "--out", str(out)], cwd=path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    results = [(process.wait(timeout=300), process.stderr.read()) for process in crowd]
    for process in crowd:
        process.stdout.close()
        process.stderr.close()
    assert [code for code, _ in results].count(0) == 1, results
    for code, stderr in results:
        assert "Traceback" not in stderr
        if code != 0:  # refused while the winner ran, or after it finished
            (line,) = error_lines(stderr)
            assert code == 2 and ("in use by a run that is still going" in line or "holds an earlier run" in line), line
    assert [row["epoch"] for row in metrics(out)] == [1, 2]  # one run's lines, not interleaved
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


# --------------------------------------------------------------------------- 4. checkpoints that cannot resume


def test_resume_refuses_a_weights_only_file_and_another_projects_checkpoint(project, reference, tmp_path):
    weights = tmp_path / "weights.pt"
    torch.save({"model": torch.load(reference / "checkpoint.pt", weights_only=True)["model"]}, weights)
    message = one_error(run(project, "--resume", weights))
    assert message == f"error: {weights}: holds weights only, so training cannot resume from it; start from them with --init-from {weights}"

    vae = generate(tmp_path, "conv-vae")
    trained = run(vae, "--epochs", "1", "--samples", "64", "--batch-size", "32", "--device", "cpu", "--out",
                  tmp_path / "vae-run", package="conv_vae")
    assert trained.returncode == 0, trained.stderr
    foreign = tmp_path / "vae-run" / "checkpoint.pt"
    message = one_error(run(project, "--resume", foreign))
    assert message == f"error: {foreign}: a checkpoint of another project (a vae model), not of this mlp one"


# --------------------------------------------------------------------------- 5. a failing write


def limit_file_size(limit: int):
    """For the child: files may not grow beyond `limit` bytes, and a write past it fails with
    EFBIG (SIGXFSZ ignored) exactly as a write to a full disk fails with ENOSPC."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_leaves_no_temporary_file(project, reference, tmp_path):
    out = tmp_path / "run"
    size = (reference / "checkpoint.pt").stat().st_size
    result = run(project, "--epochs", "2", *QUICK, "--out", out, preexec_fn=limit_file_size(size // 2))
    message = one_error(result, code=1)
    assert message.startswith(f"error: cannot write {out / 'best.pt'} (File too large; ")
    assert message.endswith("MiB free on its disk); the files saved before it are kept")
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl", "run.lock"]  # no partial .tmp


# --------------------------------------------------------------------------- 6. CSV files


def csv_rows(n: int) -> list[str]:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, 8, generator=generator), torch.randint(0, 3, (n,), generator=generator)
    return [",".join(f"{v:.4f}" for v in row.tolist()) + f",{label}" for row, label in zip(x, y.tolist())]


def test_csv_files_with_a_byte_order_mark_latin_1_or_a_missing_first_cell(project, tmp_path):
    files = {
        "bom.csv": ("\n".join(csv_rows(40)) + "\n").encode("utf-8-sig"),  # no header: all 40 rows are data
        "latin1.csv": ("température,f1,f2,f3,f4,f5,f6,f7,classe\n" + "\n".join(csv_rows(40)) + "\n").encode("latin-1"),
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        result = run(project, "--data", tmp_path / name, "--val-fraction", "0", "--epochs", "1", "--batch-size", "8",
                     "--device", "cpu", "--out", tmp_path / f"run-{name}")
        assert result.returncode == 0, result.stderr
        assert "40 training samples; device cpu" in result.stdout, (name, result.stdout)

    rows = csv_rows(40)
    first = rows[0].split(",")
    first[1] = ""  # a missing cell in the first row of a headerless file is an error, not a header
    (tmp_path / "gap.csv").write_text(",".join(first) + "\n" + "\n".join(rows[1:]) + "\n")
    message = one_error(run(project, "--data", tmp_path / "gap.csv", "--epochs", "1", "--device", "cpu", "--out",
                            tmp_path / "run-gap"))
    assert message == f"error: {tmp_path / 'gap.csv'}, line 1, column 2: is empty"


# --------------------------------------------------------------------------- 7. hostile .pt files


def test_hostile_pt_files_are_refused_before_anything_is_allocated(project, tmp_path):
    y = torch.zeros(64, dtype=torch.int64)
    rows = 2**27  # 128 Mi rows of 8 float32 features: 4 GiB if it were ever materialized
    hostile = {
        "sparse.pt": ({"x": torch.rand(64, 8).to_sparse(), "y": y}, "x is a torch.sparse_coo tensor"),
        "expanded.pt": ({"x": torch.rand(1, 8).expand(rows, 8), "y": torch.zeros(1, dtype=torch.int64).expand(rows)},
                        f"x has shape ({rows}, 8) but only 32 bytes of values"),
        "float64.pt": ({"x": torch.full((64, 8), 1e300, dtype=torch.float64), "y": y},
                       "x holds values up to 1e+300 in magnitude, beyond float32's range"),
    }
    for name, (contents, words) in hostile.items():
        torch.save(contents, tmp_path / name)
        assert (tmp_path / name).stat().st_size < 100_000
    path, env = project
    processes = {name: subprocess.Popen([*command(), "--data", str(tmp_path / name), "--epochs", "1", "--device", "cpu",
                                         "--out", str(tmp_path / f"run-{name}")], cwd=path, env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name in hostile}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        message = one_error(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
        assert message.startswith(f"error: {tmp_path / name}: {hostile[name][1]}"), message
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # bytes, of the largest child so far
    assert peak < 2 * 2**30, f"a child used {peak / 2**30:.1f} GiB"


# --------------------------------------------------------------------------- 8. flags


BAD_FLAGS = [
    (["--batch-size", "0"], "error: --batch-size 0: must be at least 1"),
    (["--batch-size", "-5"], "error: --batch-size -5: must be at least 1"),
    (["--epochs", "0"], "error: --epochs 0: must be at least 1"),
    (["--clip-grad", "-1"], "error: --clip-grad -1.0: must be above 0"),
    (["--patience", "0"], "error: --patience 0: must be at least 1"),
    (["--lr", "0"], "error: --lr 0.0: must be above 0"),
    (["--val-fraction", "1"], "error: --val-fraction 1.0: must be at least 0 and below 1"),
    (["--samples", "0"], "error: --samples 0: must be at least 1"),
    (["--part-lr", "head=-1"], "error: argument --part-lr: expected PART=LR with LR above 0"),
    (["--epochs", "two"], "error: argument --epochs: invalid int value: 'two' (see --help)"),
    (["--device", "gpu"], "error: --device gpu: not a device; use auto, cpu, cuda or cuda:N"),
]
if not torch.cuda.is_available():
    BAD_FLAGS.append((["--device", "cuda"], "error: --device cuda: CUDA is not available here"))


def test_every_flag_is_checked_in_one_line_with_exit_code_2(project, tmp_path):
    path, env = project
    processes = [
        (flags, expected, tmp_path / f"run{i}", subprocess.Popen(
            [*command(), *flags, "--out", str(tmp_path / f"run{i}")], cwd=path, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        for i, (flags, expected) in enumerate(BAD_FLAGS)
    ]
    for flags, expected, out, process in processes:
        stdout, stderr = process.communicate(timeout=300)
        message = one_error(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
        assert message.startswith(expected), (flags, message)
        assert not (out / "checkpoint.pt").exists()


# --------------------------------------------------------------------------- 9. checksums


def test_a_checkpoint_with_a_flipped_byte_is_refused_on_resume(project, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    checkpoint = out / "checkpoint.pt"
    with zipfile.ZipFile(checkpoint) as archive:  # the first tensor's bytes: a weight of the model
        record = next(info for info in archive.infolist() if "/data/" in info.filename and info.file_size >= 16)
    raw = bytearray(checkpoint.read_bytes())
    local = record.header_offset  # the record's local header: 30 bytes, then its name and extra field
    start = local + 30 + int.from_bytes(raw[local + 26:local + 28], "little") + int.from_bytes(raw[local + 28:local + 30], "little")
    raw[start + 5] ^= 0x10
    checkpoint.write_bytes(raw)
    assert torch.load(checkpoint, weights_only=True)  # torch itself loads it, one weight changed

    message = one_error(run(project, "--resume", checkpoint))
    assert message == f"error: {checkpoint}: damaged: {record.filename} does not match the checksum saved with it; use another copy"
