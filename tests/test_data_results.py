"""Real data in, results out, in a generated project driven as a user would: a folder of PNG
images of drawn shapes trains a CNN and an autoencoder; evaluate, predict, export and plot read
their runs; a memory-mapped .pt file larger than what the process holds trains.

Two small projects (1 x 16 x 16 inputs) are generated once for the module; every command runs in
a fresh interpreter. Needs Pillow and matplotlib (the generated project's images and plots extras).
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import GIT_IDENTITY, ROOT, run_cli

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")
ImageDraw = pytest.importorskip("PIL.ImageDraw")
pytest.importorskip("matplotlib")

pytestmark = pytest.mark.slow

SIZE = 16
SHAPES = ("circle", "cross", "square")
CNN_SPEC = f"""\
project: shapes-cnn
model:
  kind: cnn
  input: [1, {SIZE}, {SIZE}]
  defaults: {{kernel: 3, padding: 1, norm: batch, activation: relu}}
  conv:
    - {{channels: 8, pool: 2}}
    - {{channels: 16, pool: 2}}
  mlp:
    - {{features: {len(SHAPES)}, activation: none}}
train:
  task: classification
  epochs: 8
  batch_size: 32
  optimizer: {{name: adamw, lr: 0.003}}
"""
AE_SPEC = f"""\
project: shapes-ae
model:
  kind: autoencoder
  input: [1, {SIZE}, {SIZE}]
  defaults: {{kernel: 3, stride: 2, padding: 1, norm: batch, activation: relu}}
  conv:
    - {{channels: 8}}
    - {{channels: 16}}
  latent: 16
  decoder: mirror
  output_activation: sigmoid
train:
  task: reconstruction
  epochs: 12
  batch_size: 16
  optimizer: {{name: adamw, lr: 0.005}}
