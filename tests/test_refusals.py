"""Bad input to a generated project's entry points, and to `scaffold update`, is refused in one
line with exit code 2, and a refused or failed command leaves every file as it was.

Each project is generated once for the module and trained for a moment. The refusals run in one
interpreter per project (a driver calls each entry point's main() in turn, so that the cases do
not pay for a Python start and an import of torch each): for every case the driver snapshots the
whole directory tree (paths, sizes, modification times, SHA-256 of the bytes) before and after,
and the test compares them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import GIT_IDENTITY, ROOT, git, run_cli
from signal_helpers import default_signals, differences, project_state

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")
pytest.importorskip("matplotlib")

pytestmark = pytest.mark.slow

# Runs each case [module, argv] of argv[2] (a JSON file) in turn, in the project at argv[1]:
# its exit code, stderr, and the files that changed under argv[1] (python's __pycache__ aside).
DRIVER = r"""
import contextlib, hashlib, importlib, io, json, os, sys, traceback
root, cases = sys.argv[1], json.load(open(sys.argv[2]))

def tree():
    found = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", ".git"))
        for name in files:
            path = os.path.join(folder, name)
            status = os.stat(path)
            with open(path, "rb") as handle:
                digest = hashlib.sha256(handle.read()).hexdigest()
            found[os.path.relpath(path, root)] = [status.st_size, status.st_mtime_ns, digest]
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root) + "/"] = "dir"
    return found

results = []
for module, args in cases:
    before, err, code = tree(), io.StringIO(), 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            importlib.import_module(module).main(args)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
    after = tree()
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    results.append({"case": [module, args], "code": code, "stderr": err.getvalue(), "changed": changed})
print(json.dumps(results))
"""

IMAGE_SPEC = """\
project: pics
model:
  kind: cnn
  input: [1, 8, 8]
  defaults: {kernel: 3, padding: 1, activation: relu}
  conv:
    - {channels: 4, pool: 2}
  mlp:
    - {features: 3, activation: none}
train:
  task: classification
  epochs: 1
  batch_size: 8
"""


def environment(root: Path) -> dict[str, str]:
    return {
        **os.environ,
        **GIT_IDENTITY,
        "SCAFFOLD_HOME": str(root / "scaffold-home"),
        "COPIER_SETTINGS_PATH": str(root / "no-copier-settings.yml"),
    }


def generate(root: Path, spec: Path | str, name: str) -> tuple[Path, dict[str, str]]:
    env = environment(root)
    if isinstance(spec, str):
        (root / f"{name}.yaml").write_text(spec)
        spec = root / f"{name}.yaml"
    result = run_cli("new", name, "--spec", spec, cwd=root, env=env)
    assert result.returncode == 0, result.stderr
    return root / name, {**env, "PYTHONPATH": str(root / name / "src")}


def run(project, module: str, *args: object) -> subprocess.CompletedProcess:
    path, env = project
    package = path.name.replace("-", "_")
    command = [sys.executable, "-m", f"{package}.{module}", *map(str, args)]
    return subprocess.run(command, cwd=path, env=env, capture_output=True, text=True, timeout=300)


def refusals(project, cases: list[tuple[str, list]], tmp: Path) -> list[dict]:
    """Run the cases (module, argv) in one interpreter; each result has code, stderr, changed."""
    path, env = project
    package = path.name.replace("-", "_")
    listing = tmp / "cases.json"
    listing.write_text(
        json.dumps([[f"{package}.{m}", [str(a) for a in args]] for m, args in cases])
    )
    command = [sys.executable, "-c", DRIVER, str(path), str(listing)]
    result = subprocess.run(command, cwd=path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def assert_refused(result: dict, *words: str) -> None:
    """Exit code 2, one line of error naming the words, no traceback, no file changed."""
    where = " ".join(result["case"][1])
    lines = result["stderr"].strip().splitlines()
    assert result["code"] == 2, f"{where}: exit {result['code']}\n{result['stderr']}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{where}: {result['stderr']}"
    for word in words:
        assert word in lines[0], f"{where}: {word!r} not in {lines[0]!r}"
    assert not result["changed"], f"{where}: changed {result['changed']}"


@contextlib.contextmanager
def read_only(folder: Path):
    """folder made read-only for this process: chmod for a user, the immutable attribute for
    root (whom permissions do not stop); skip where neither works."""
    if os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(mode)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode:
        pytest.skip("root, and no immutable attribute here: a read-only directory cannot be made")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


# --------------------------------------------------------------------------- classic kinds


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    """The tabular MLP, a run of one epoch in runs/, and a data file of 8 samples."""
    project = generate(
        tmp_path_factory.mktemp("mlp"), ROOT / "examples" / "tabular-mlp.yaml", "mlp"
    )
    path = project[0]
    result = run(
        project,
        "train",
        "--epochs",
        1,
        "--samples",
        64,
        "--out",
        "runs",
        "--no-plot",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    make = (
        "import torch; from mlp.model import INPUT_SHAPE, NUM_CLASSES; "
        "torch.save({'x': torch.randn(8, *INPUT_SHAPE), 'y': torch.randint(0, NUM_CLASSES, (8,))}, 'data.pt')"
    )
    subprocess.run([sys.executable, "-c", make], cwd=path, env=project[1], check=True)
    (path / "data").mkdir()
    return project


def test_evaluate_predict_export_refuse_outputs_that_destroy_or_cannot_be_written(mlp, tmp_path):
    path = mlp[0]
    best, data = "runs/best.pt", "data.pt"
    os.link(path / best, path / "hardlink.pt")  # the checkpoint under another name
    model = ["--checkpoint", best]
    cases = [
        (("evaluate", [*model, "--data", data, "--json", best]), ["--json", "the checkpoint"]),
        (("evaluate", [*model, "--data", data, "--json", data]), ["--json", "the data"]),
        (("evaluate", [*model, "--data", data, "--json", "./runs/../runs/best.pt"]), ["--json"]),
        (
            ("evaluate", [*model, "--data", data, "--json", "missing/out.json"]),
            ["--json", "missing"],
        ),
        (("evaluate", [*model, "--data", data, "--json", "runs"]), ["--json", "directory"]),
        (("evaluate", [*model, "--data", data, "--batch-size", -4]), ["--batch-size -4"]),
        (("evaluate", [*model, "--data", data, "--batch-size", 0]), ["--batch-size 0"]),
        (("predict", [*model, "--data", data, "--out", best]), ["--out", "the checkpoint"]),
        (
            ("predict", [*model, "--data", data, "--out", "hardlink.pt"]),
            ["--out", "the checkpoint"],
        ),
        (("predict", [*model, "--data", data, "--out", data]), ["--out", "the data"]),
        (("predict", [*model, "--data", data, "--out", "missing/p.csv"]), ["--out", "missing"]),
        (("predict", [*model, "--data", data, "--batch-size", -4]), ["--batch-size -4"]),
        (("predict", [*model, "--data", data, "--batch-size", 0]), ["--batch-size 0"]),
        (("export", [*model, "--out", best]), ["--out", "the checkpoint"]),
        (("export", [*model, "--out", "missing/model.pt2"]), ["--out", "missing"]),
        (("export", [*model, "--out", "model.pt2", "--onnx", best]), ["--onnx", "the checkpoint"]),
        (("export", [*model, "--out", "model.pt2", "--onnx", "model.pt2"]), ["--onnx", "--out"]),
        (("diagnose", [*model, "--batch-size", 0]), ["--batch-size 0"]),
    ]
    results = refusals(mlp, [case for case, _ in cases], tmp_path)
    for result, (_, words) in zip(results, cases):
        assert_refused(result, *words)
    # the checkpoint still loads, and an output that may be written is written
    result = run(mlp, "predict", *model, "--data", data, "--out", "data/p.csv")
    assert result.returncode == 0, result.stderr
    assert len((path / "data" / "p.csv").read_text().splitlines()) == 9


def test_outputs_in_a_read_only_directory_are_refused(mlp, tmp_path):
    locked = mlp[0] / "readonly"
    locked.mkdir(exist_ok=True)
    model = ["--checkpoint", "runs/best.pt"]
    cases = [
        ("evaluate", [*model, "--data", "data.pt", "--json", "readonly/r.json"]),
        ("predict", [*model, "--data", "data.pt", "--out", "readonly/p.csv"]),
        ("export", [*model, "--out", "readonly/model.pt2"]),
    ]
    with read_only(locked):
        results = refusals(mlp, cases, tmp_path)
    for result, (_, args) in zip(results, cases):
        assert_refused(result, args[-2], "cannot write")


@pytest.mark.parametrize(
    "lines, words",
    [
        (
            ['{"step": 10, "train_loss": 3.2}', '{"step": 20, "train_loss": 3.1}'],
            ["line 1", "step"],
        ),
        (['{"epoch": 1, "train_loss": 1.0}', '{"train_loss": 0.9}'], ["line 2", "epoch"]),
        (['[{"epoch": 1, "train_loss": 1.0}]'], ["line 1", "list"]),
        (['{"epoch": 1, "train_loss": 1.0}', '{"epoch": 2, "train_lo'], ["line 2", "not JSON"]),
        ([], ["no rows"]),
    ],
    ids=["steps", "no-epoch", "json-list", "truncated", "empty"],
)
def test_plot_refuses_a_metrics_file_it_cannot_draw(mlp, tmp_path, lines, words):
    run_dir = mlp[0] / "plots" / tmp_path.name
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    (result,) = refusals(mlp, [("plot", [run_dir])], tmp_path)
    assert_refused(result, "metrics.jsonl", *words)


# --------------------------------------------------------------------------- image folders


def folder(root: Path, classes: dict[str, int], seed: int = 0) -> Path:
    """root/<class>/<i>.png: that many random 8 x 8 grayscale images of each class."""
    rng = random.Random(seed)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = bytes(rng.randrange(256) for _ in range(64))
            Image.frombytes("L", (8, 8), pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def pics(tmp_path_factory):
    """The image CNN, trained on a/images with b/images (same base name) to validate; the class
    folders include '...', which torchvision's ImageFolder reads as a class."""
    root = tmp_path_factory.mktemp("pics")
    project = generate(root, IMAGE_SPEC, "pics")
    classes = {"...": 5, "circle": 6, "cross": 7}
    train, val = folder(root / "a" / "images", classes), folder(
        root / "b" / "images", classes, seed=1
    )
    result = run(
        project,
        "train",
        "--data",
        train,
        "--val-data",
        val,
        "--out",
        "runs",
        "--no-plot",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    return project, root


def test_image_folders_are_read_as_imagefolder_reads_them(pics, tmp_path):
    project, root = pics
    checkpoint = torch.load(project[0] / "runs" / "best.pt", map_location="cpu", weights_only=True)
    assert checkpoint["config"]["class_names"] == sorted(["...", "circle", "cross"])
    out = tmp_path / "result.json"
    result = run(
        project,
        "evaluate",
        "--checkpoint",
        "runs/best.pt",
        "--data",
        root / "b" / "images",
        "--json",
        out,
    )
    assert result.returncode == 0, result.stderr
    confusion = json.loads(out.read_text())["confusion"]
    assert [sum(row) for row in confusion] == [5, 6, 7]  # every image, under its own class


def test_folders_of_one_base_name_have_a_cache_each(pics):
    project, root = pics
    caches = sorted((project[0] / "runs" / "cache").glob("images-*.pt"))
    assert len(caches) == 2, caches
    sizes = sorted(len(torch.load(c, weights_only=True)["files"]) for c in caches)
    assert sizes == [18, 18]
    stamps = [c.stat().st_mtime_ns for c in caches]
    result = run(
        project, "evaluate", "--checkpoint", "runs/best.pt", "--data", root / "a" / "images"
    )
    assert result.returncode == 0, result.stderr
    assert [c.stat().st_mtime_ns for c in caches] == stamps  # read back, not decoded again


def test_an_empty_or_single_class_folder_is_refused(pics, tmp_path):
    project, root = pics
    empty = folder(tmp_path / "empty", {"circle": 3, "cross": 3})
    (empty / "square").mkdir()
    single = folder(tmp_path / "single", {"circle": 6})
    broken = folder(tmp_path / "broken", {"circle": 3, "cross": 3, "square": 3})
    (broken / "cross" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    cases = [
        ("train", ["--data", empty, "--out", tmp_path / "r1", "--no-plot", "--device", "cpu"]),
        ("evaluate", ["--checkpoint", "runs/best.pt", "--data", empty]),
        ("predict", ["--checkpoint", "runs/best.pt", "--data", empty, "--out", tmp_path / "p.csv"]),
        ("train", ["--data", single, "--out", tmp_path / "r2", "--no-plot", "--device", "cpu"]),
        ("evaluate", ["--checkpoint", "runs/best.pt", "--data", broken]),
    ]
    results = refusals(project, cases, tmp_path)
    for result in results[:3]:
        assert_refused(result, str(empty / "square"))
    assert_refused(results[3], str(single), "1 class folder", "3 classes")
    assert_refused(results[4], str(broken / "cross" / "gone.png"), "cannot read")


def test_a_cache_directory_that_cannot_be_written_is_skipped_with_a_warning(pics, tmp_path):
    project, root = pics
    run_dir = project[0] / "copied"
    run_dir.mkdir(exist_ok=True)
    shutil.copy(project[0] / "runs" / "best.pt", run_dir / "best.pt")
    (run_dir / "cache").write_text("a file where the cache directory would go\n")
    data = root / "b" / "images"
    cases = [
        ("evaluate", ["--checkpoint", run_dir / "best.pt", "--data", data]),
        (
            "predict",
            ["--checkpoint", run_dir / "best.pt", "--data", data, "--out", tmp_path / "p.csv"],
        ),
    ]
    for result in refusals(project, cases, tmp_path):
        assert result["code"] == 0, result["stderr"]
        assert (
            result["stderr"].startswith("warning: no cache") and "Traceback" not in result["stderr"]
        )
        assert result["changed"] == []
    (run_dir / "cache").unlink()
    with read_only(run_dir):
        (result,) = refusals(project, cases[:1], tmp_path)
    assert result["code"] == 0 and result["stderr"].startswith("warning: no cache"), result[
        "stderr"
    ]


# --------------------------------------------------------------------------- sequences


@pytest.fixture(scope="module")
def gru(tmp_path_factory):
    return generate(
        tmp_path_factory.mktemp("gru"), ROOT / "examples" / "order-gru.yaml", "order-gru"
    )


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return generate(
        tmp_path_factory.mktemp("lm"), ROOT / "examples" / "shakespeare-char.yaml", "lm"
    )


def test_seq_data_files_that_do_not_fit_are_refused(gru, tmp_path):
    """A GRU with `last` pooling reads padding when the mask pads on the left: refused, as are
    masks with holes, a uint8 mask (its dtype named), a scalar y, sparse and expanded tensors."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(3, 12, (64, 12), generator=g)
    y = torch.randint(0, 2, (64,), generator=g)
    right = torch.arange(12) < torch.randint(4, 13, (64,), generator=g)[:, None]
    holes = right.clone()
    holes[5, 1] = False
    files = {
        "left.pt": ({"x": x, "y": y, "mask": right.flip(1)}, ["left.pt", "first token", "right"]),
        "holes.pt": ({"x": x, "y": y, "mask": holes}, ["holes.pt", "the first: 5"]),
        "uint8.pt": (
            {"x": x, "y": y, "mask": right.to(torch.uint8)},
            ["uint8.pt", "torch.uint8", "bool"],
        ),
        "scalar.pt": ({"x": x, "y": torch.tensor(1)}, ["scalar.pt", "y", "shape ()"]),
        "sparse.pt": ({"x": x.to_sparse(), "y": y}, ["sparse.pt", "x", "sparse"]),
        "expanded.pt": ({"x": x[:1].expand(10**9, 12), "y": y}, ["expanded.pt", "x", "expanded"]),
    }
    for name, (contents, _) in files.items():
        torch.save(contents, tmp_path / name)
    torch.save({"x": x, "y": y, "mask": right}, tmp_path / "right.pt")
    common = ["--max-steps", 1, "--eval-every", 1, "--device", "cpu"]
    cases = [
        ("train", ["--data", tmp_path / n, "--out", tmp_path / f"run-{n}", *common]) for n in files
    ]
    results = refusals(gru, cases, tmp_path)
    for result, (_, words) in zip(results, files.values()):
        assert_refused(result, *words)
    result = run(gru, "train", "--data", tmp_path / "right.pt", "--out", tmp_path / "ok", *common)
    assert result.returncode == 0, result.stderr


def test_lm_token_files_that_are_sparse_or_expanded_are_refused(lm, tmp_path):
    tokens = torch.randint(0, 65, (4096,))
    files = {
        "sparse.pt": {"tokens": tokens.to_sparse()},
        "expanded.pt": {"tokens": tokens[:1].expand(10**11)},  # 800 GB as int64, 8 bytes stored
    }
    for name, contents in files.items():
        torch.save(contents, tmp_path / name)
    common = ["--max-steps", 1, "--device", "cpu"]
    cases = [
        ("train", ["--data", tmp_path / n, "--out", tmp_path / f"run-{n}", *common]) for n in files
    ]
    sparse, expanded = refusals(lm, cases, tmp_path)
    assert_refused(sparse, "sparse.pt", "tokens", "sparse")
    assert_refused(expanded, "expanded.pt", "tokens", "expanded")


# --------------------------------------------------------------------------- GAN


@pytest.fixture(scope="module")
def gan(tmp_path_factory):
    project = generate(tmp_path_factory.mktemp("gan"), ROOT / "examples" / "gan.yaml", "gan")
    result = run(
        project, "train", "--epochs", 1, "--samples", 64, "--out", "runs", "--device", "cpu"
    )
    assert result.returncode == 0, result.stderr
    return project


def test_gan_sample_and_plot_refuse_in_one_line(gan, tmp_path):
    path = gan[0]
    (path / "notes.txt").write_text("not a checkpoint\n")
    cases = [
        (("sample", ["--out", "runs/checkpoint.pt"]), ["--out", "checkpoint"]),
        (("sample", ["--n", 0]), ["--n 0"]),
        (("sample", ["--n", -3]), ["--n -3"]),
        (("sample", ["--out", "missing/s.pt"]), ["--out", "missing"]),
        (("sample", ["--out", "runs"]), ["--out", "directory"]),
        (("sample", ["--checkpoint", "nothing.pt"]), ["nothing.pt"]),
        (("sample", ["--checkpoint", "notes.txt"]), ["notes.txt"]),
        (("plot", ["nothing"]), ["nothing"]),
    ]
    results = refusals(gan, [case for case, _ in cases], tmp_path)
    for result, (_, words) in zip(results, cases):
        assert_refused(result, *words)


# --------------------------------------------------------------------------- scaffold update


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("update")
    path, _ = generate(root, ROOT / "examples" / "tabular-mlp.yaml", "tabular")
    return path, environment(root)


def test_update_refuses_while_another_update_holds_the_project(project):
    path, env = project
    before = project_state(path)
    lock = Path(git(path, "rev-parse", "--absolute-git-dir").strip()) / "scaffold-update.lock"
    with open(lock, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write("pid 4242\n")
        handle.flush()
        result = run_cli("update", path, cwd=path, env=env)
    assert result.returncode == 2, result.stderr
    assert "another `scaffold update` (pid 4242)" in result.stderr and str(path) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert differences(before, project_state(path)) == []


def test_a_second_update_is_refused_while_the_first_runs(project, tmp_path):
    """The first update waits at a known stage after taking the lock (the test seam); the
    second, started then, is refused naming the first's pid; the first, interrupted there,
    leaves the project unchanged."""
    path, env = project
    before = project_state(path)
    marker = tmp_path / "paused"
    first = subprocess.Popen(
        [sys.executable, "-m", "scaffold.cli", "update", str(path)],
        cwd=path,
        env={**env, "SCAFFOLD_TEST_PAUSE": f"update.synced:{marker}"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_signals,  # not inherited as ignored
    )
    try:
        while not marker.exists() and first.poll() is None:
            # the moment is the marker's appearance; the wait only polls for it
            with contextlib.suppress(subprocess.TimeoutExpired):
                first.wait(timeout=0.01)
        assert marker.exists(), first.communicate()
        second = run_cli("update", path, cwd=path, env=env)
    finally:
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=300)
    pid = marker.read_text().split()[0]
    assert second.returncode == 2, second.stderr
    assert f"another `scaffold update` (pid {pid})" in second.stderr, second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert first.returncode == 130 and "unchanged" in err, err
    assert differences(before, project_state(path)) == []


def test_update_with_answers_that_are_not_yaml_names_the_line(project):
    import yaml

    path, env = project
    answers = path / ".copier-answers.yml"
    text = answers.read_text()
    broken = text.replace("_commit:", "_commit: [unclosed", 1)
    with pytest.raises(yaml.YAMLError) as error:
        yaml.safe_load(broken)
    mark = error.value.problem_mark
    commit = ["git", "commit", "-qam", "edit the answers"]
    answers.write_text(broken)
    subprocess.run(commit, cwd=path, env=env, check=True)
    try:
        before = project_state(path)
        result = run_cli("update", path, cwd=path, env=env)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert "bug in scaffold" not in lines[0]
        assert (
            f".copier-answers.yml, line {mark.line + 1}, column {mark.column + 1}: not valid YAML"
            in lines[0]
        )
        assert differences(before, project_state(path)) == []
    finally:
        answers.write_text(text)
        subprocess.run(commit, cwd=path, env=env, check=True)