"""


def generate(root: Path, spec_text: str, name: str) -> tuple[Path, dict[str, str]]:
    env = {
        **os.environ,
        **GIT_IDENTITY,
        "SCAFFOLD_HOME": str(root / "scaffold-home"),
        "COPIER_SETTINGS_PATH": str(root / "no-copier-settings.yml"),
    }
    spec = root / f"{name}.yaml"
    spec.write_text(spec_text)
    result = run_cli("new", name, "--spec", spec, cwd=root, env=env)
    assert result.returncode == 0, result.stderr
    path = root / name
    return path, {**env, "PYTHONPATH": str(path / "src")}


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    return generate(tmp_path_factory.mktemp("cnn"), CNN_SPEC, "shapes-cnn")


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    return generate(tmp_path_factory.mktemp("ae"), AE_SPEC, "shapes-ae")


def run(project, module: str, *args: object, timeout: int = 300) -> subprocess.CompletedProcess:
    """python -m <package>.<module> ARGS in the project, in a fresh interpreter."""
    path, env = project
    package = path.name.replace("-", "_")
    command = [sys.executable, "-m", f"{package}.{module}", *map(str, args)]
    return subprocess.run(
        command, cwd=path, env=env, capture_output=True, text=True, timeout=timeout
    )


def draw_shape(shape: str, rng: random.Random, size: int, filled: bool = False) -> Image.Image:
    """A white outline (or a filled one) of a circle, a cross or a square, of random size and
    place, on black; drawn at twice the size, which the project shrinks to size x size."""
    big = size * 2
    image = Image.new("L", (big, big), 0)
    pen = ImageDraw.Draw(image)
    side = rng.randint(big // 3, big * 2 // 3)
    x, y = rng.randint(0, big - side - 1), rng.randint(0, big - side - 1)
    box = [x, y, x + side, y + side]
    if shape == "circle":
        pen.ellipse(box, outline=255, width=3, fill=255 if filled else None)
    elif shape == "square":
        pen.rectangle(box, outline=255, width=3, fill=255 if filled else None)
    else:
        pen.line(box, fill=255, width=3)
        pen.line([x, y + side, x + side, y], fill=255, width=3)
    return image


def image_folder(
    root: Path, per_class: int, seed: int, labelled: bool = True, filled: bool = False
) -> Path:
    """root/<shape>/<i>.png, per_class images of each shape (or all of them right in root)."""
    rng = random.Random(seed)
    for shape in SHAPES:
        folder = root / shape if labelled else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw_shape(shape, rng, SIZE, filled).save(folder / f"{shape}-{i}.png")
    return root


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("shapes")
    return image_folder(root / "train", 120, seed=0), image_folder(root / "test", 30, seed=1)


@pytest.fixture(scope="module")
def cnn_run(cnn, shapes, tmp_path_factory) -> Path:
    """The CNN trained on the folder of shapes (8 epochs)."""
    out = tmp_path_factory.mktemp("cnn-run") / "run"
    result = run(cnn, "train", "--data", shapes[0], "--out", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    return out


def is_png(path: Path) -> bool:
    with Image.open(path) as image:
        image.verify()
        return image.format == "PNG"


# --------------------------------------------------------------------------- image folders


def test_cnn_trains_on_an_image_folder_far_above_chance(cnn_run, shapes):
    rows = [json.loads(line) for line in (cnn_run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_acc"] >= 0.8, rows  # chance is 1/3
    cached = list((cnn_run / "cache").glob("train-*.pt"))
    assert len(cached) == 1  # decoded once, into the run's cache
    saved = torch.load(cnn_run / "checkpoint.pt", weights_only=True)
    assert saved["config"]["class_names"] == list(SHAPES)


def test_evaluate_on_a_second_folder(cnn, cnn_run, shapes, tmp_path):
    report = tmp_path / "eval.json"
    result = run(
        cnn, "evaluate", "--checkpoint", cnn_run / "best.pt", "--data", shapes[1], "--json", report
    )
    assert result.returncode == 0, result.stderr
    assert "confusion matrix" in result.stdout and "per-class accuracy: circle" in result.stdout
    values = json.loads(report.read_text())
    print(f"cnn on a second folder: accuracy {values['acc']:.3f} (chance 0.333)")
    assert values["samples"] == 90 and values["acc"] >= 0.8, values
    assert values["classes"] == list(SHAPES)
    assert sum(map(sum, values["confusion"])) == 90
    assert set(values["per_class_acc"]) == set(SHAPES)


def test_predict_names_the_classes(cnn, cnn_run, shapes, tmp_path):
    out = tmp_path / "predictions.csv"
    result = run(
        cnn, "predict", "--checkpoint", cnn_run / "best.pt", "--data", shapes[1], "--out", out
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 90 and set(rows[0]) == {
        "input",
        "class",
        "name",
        *(f"p_{s}" for s in SHAPES),
    }
    right = sum(row["name"] == row["input"].split("/")[0] for row in rows)
    assert right >= 72, right  # 80%: the file's folder is its class
    saved = tmp_path / "predictions.pt"
    assert (
        run(
            cnn, "predict", "--checkpoint", cnn_run / "best.pt", "--data", shapes[1], "--out", saved
        ).returncode
        == 0
    )
    contents = torch.load(saved, weights_only=True)
    assert contents["classes"] == list(SHAPES) and contents["probabilities"].shape == (90, 3)


def test_a_changed_folder_is_decoded_again_and_a_bad_file_named(cnn, cnn_run, shapes, tmp_path):
    folder = image_folder(tmp_path / "small", 4, seed=2)
    cache = tmp_path / "run" / "cache"
    args = (
        "--data",
        folder,
        "--epochs",
        "1",
        "--out",
        tmp_path / "run",
        "--device",
        "cpu",
        "--no-plot",
    )
    assert run(cnn, "train", *args).returncode == 0
    first = list(cache.glob("small-*.pt"))
    draw_shape("circle", random.Random(3), SIZE).save(folder / "circle" / "new.png")
    assert run(cnn, "train", *args, "--overwrite").returncode == 0
    second = list(cache.glob("small-*.pt"))
    assert len(first) == len(second) == 1 and first != second  # rebuilt, the old one removed
    (folder / "square" / "broken.png").write_bytes(b"not a png")
    result = run(cnn, "train", *args, "--overwrite")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {folder / 'square' / 'broken.png'}: not an image Pillow can read "
        + result.stderr.split("Pillow can read ", 1)[1].strip()
    ]
    (folder / "square" / "broken.png").unlink()
    Image.new("I;16", (SIZE, SIZE)).save(folder / "square" / "deep.png")
    result = run(cnn, "train", *args, "--overwrite")
    assert result.returncode == 2 and "deep.png: image mode I;16" in result.stderr


def test_autoencoder_on_an_unlabeled_folder(autoencoder, tmp_path):
    train = image_folder(tmp_path / "train", 100, seed=0, labelled=False, filled=True)
    test = image_folder(tmp_path / "test", 10, seed=1, labelled=False, filled=True)
    out = tmp_path / "run"
    result = run(autoencoder, "train", "--data", train, "--out", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    report = tmp_path / "eval.json"
    result = run(
        autoencoder,
        "evaluate",
        "--checkpoint",
        out / "checkpoint.pt",
        "--data",
        test,
        "--json",
        report,
    )
    assert result.returncode == 0, result.stderr
    values = json.loads(report.read_text())
    # the mean image's squared error: what a model that learned nothing would reach
    images = [
        Image.open(p).resize((SIZE, SIZE), Image.BILINEAR).tobytes() for p in test.glob("*.png")
    ]
    x = (
        torch.stack([torch.frombuffer(bytearray(image), dtype=torch.uint8) for image in images])
        / 255
    )
    blank = ((x - x.mean(0)) ** 2).mean().item()
    print(f"autoencoder: reconstruction mse {values['mse']:.4f}, the mean image {blank:.4f}")
    assert values["samples"] == 30 and values["mse"] < blank / 2, (values, blank)
    predictions = tmp_path / "errors.csv"
    result = run(
        autoencoder,
        "predict",
        "--checkpoint",
        out / "checkpoint.pt",
        "--data",
        test,
        "--out",
        predictions,
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(predictions.open()))
    assert len(rows) == 30 and all(float(row["error"]) >= 0 for row in rows)
    # pictures of the run: curves and a grid of reconstructions, drawn at its end
    assert is_png(out / "curves.png") and is_png(out / "reconstructions.png")


# --------------------------------------------------------------------------- pictures, export


def test_plot_draws_the_curves(cnn, cnn_run, tmp_path):
    (cnn_run / "curves.png").unlink()
    result = run(cnn, "plot", cnn_run)
    assert result.returncode == 0, result.stderr
    assert is_png(cnn_run / "curves.png")
    with Image.open(cnn_run / "curves.png") as image:
        assert image.width > 400 and sum(map(bool, image.convert("L").histogram())) > 10  # not blank
    result = run(cnn, "plot", tmp_path / "nothing")
    assert result.returncode == 2 and "metrics.jsonl: no such file" in result.stderr


def test_export_gives_the_eager_outputs(cnn, cnn_run, shapes, tmp_path):
    program, onnx_file = tmp_path / "model.pt2", tmp_path / "model.onnx"
    args = ["--checkpoint", cnn_run / "best.pt", "--out", program]
    has_onnx = all(
        __import__("importlib").util.find_spec(name)
        for name in ("onnx", "onnxscript", "onnxruntime")
    )
    if has_onnx:
        args += ["--onnx", onnx_file]
    result = run(cnn, "export", *args)
    assert result.returncode == 0, result.stderr
    assert "largest difference from the model" in result.stdout
    # independently of export.py: the saved program against the eager model, on real images
    path, env = cnn
    check = f"""
import sys, torch
sys.path.insert(0, {str(path / 'src')!r})
from shapes_cnn.evaluate import load_model
from shapes_cnn.data import load_inputs
model, _ = load_model({str(cnn_run / 'best.pt')!r})
x, _ = load_inputs({str(shapes[1])!r})
with torch.no_grad():
    eager = model(x)
    exported = torch.export.load({str(program)!r}).module()(x)
print((eager - exported).abs().max().item())
if {has_onnx}:
    import onnxruntime
    session = onnxruntime.InferenceSession({str(onnx_file)!r}, providers=["CPUExecutionProvider"])
    onnx_out = torch.from_numpy(session.run(None, {{"x": x.numpy()}})[0])
    print((eager - onnx_out).abs().max().item())
"""
    result = subprocess.run(
        [sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    differences = [float(line) for line in result.stdout.split()]
    assert len(differences) == (2 if has_onnx else 1)
    print(f"export: largest difference from eager (pt2, onnx): {differences}")
    assert max(differences) < 1e-4, differences


# --------------------------------------------------------------------------- larger than memory


def resident(pid: int) -> tuple[int, int]:
    """The process's resident anonymous memory and resident file-backed memory, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("RssAnon", "RssFile", "RssShmem"):
            fields[name] = int(value.split()[0]) * 1024
    return fields.get("RssAnon", 0), fields.get("RssFile", 0) + fields.get("RssShmem", 0)


WIDE_SPEC = """\
project: wide-mlp
model:
  kind: mlp
  input: [16384]
  mlp:
    - {features: 8, activation: relu}
    - {features: 3, activation: none}
train:
  task: classification
  epochs: 1
  batch_size: 1024
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc")
def test_memory_mapped_data_is_not_loaded_whole(tmp_path_factory):
    """A .pt file of 1 GiB trains for an epoch while the process's own memory (its anonymous
    resident pages: what it allocated, torch's libraries included) stays far below the file's
    size. The file's pages that batches read are the kernel's page cache, dropped under pressure."""
    root = tmp_path_factory.mktemp("mmap")
    project = generate(root, WIDE_SPEC, "wide-mlp")
    n = 2**30 // (16384 * 4)
    path, path_val = root / "big.pt", root / "val.pt"
    torch.save({"x": torch.rand(n, 16384), "y": torch.randint(0, 3, (n,))}, path)
    torch.save({"x": torch.rand(64, 16384), "y": torch.randint(0, 3, (64,))}, path_val)
    size = path.stat().st_size
    project_dir, env = project
    command = [
        sys.executable,
        "-m",
        "wide_mlp.train",
        "--data",
        path,
        "--val-data",
        path_val,
        "--out",
        root / "run",
        "--device",
        "cpu",
        "--no-plot",
    ]
    process = subprocess.Popen(
        list(map(str, command)),
        cwd=project_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = 0
    while process.poll() is None:
        try:
            peak = max(peak, resident(process.pid)[0])
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.01)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert f"{n} training samples" in stdout
    print(f"peak anonymous RSS {peak / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB file")
    assert peak < size / 2, (peak, size)


def test_gan_samples_grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("gan")
    project = generate(root, (ROOT / "examples" / "gan.yaml").read_text(), "gan")
    out = root / "run"
    result = run(
        project, "train", "--epochs", "1", "--samples", "256", "--out", out, "--device", "cpu"
    )
    assert result.returncode == 0, result.stderr
    result = run(project, "plot", out)
    assert result.returncode == 0, result.stderr
    assert is_png(out / "samples.png")
