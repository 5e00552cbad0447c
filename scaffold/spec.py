"""Spec: read a YAML description of a network and check it key by key.

This module only parses and type-checks; shapes are the builders' job
(:mod:`scaffold.builders`). The result is a :class:`Spec` of frozen
dataclasses in which every value that can reach generated code has been
validated: names against a strict pattern, numbers against ranges, words
against fixed choices.
"""

from __future__ import annotations

import keyword
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from scaffold.errors import SpecError, did_you_mean
from scaffold.layers import DEFAULT_SLOPE

MAX_SPEC_BYTES = 256 * 1024
MAX_SIZE = 1_000_000  # upper bound for any channel, feature, or input size
MAX_KERNEL = 4096
MAX_BLOCKS = 2048
MAX_EPOCHS = 100_000

KINDS = ("mlp", "cnn", "autoencoder", "vae", "gan", "lm", "seq")
SEQUENCE_KINDS = ("lm", "seq")  # inputs are token ids
TASKS = (
    "classification",
    "regression",
    "reconstruction",
    "adversarial",
    "multitask",
    "language_modeling",
)
HEAD_TASKS = ("classification", "regression")
HEAD_KEYS = ("features", "task", "weight")
MAX_HEADS = 32
ACTIVATIONS = (
    "none",
    "relu",
    "leaky_relu",
    "gelu",
    "silu",
    "elu",
    "tanh",
    "sigmoid",
    "softmax",
    "log_softmax",
)
LINEAR_NORMS = ("none", "batch", "layer")
CONV_NORMS = ("none", "batch")
POOL_KINDS = ("max", "avg")
OPTIMIZERS = ("adamw", "adam", "sgd")
WEIGHT_DECAY = {"adamw": 0.01, "adam": 0.0, "sgd": 0.0}  # default per optimizer
SCHEDULERS = ("cosine", "none")
DECODERS = ("mirror",)

# Keys a block may set are declared once, with their checks and defaults, in BLOCK_KEYS
# (below the checkers); CONV_KEYS, LINEAR_KEYS and DEFAULT_KEYS are derived from it.
MODEL_KEYS = (
    "kind",
    "input",
    "defaults",
    "conv",
    "mlp",
    "latent",
    "decoder",
    "output_activation",
    "heads",
    "generator",
    "vocab",
    "seq",
    "tie_embeddings",
    "global_pool",
)
GLOBAL_POOLS = ("avg", "max")  # adaptive pooling to one value per channel, after the conv stack
SEQUENCE_MODEL_KEYS = ("kind", "input", "vocab", "seq", "mlp", "defaults", "tie_embeddings")
GENERATOR_KEYS = ("norm", "activation", "negative_slope")
TRAIN_KEYS = (
    "task",
    "epochs",
    "batch_size",
    "optimizer",
    "scheduler",
    "beta",
    "seed",
    "param_groups",
    "freeze",
)
PART_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")
OPTIMIZER_KEYS = ("name", "lr", "weight_decay", "momentum")
POOL_KEYS = ("kind", "kernel", "stride", "padding")
TOP_KEYS = ("project", "model", "train")

PROJECT_RE = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")
MAX_PROJECT_LEN = 60
RESERVED_PACKAGES = {"torch", "scaffold", "copier", "jinja2", "test", "tests", "src"}


# --------------------------------------------------------------------------- types


@dataclass(frozen=True)
class Pool:
    kind: str
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]


@dataclass(frozen=True)
class ConvSpec:
    where: str
    channels: int
    in_channels: int | None
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    bias: bool | None  # None: none before a BatchNorm, else one
    norm: str
    activation: str
    negative_slope: float
    pool: Pool | None
    dropout: float
    residual: bool = False


@dataclass(frozen=True)
class LinearSpec:
    where: str
    features: int
    in_features: int | None
    bias: bool | None  # None: none before a BatchNorm, else one
    norm: str
    activation: str
    negative_slope: float
    dropout: float
    residual: bool = False
    gate: bool = False
    scale: bool = False


@dataclass(frozen=True)
class HeadSpec:
    """One output head of a multi-task model."""

    where: str
    name: str
    features: int
    task: str
    weight: float


@dataclass(frozen=True)
class GeneratorSpec:
    """A GAN generator's hidden layers (DCGAN: BatchNorm and ReLU on every one)."""

    norm: str = "batch"
    activation: str = "relu"
    negative_slope: float = 0.01


@dataclass(frozen=True)
class SeqSpec:
    """One block over a sequence (kinds lm and seq); each type reads the keys it needs."""

    where: str
    type: str  # embedding | transformer | gru | lstm | norm | pool
    features: int | None = None  # embedding width, or a recurrent layer's hidden size
    layers: int = 1
    heads: int | None = None
    mlp_ratio: int = 4
    activation: str = "gelu"
    dropout: float = 0.0
    bias: bool = True
    causal: bool = False
    bidirectional: bool = False
    position: str = "learned"  # embedding: learned | none
    mode: str = "mean"  # pool: mean | last | cls


@dataclass(frozen=True)
class ModelSpec:
    kind: str
    input: tuple[int, ...]
    conv: tuple[ConvSpec, ...]
    mlp: tuple[LinearSpec, ...]
    latent: int | None
    decoder: str | None
    output_activation: str
    heads: tuple[HeadSpec, ...] = ()
    generator: GeneratorSpec | None = None
    vocab: int | None = None  # sequence kinds: token ids are 0 .. vocab - 1
    seq: tuple[SeqSpec, ...] = ()
    global_pool: str | None = None  # cnn: adaptive pooling after the conv stack (avg | max)
    tie_embeddings: bool = False


@dataclass(frozen=True)
class TrainSpec:
    task: str
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = WEIGHT_DECAY["adamw"]
    momentum: float = 0.9
    scheduler: str = "cosine"
    beta: float = 1.0
    seed: int = 0
    param_groups: tuple[tuple[str, float], ...] = ()  # (part name, learning rate)
    freeze: tuple[str, ...] = ()  # part names whose parameters do not train


@dataclass(frozen=True)
class Spec:
    project: str | None
    model: ModelSpec
    train: TrainSpec
    raw: dict[str, Any] = field(compare=False, repr=False, default_factory=dict)


# --------------------------------------------------------------------------- loading


class _NoAliasLoader(yaml.SafeLoader):
    """Safe loader that refuses anchors/aliases (no billion-laughs expansion)."""

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise SpecError(
                "spec",
                f"YAML aliases (`*{event.anchor}`) are not allowed "
                f"(line {event.start_mark.line + 1})",
                "write the values out; a spec is short enough without anchors",
            )
        return super().compose_node(parent, index)


def load_yaml_text(text: str, source: str = "spec") -> dict[str, Any]:
    """Parse YAML text into a mapping, refusing anything that is not a plain mapping.

    The text is at most MAX_SPEC_BYTES long: load_spec_file reads no more."""
    try:
        documents = list(yaml.load_all(text, Loader=_NoAliasLoader))
    except SpecError:
        raise
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(
            source,
            f"not valid YAML{at}: {problem}",
            "check indentation and that lists use `- ` or `[a, b]`",
        ) from None
    except RecursionError:
        raise SpecError(source, "the YAML is nested too deeply", "flatten the spec") from None
    except (ValueError, OverflowError) as exc:  # e.g. a 5000-digit integer, a date with month 13
        raise SpecError(
            source,
            f"a value cannot be read: {_printable(str(exc), 80)}",
            "check numbers and dates in the spec",
        ) from None
    documents = [d for d in documents if d is not None]
    if len(documents) != 1:
        raise SpecError(
            source,
            f"expected one YAML document, found {len(documents)}" if documents else "is empty",
            (
                "keep a single spec per file (no `---` separators)"
                if documents
                else "start from a file in examples/"
            ),
        )
    data = documents[0]
    if not isinstance(data, dict):
        raise SpecError(
            source,
            f"the spec must be a mapping with keys `model:` and `train:`, got {_type_name(data)}",
            "start from a file in examples/",
        )
    return data


def _read_bounded(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of a file, a pipe (`/dev/stdin`) or a device, never hanging on a
    named pipe that nobody writes to (it reads as empty)."""
    if not stat.S_ISFIFO(path.stat().st_mode):
        with path.open("rb") as handle:
            return handle.read(limit)  # bounded: /dev/zero, or a file that grew since stat()
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a blocking open would wait for a writer
    try:
        try:
            first = os.read(fd, limit)  # b"": no writer, nothing to read
        except BlockingIOError:
            first = None  # a writer, no data yet
        if first == b"":
            return first
        os.set_blocking(fd, True)
        chunks, size = [first or b""], len(first or b"")
        while size < limit:
            chunk = os.read(fd, limit - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def load_spec_file(path: str | Path) -> dict[str, Any]:
    """Read a spec file into a raw mapping (not yet validated)."""
    path = Path(path)
    try:
        data = _read_bounded(path, MAX_SPEC_BYTES + 1)
        if len(data) > MAX_SPEC_BYTES:
            raise SpecError(
                str(path),
                f"the file is larger than {MAX_SPEC_BYTES // 1024} KiB",
                "a spec is a few dozen lines; check that this is the right file",
            )
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise SpecError(str(path), "no such file", "check the path to the spec") from None
    except IsADirectoryError:
        raise SpecError(str(path), "is a directory", "pass the path of a .yaml file") from None
    except UnicodeDecodeError:
        raise SpecError(str(path), "is not UTF-8 text", "save the spec as UTF-8") from None
    except OSError as exc:
        raise SpecError(str(path), f"cannot be read ({exc.strerror})", "check the path") from None
    return load_yaml_text(text, source=str(path))


# --------------------------------------------------------------------------- checks


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({_printable(repr(value))})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _printable(value: Any, limit: int = 40) -> str:
    """A spec value safe to echo in one line of a message: no control characters, not too long."""
    text = value if isinstance(value, str) and value.isprintable() else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_keys(mapping: dict[str, Any], allowed: tuple[str, ...], where: str, what: str) -> None:
    for key in mapping:
        if not isinstance(key, str) or key not in allowed:
            shown = _printable(key)
            raise SpecError(
                where,
                f"unknown key `{shown}`{did_you_mean(str(key), allowed)}",
                f"{what} takes: {', '.join(allowed)}",
            )


def as_mapping(value: Any, where: str, example: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SpecError(
            where, f"expected a mapping, got {_type_name(value)}", f"write it as {example}"
        )
    return value


def as_int(value: Any, where: str, lo: int = 1, hi: int = MAX_SIZE) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise SpecError(
                where,
                f"expected a whole number, got {_type_name(value)}",
                f"use an integer from {lo} to {hi}",
            )
    if not lo <= value <= hi:
        raise SpecError(where, f"{value} is out of range", f"use an integer from {lo} to {hi}")
    return value


def as_float(value: Any, where: str, lo: float, hi: float, hi_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(
            where, f"expected a number, got {_type_name(value)}", f"use a number from {lo} to {hi}"
        )
    value = float(value)
    bad = not (lo <= value <= hi) or (hi_open and value >= hi) or value != value
    if bad:
        upper = f"below {hi}" if hi_open else f"at most {hi}"
        raise SpecError(where, f"{value:g} is out of range", f"use a number from {lo} and {upper}")
    return value


def as_bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(
            where, f"expected true or false, got {_type_name(value)}", "write `true` or `false`"
        )
    return value


def as_choice(value: Any, where: str, choices: tuple[str, ...]) -> str:
    if value is None or value is False:
        value = "none"
    if not isinstance(value, str) or value not in choices:
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        raise SpecError(
            where,
            f"{_type_name(value)} is not one of the choices{hint}",
            f"use one of: {', '.join(choices)}",
        )
    return value


def as_tuple(value: Any, where: str, ndim: int, lo: int, hi: int = MAX_KERNEL) -> tuple[int, ...]:
    """An int, or one int per spatial dimension."""
    if isinstance(value, list):
        if len(value) != ndim:
            raise SpecError(
                where,
                f"has {len(value)} values but the input has {ndim} spatial dimension(s)",
                f"give one integer, or a list of {ndim}",
            )
        return tuple(as_int(v, f"{where}[{i}]", lo, hi) for i, v in enumerate(value))
    return (as_int(value, where, lo, hi),) * ndim


def check_project_name(name: Any, where: str = "project") -> str:
    """A project name becomes a directory, a distribution and a package name."""
    if not isinstance(name, str):
        raise SpecError(
            where, f"expected a name, got {_type_name(name)}", "use a name like `my-vae`"
        )
    shown = name if len(name) <= 40 else name[:37] + "..."
    if len(name) > MAX_PROJECT_LEN or not PROJECT_RE.fullmatch(name):
        raise SpecError(
            where,
            f"{shown!r} is not a valid project name",
            "use lowercase ASCII letters and digits separated by single `-` or `_`, "
            f"starting with a letter, at most {MAX_PROJECT_LEN} characters (e.g. `my-vae`)",
        )
    package = package_name(name)
    if (
        keyword.iskeyword(package)
        or package in RESERVED_PACKAGES
        or package in sys.stdlib_module_names
    ):
        raise SpecError(
            where,
            f"the package name `{package}` would shadow a Python or library module",
            f"choose another name, e.g. `{name}-model`",
        )
    return name


def package_name(project: str) -> str:
    return project.replace("-", "_")


# --------------------------------------------------------------------------- blocks


def _pool(value: Any, where: str, ndim: int) -> Pool | None:
    if value is None or value == "none" or value is False or value == 0:
        return None
    if isinstance(value, (int, list)) and not isinstance(value, bool):
        kernel = as_tuple(value, where, ndim, 1)
        return Pool("max", kernel, kernel, (0,) * ndim)
    pool = as_mapping(value, where, "`pool: 2` or `pool: {kind: avg, kernel: 3, stride: 1}`")
    check_keys(pool, POOL_KEYS, where, "pool")
    if "kernel" not in pool:
        raise SpecError(where, "missing key `kernel`", "e.g. `pool: {kind: max, kernel: 2}`")
    kernel = as_tuple(pool["kernel"], f"{where}.kernel", ndim, 1)
    stride = as_tuple(pool["stride"], f"{where}.stride", ndim, 1) if "stride" in pool else kernel
    padding = as_tuple(pool.get("padding", 0), f"{where}.padding", ndim, 0)
    kind = as_choice(pool.get("kind", "max"), f"{where}.kind", POOL_KINDS)
    for k, p in zip(kernel, padding):
        if p > k // 2:
            raise SpecError(
                f"{where}.padding",
                f"pooling padding {p} is more than half the kernel {k}",
                f"torch requires padding <= kernel // 2; use padding <= {k // 2}",
            )
    return Pool(kind, kernel, stride, padding)


# --------------------------------------------------------------------------- block keys


REQUIRED = object()  # a key without a default


@dataclass(frozen=True)
class Key:
    """One key a block can set: the blocks it applies to, its default, its check."""

    name: str
    blocks: tuple[str, ...]  # "conv", "mlp"
    default: Any
    check: Callable[[Any, str, int, str], Any]  # (value, where, ndim, block) -> checked value
    in_defaults: bool = True  # may `defaults:` set it?


def _size(value: Any, where: str, ndim: int, block: str) -> int:
    return as_int(value, where)


def _geometry(lo: int) -> Callable[[Any, str, int, str], tuple[int, ...]]:
    def check(value: Any, where: str, ndim: int, block: str) -> tuple[int, ...]:
        if isinstance(value, list) and ndim == 0:  # a default that only conv blocks would use
            return tuple(as_int(v, f"{where}[{i}]", lo, MAX_KERNEL) for i, v in enumerate(value))
        return as_tuple(value, where, max(ndim, 1), lo)

    return check


def _norm(value: Any, where: str, ndim: int, block: str) -> str:
    choices = {"conv": CONV_NORMS, "mlp": LINEAR_NORMS}.get(
        block, tuple(dict.fromkeys(LINEAR_NORMS + CONV_NORMS))
    )
    return as_choice(value, where, choices)


def _flag(value: Any, where: str, ndim: int, block: str) -> bool:
    return as_bool(value, where)


BLOCK_KEYS = (
    Key("channels", ("conv",), REQUIRED, _size, in_defaults=False),
    Key("in_channels", ("conv",), None, _size, in_defaults=False),
    Key("features", ("mlp",), REQUIRED, _size, in_defaults=False),
    Key("in_features", ("mlp",), None, _size, in_defaults=False),
    Key("kernel", ("conv",), 3, _geometry(1)),
    Key("stride", ("conv",), 1, _geometry(1)),
    Key("padding", ("conv",), 0, _geometry(0)),
    Key("dilation", ("conv",), 1, _geometry(1)),
    Key("bias", ("conv", "mlp"), None, _flag),
    Key("norm", ("conv", "mlp"), "none", _norm),
    Key("activation", ("conv", "mlp"), "none", lambda v, w, n, b: as_choice(v, w, ACTIVATIONS)),
    Key(
        "negative_slope",
        ("conv", "mlp"),
        DEFAULT_SLOPE,
        lambda v, w, n, b: as_float(v, w, 0.0, 1.0),
    ),
    Key("pool", ("conv",), None, lambda v, w, n, b: _pool(v, w, max(n, 1))),
    Key("dropout", ("conv", "mlp"), 0.0, lambda v, w, n, b: as_float(v, w, 0.0, 1.0, hi_open=True)),
    Key("residual", ("conv", "mlp"), False, _flag, in_defaults=False),
    Key("gate", ("mlp",), False, _flag, in_defaults=False),
    Key("scale", ("mlp",), False, _flag, in_defaults=False),
)
KEYS = {key.name: key for key in BLOCK_KEYS}
CONV_KEYS = tuple(k.name for k in BLOCK_KEYS if "conv" in k.blocks)
LINEAR_KEYS = tuple(k.name for k in BLOCK_KEYS if "mlp" in k.blocks)
DEFAULT_KEYS = tuple(k.name for k in BLOCK_KEYS if k.in_defaults)
# Built-in defaults of a GAN's discriminator (DCGAN: BatchNorm, LeakyReLU with slope 0.2;
# no BatchNorm on its input layer). `defaults:` and the blocks override them.
GAN_DEFAULTS = {"norm": "batch", "activation": "leaky_relu", "negative_slope": 0.2}


def _checked_block(
    block: Any, defaults: dict[str, Any], kind: str, where: str, ndim: int, what: str, example: str
) -> dict[str, Any]:
    """A block's keys checked one by one: its own value, else the default's, else the key's."""
    block = as_mapping(block, where, example)
    allowed = CONV_KEYS if kind == "conv" else LINEAR_KEYS
    check_keys(block, allowed, where, ("an " if what.startswith("mlp") else "a ") + what)
    merged = {k: v for k, v in defaults.items() if k in allowed}
    merged.update(block)
    values = {}
    for name in allowed:
        key = KEYS[name]
        if name not in merged:
            if key.default is REQUIRED:
                raise SpecError(
                    where,
                    f"missing key `{name}`",
                    f"every {what} needs `{name}:`" + _REQUIRED_WHY[name],
                )
            default = key.default
            values[name] = (
                default if default is None else key.check(default, f"{where}.{name}", ndim, kind)
            )
        else:
            values[name] = key.check(merged[name], f"{where}.{name}", ndim, kind)
    return values


_REQUIRED_WHY = {"channels": " (its output channels)", "features": " (its output size)"}


def check_defaults(defaults: dict[str, Any], ndim: int) -> None:
    """Check every `defaults:` value where it was written, whether or not a block uses it."""
    for name, value in defaults.items():
        KEYS[name].check(value, f"model.defaults.{name}", ndim, "defaults")


def _blame_defaults(error: SpecError, where: str, block: Any) -> SpecError:
    """An error in a value the block inherited from `defaults:` belongs to `model.defaults`."""
    rest = error.where[len(where) + 1 :] if error.where.startswith(where + ".") else ""
    key = rest.split(".")[0].split("[")[0]
    if not key or (isinstance(block, dict) and key in block):
        return error
    return SpecError(
        f"model.defaults.{key}", f"{error.problem} (inherited by {where})", error.fix, error.details
    )


def parse_conv(block: Any, where: str, defaults: dict[str, Any], ndim: int) -> ConvSpec:
    try:
        return _parse_conv(block, where, defaults, ndim)
    except SpecError as error:
        raise _blame_defaults(error, where, block) from None


def _parse_conv(block: Any, where: str, defaults: dict[str, Any], ndim: int) -> ConvSpec:
    own = block.get("residual") if isinstance(block, dict) else None
    if own is True:
        # A residual block keeps its size up to the stride: its padding is "same",
        # whatever `defaults:` say; a padding written on the block itself must agree.
        defaults = {k: v for k, v in defaults.items() if k != "padding"}
    b = _checked_block(block, defaults, "conv", where, ndim, "conv block", "`{channels: 16}`")
    if b["residual"]:
        if any(k % 2 == 0 for k in b["kernel"]):
            raise SpecError(
                f"{where}.kernel",
                f"a residual block needs an odd kernel, got {list(b['kernel'])}",
                "use kernel 1, 3, 5 or 7",
            )
        same = tuple(d * (k - 1) // 2 for k, d in zip(b["kernel"], b["dilation"]))
        if "padding" in block and b["padding"] != same:
            raise SpecError(
                f"{where}.padding",
                f"a residual block must keep the size of its input (up to the stride), which needs padding {_fmt(same)}",
                "remove `padding:` from this block (it is set for you) or use that value",
            )
        b["padding"] = same
    return ConvSpec(where=where, **b)


def parse_linear(block: Any, where: str, defaults: dict[str, Any]) -> LinearSpec:
    try:
        return _parse_linear(block, where, defaults)
    except SpecError as error:
        raise _blame_defaults(error, where, block) from None


def _parse_linear(block: Any, where: str, defaults: dict[str, Any]) -> LinearSpec:
    b = _checked_block(block, defaults, "mlp", where, 0, "mlp block", "`{features: 64}`")
    if b["residual"] and b["gate"]:
        raise SpecError(
            where, "a block is either `residual` or `gate`d, not both", "remove one of the two keys"
        )
    return LinearSpec(where=where, **b)


def _fmt(values: tuple[int, ...]) -> str:
    return str(values[0]) if len(set(values)) == 1 else str(list(values))


def _block_list(value: Any, where: str, example: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError(
            where,
            f"expected a list of blocks, got {_type_name(value)}",
            f"write it as a list, e.g. `[{example}]`",
        )
    if len(value) > MAX_BLOCKS:
        raise SpecError(
            where, f"has {len(value)} blocks, more than {MAX_BLOCKS}", "use fewer blocks"
        )
    return value


# --------------------------------------------------------------------------- spec


def parse_model(raw: Any) -> ModelSpec:
    m = as_mapping(raw, "model", "`model: {kind: mlp, input: [8], mlp: [...]}`")
    check_keys(m, MODEL_KEYS, "model", "`model:`")
    for key in ("kind", "input"):
        if key not in m:
            raise SpecError(
                "model", f"missing key `{key}`", "e.g. `kind: cnn` and `input: [1, 28, 28]`"
            )
    kind = as_choice(m["kind"], "model.kind", KINDS)
    if kind in SEQUENCE_KINDS:
        return parse_sequence_model(m, kind)
    for key in ("vocab", "seq", "tie_embeddings"):
        if key in m:
            raise SpecError(
                f"model.{key}",
                f"applies to sequence models (kinds lm and seq), not kind `{kind}`",
                f"remove `{key}:`, or set `kind: lm` or `kind: seq`",
            )

    raw_input = m["input"]
    if not isinstance(raw_input, list) or not 1 <= len(raw_input) <= 4:
        raise SpecError(
            "model.input",
            f"expected a list of 1 to 4 sizes, got {_type_name(raw_input)}"
            + (f" of length {len(raw_input)}" if isinstance(raw_input, list) else ""),
            "use [features], [channels, length], [channels, height, width] or [channels, depth, height, width]",
        )
    shape = tuple(as_int(v, f"model.input[{i}]") for i, v in enumerate(raw_input))
    ndim = len(shape) - 1

    defaults = as_mapping(
        m.get("defaults") or {}, "model.defaults", "`defaults: {activation: relu}`"
    )
    check_keys(defaults, DEFAULT_KEYS, "model.defaults", "`defaults:`")
    check_defaults(defaults, ndim)

    conv_raw = _block_list(m.get("conv"), "model.conv", "{channels: 16}")
    mlp_raw = _block_list(m.get("mlp"), "model.mlp", "{features: 64}")

    if conv_raw and ndim == 0:
        raise SpecError(
            "model.conv",
            f"conv blocks need an input with channels and spatial size, but input is {list(shape)}",
            "give `input: [channels, length]` (1-D), `[channels, height, width]` (2-D) or "
            "`[channels, depth, height, width]` (3-D), or drop `conv:`",
        )
    if kind == "mlp" and conv_raw:
        raise SpecError(
            "model.conv",
            "kind `mlp` has no conv stack",
            "use `kind: cnn` for conv blocks followed by an mlp head",
        )
    heads = _heads(m.get("heads"), kind) if "heads" in m else ()
    if kind in ("mlp", "cnn") and not mlp_raw and not heads:
        raise SpecError(
            "model.mlp",
            f"kind `{kind}` needs an `mlp:` list; its last block is the output layer",
            "add e.g. `mlp: [{features: 64}, {features: 10}]`",
        )
    if kind == "cnn" and not conv_raw:
        raise SpecError(
            "model.conv",
            "kind `cnn` needs a `conv:` list",
            "add e.g. `conv: [{channels: 16, pool: 2}]`, or use `kind: mlp`",
        )
    if kind in ("autoencoder", "vae", "gan") and not (conv_raw or mlp_raw):
        what = "a discriminator" if kind == "gan" else "an encoder"
        raise SpecError(
            "model",
            f"kind `{kind}` needs {what}: a `conv:` list, an `mlp:` list, or both",
            "add e.g. `conv: [{channels: 32, stride: 2}]`",
        )

    if kind == "gan":
        conv_raw = _dcgan_input_layer(conv_raw, defaults)
        mlp_raw = mlp_raw if conv_raw else _dcgan_input_layer(mlp_raw, defaults)
        defaults = {**GAN_DEFAULTS, **defaults}
    conv = tuple(parse_conv(b, f"model.conv[{i}]", defaults, ndim) for i, b in enumerate(conv_raw))
    head = kind in ("mlp", "cnn") and not heads
    # `defaults:` describe hidden layers: the output layer of a head (the last
    # mlp block of kind mlp or cnn) takes only `bias` from them, never a norm,
    # activation or dropout it did not ask for itself.
    output_defaults = {k: v for k, v in defaults.items() if k == "bias"}
    mlp = tuple(
        parse_linear(
            b, f"model.mlp[{i}]", output_defaults if head and i == len(mlp_raw) - 1 else defaults
        )
        for i, b in enumerate(mlp_raw)
    )

    latent = None
    if "latent" in m and m["latent"] is not None:
        latent = as_int(m["latent"], "model.latent")
    if kind in ("vae", "gan") and latent is None:
        raise SpecError(
            "model", f"kind `{kind}` needs `latent:` (the size of z)", "add e.g. `latent: 16`"
        )
    if kind in ("mlp", "cnn"):
        for key in ("latent", "decoder", "output_activation"):
            if key in m:
                raise SpecError(
                    f"model.{key}",
                    f"applies to autoencoders, VAEs and GANs, not kind `{kind}`",
                    f"remove `{key}:`, or set `kind: autoencoder`",
                )
    decoder = None
    if kind in ("autoencoder", "vae", "gan"):
        decoder = as_choice(m.get("decoder", "mirror"), "model.decoder", DECODERS)
    default_output = "tanh" if kind == "gan" else "none"  # GAN data are scaled to [-1, 1]
    output_activation = as_choice(
        m.get("output_activation", default_output), "model.output_activation", ACTIVATIONS
    )
    generator = None
    if "generator" in m and kind != "gan":
        raise SpecError(
            "model.generator",
            f"applies to GANs, not kind `{kind}`",
            "remove `generator:`, or set `kind: gan`",
        )
    if kind == "gan":
        generator = _generator(m.get("generator") or {}, "conv" if conv else "mlp")
    return ModelSpec(
        kind,
        shape,
        conv,
        mlp,
        latent,
        decoder,
        output_activation,
        heads,
        generator,
        global_pool=_global_pool(m, kind),
    )


def _global_pool(m: dict, kind: str) -> str | None:
    """`global_pool: avg | max`: torchvision's AdaptiveAvgPool2d((1, 1)) after the conv stack,
    so the network takes any input size."""
    if "global_pool" not in m:
        return None
    if kind != "cnn":
        raise SpecError(
            "model.global_pool",
            f"pools the feature map of a conv stack, so it applies to kind `cnn`, not `{kind}`",
            "remove `global_pool:`, or set `kind: cnn`",
        )
    return as_choice(m["global_pool"], "model.global_pool", GLOBAL_POOLS)


# --------------------------------------------------------------------------- sequences

SEQ_TYPES = ("embedding", "transformer", "gru", "lstm", "norm", "pool")
POSITIONS = ("learned", "none")
POOL_MODES = ("mean", "last", "cls")
MAX_VOCAB = 1_000_000
MAX_CONTEXT = 65_536
MAX_LAYERS = 256
SEQ_ACTIVATIONS = ("gelu", "relu", "silu")


def _seq_int(lo: int, hi: int) -> Callable[[Any, str, int, str], int]:
    return lambda v, w, n, b: as_int(v, w, lo, hi)


# Keys of each sequence block type: (key, default, check). REQUIRED marks keys without one.
SEQ_KEYS: dict[str, tuple[tuple[str, Any, Callable[[Any, str, int, str], Any]], ...]] = {
    "embedding": (
        ("features", REQUIRED, _size),
        ("position", "learned", lambda v, w, n, b: as_choice(v, w, POSITIONS)),
        ("dropout", 0.0, KEYS["dropout"].check),
    ),
    "transformer": (
        ("layers", 1, _seq_int(1, MAX_LAYERS)),
        ("heads", REQUIRED, _seq_int(1, 4096)),
        ("mlp_ratio", 4, _seq_int(1, 64)),
        ("activation", "gelu", lambda v, w, n, b: as_choice(v, w, SEQ_ACTIVATIONS)),
        ("dropout", 0.0, KEYS["dropout"].check),
        ("bias", True, _flag),
        ("causal", None, _flag),
    ),
    "gru": (
        ("features", REQUIRED, _size),
        ("layers", 1, _seq_int(1, MAX_LAYERS)),
        ("bidirectional", False, _flag),
        ("dropout", 0.0, KEYS["dropout"].check),
    ),
    "norm": (("bias", True, _flag),),
    "pool": (("mode", "mean", lambda v, w, n, b: as_choice(v, w, POOL_MODES)),),
}
SEQ_KEYS["lstm"] = SEQ_KEYS["gru"]


def parse_seq_block(block: Any, where: str, kind: str) -> SeqSpec:
    b = as_mapping(block, where, "`{type: transformer, layers: 2, heads: 4}`")
    if "type" not in b:
        raise SpecError(
            where, "missing key `type`", f"give the block's type: one of {', '.join(SEQ_TYPES)}"
        )
    block_type = as_choice(b["type"], f"{where}.type", SEQ_TYPES)
    keys = SEQ_KEYS[block_type]
    check_keys(b, ("type", *(name for name, _, _ in keys)), where, f"a {block_type} block")
    values: dict[str, Any] = {}
    for name, default, check in keys:
        if name in b:
            values[name] = check(b[name], f"{where}.{name}", 0, "seq")
        elif default is REQUIRED:
            raise SpecError(where, f"missing key `{name}`", f"a {block_type} block needs `{name}:`")
        elif default is not None:
            values[name] = default
    if block_type == "transformer":
        values.setdefault("causal", kind == "lm")
        if kind == "lm" and not values["causal"]:
            raise SpecError(
                f"{where}.causal",
                "a language model predicts the next token: its attention must not see later ones",
                "remove `causal: false`",
            )
    if block_type in ("gru", "lstm"):
        if kind == "lm" and values["bidirectional"]:
            raise SpecError(
                f"{where}.bidirectional",
                "a language model predicts the next token: a backward direction would see it",
                "remove `bidirectional: true`",
            )
        if values["dropout"] and values["layers"] == 1:
            raise SpecError(
                f"{where}.dropout",
                "a recurrent layer's dropout applies between its stacked layers, and this has one",
                "set `layers:` to 2 or more, or remove `dropout:`",
            )
    return SeqSpec(where=where, type=block_type, **values)


def parse_sequence_model(m: dict[str, Any], kind: str) -> ModelSpec:
    """Kinds lm and seq: `input: [context]` token ids below `vocab`, a `seq:` list of blocks,
    then (seq) pooling and an `mlp:` head, or (lm) a Linear to the vocabulary."""
    check_keys(m, SEQUENCE_MODEL_KEYS, "model", f"`model:` of kind `{kind}`")
    for key in ("vocab", "seq"):
        if key not in m:
            raise SpecError(
                "model",
                f"missing key `{key}`",
                "e.g. `vocab: 65` (token ids 0 to 64) and `seq: [{type: embedding, features: 64}, ...]`",
            )
    raw_input = m["input"]
    if not isinstance(raw_input, list) or len(raw_input) != 1:
        raise SpecError(
            "model.input",
            f"a sequence model's input is [context], the number of tokens per sample; got {_type_name(raw_input)}"
            + (f" of length {len(raw_input)}" if isinstance(raw_input, list) else ""),
            "write e.g. `input: [256]`",
        )
    context = as_int(raw_input[0], "model.input[0]", 1, MAX_CONTEXT)
    vocab = as_int(m["vocab"], "model.vocab", 2, MAX_VOCAB)
    blocks = _block_list(m.get("seq"), "model.seq", "{type: embedding, features: 64}")
    if not blocks:
        raise SpecError("model.seq", "is empty", "start with `{type: embedding, features: 64}`")
    seq = tuple(parse_seq_block(b, f"model.seq[{i}]", kind) for i, b in enumerate(blocks))
    defaults = as_mapping(
        m.get("defaults") or {}, "model.defaults", "`defaults: {activation: relu}`"
    )
    check_keys(defaults, DEFAULT_KEYS, "model.defaults", "`defaults:`")
    check_defaults(defaults, 0)
    mlp_raw = _block_list(m.get("mlp"), "model.mlp", "{features: 2}")
    if kind == "lm" and mlp_raw:
        raise SpecError(
            "model.mlp",
            "a language model's output layer maps each position to the vocabulary; it has no `mlp:` head",
            "remove `mlp:` (use `kind: seq` for one output per sequence)",
        )
    if kind == "seq" and not mlp_raw:
        raise SpecError(
            "model.mlp",
            "kind `seq` needs an `mlp:` list after the pooling; its last block is the output layer",
            "add e.g. `mlp: [{features: 2}]`",
        )
    output_defaults = {k: v for k, v in defaults.items() if k == "bias"}
    mlp = tuple(
        parse_linear(b, f"model.mlp[{i}]", output_defaults if i == len(mlp_raw) - 1 else defaults)
        for i, b in enumerate(mlp_raw)
    )
    tie = False
    if "tie_embeddings" in m:
        if kind != "lm":
            raise SpecError(
                "model.tie_embeddings",
                "ties a language model's output layer to its token embedding; kind `seq` has no such layer",
                "remove `tie_embeddings:`",
            )
        tie = as_bool(m["tie_embeddings"], "model.tie_embeddings")
    return ModelSpec(
        kind, (context,), (), mlp, None, None, "none", vocab=vocab, seq=seq, tie_embeddings=tie
    )


def _dcgan_input_layer(blocks: list[Any], defaults: dict[str, Any]) -> list[Any]:
    """DCGAN puts no BatchNorm on the discriminator's input layer: unless the first block
    or `defaults:` set a norm, it gets none."""
    if (
        blocks
        and isinstance(blocks[0], dict)
        and "norm" not in blocks[0]
        and "norm" not in defaults
    ):
        return [{**blocks[0], "norm": "none"}, *blocks[1:]]
    return blocks


def _generator(raw: Any, block: str) -> GeneratorSpec:
    """`generator: {norm, activation, negative_slope}`: the generator's hidden layers."""
    g = as_mapping(raw, "model.generator", "`generator: {norm: batch, activation: relu}`")
    check_keys(g, GENERATOR_KEYS, "model.generator", "`generator:`")
    base = GeneratorSpec()
    values = {
        name: (
            KEYS[name].check(g[name], f"model.generator.{name}", 0, block)
            if name in g
            else getattr(base, name)
        )
        for name in GENERATOR_KEYS
    }
    return GeneratorSpec(**values)


def _heads(raw: Any, kind: str) -> tuple[HeadSpec, ...]:
    """`heads: {name: {features, task, weight}}`: named outputs on a shared backbone."""
    if kind not in ("mlp", "cnn"):
        raise SpecError(
            "model.heads",
            f"multi-task heads apply to kinds mlp and cnn, not `{kind}`",
            "remove `heads:`",
        )
    heads = as_mapping(raw, "model.heads", "`heads: {digit: {features: 10, task: classification}}`")
    if not 1 <= len(heads) <= MAX_HEADS:
        raise SpecError(
            "model.heads",
            f"needs 1 to {MAX_HEADS} heads, got {len(heads)}",
            "name each head, e.g. `digit: {features: 10}`",
        )
    out = []
    for name, head in heads.items():
        valid = (
            isinstance(name, str) and PART_NAME_RE.fullmatch(name) and not keyword.iskeyword(name)
        )
        where = f"model.heads.{name}" if valid else "model.heads"
        if not valid:
            raise SpecError(
                where,
                f"{_printable(name)} is not a valid head name",
                "use lowercase letters, digits and `_`, starting with a letter (e.g. `digit`)",
            )
        head = as_mapping(head, where, "`{features: 10, task: classification, weight: 1.0}`")
        check_keys(head, HEAD_KEYS, where, "a head")
        if "features" not in head:
            raise SpecError(
                where, "missing key `features`", "give the head's output size, e.g. `features: 10`"
            )
        features = as_int(head["features"], f"{where}.features")
        task = as_choice(head.get("task", "classification"), f"{where}.task", HEAD_TASKS)
        if task == "classification" and features < 2:
            raise SpecError(
                f"{where}.features",
                f"a classification head needs one output per class, got {features}",
                "use 2 or more, or `task: regression`",
            )
        weight = as_float(head.get("weight", 1.0), f"{where}.weight", 0.0, 1000.0)
        if weight == 0:
            raise SpecError(
                f"{where}.weight",
                "a weight of 0 means this head never trains",
                "use a positive weight, or remove the head",
            )
        out.append(HeadSpec(where, name, features, task, weight))
    return tuple(out)


def parse_train(raw: Any, kind: str, multitask: bool = False) -> TrainSpec:
    t = as_mapping(raw if raw is not None else {}, "train", "`train: {task: classification}`")
    check_keys(t, TRAIN_KEYS, "train", "`train:`")
    if multitask:
        natural, allowed = "multitask", ("multitask",)
    elif kind in ("autoencoder", "vae"):
        natural, allowed = "reconstruction", ("reconstruction",)
    elif kind == "gan":
        natural, allowed = "adversarial", ("adversarial",)
    elif kind == "lm":
        natural, allowed = "language_modeling", ("language_modeling",)
    else:
        natural, allowed = "classification", ("classification", "regression")
    task = as_choice(t.get("task", natural), "train.task", TASKS)
    if task not in allowed:
        why = " with `heads:` (each head has its own task)" if multitask else ""
        raise SpecError(
            "train.task",
            f"task `{task}` does not fit kind `{kind}`{why}",
            f"use `task: {' or '.join(allowed)}`, or leave it out",
        )
    opt = t.get("optimizer", {})
    if isinstance(opt, str):
        opt = {"name": opt}
    opt = as_mapping(opt, "train.optimizer", "`optimizer: {name: adamw, lr: 0.001}`")
    check_keys(opt, OPTIMIZER_KEYS, "train.optimizer", "`optimizer:`")
    name = as_choice(opt.get("name", "adamw"), "train.optimizer.name", OPTIMIZERS)
    scheduler = t.get("scheduler", "cosine")
    if kind in ("mlp", "cnn", "gan", "lm", "seq") and "beta" in t:
        raise SpecError("train.beta", "`beta` weighs the KL term of a VAE", "remove `beta:`")
    if kind == "autoencoder" and "beta" in t:
        raise SpecError(
            "train.beta",
            "`beta` weighs the KL term of a VAE, and this is a plain autoencoder",
            "remove `beta:`, or use `kind: vae`",
        )
    groups_raw = as_mapping(
        t.get("param_groups") or {},
        "train.param_groups",
        "`param_groups: {features: {lr: 0.0001}}`",
    )
    param_groups = []
    for key, group in groups_raw.items():
        where = f"train.param_groups.{key}"
        part = _part_name(key, "train.param_groups")
        group = as_mapping(group, where, "`{lr: 0.0001}`")
        check_keys(group, ("lr",), where, "a parameter group")
        if "lr" not in group:
            raise SpecError(where, "missing key `lr`", f"e.g. `{part}: {{lr: 0.0001}}`")
        param_groups.append((part, as_float(group["lr"], f"{where}.lr", 1e-12, 10.0)))
    freeze_raw = t.get("freeze") or []
    if not isinstance(freeze_raw, list):
        raise SpecError(
            "train.freeze",
            f"expected a list of part names, got {_type_name(freeze_raw)}",
            "e.g. `freeze: [features]`",
        )
    freeze = tuple(_part_name(name, f"train.freeze[{i}]") for i, name in enumerate(freeze_raw))
    return TrainSpec(
        task=task,
        epochs=as_int(t.get("epochs", 10), "train.epochs", 1, MAX_EPOCHS),
        batch_size=as_int(t.get("batch_size", 64), "train.batch_size", 1, 65536),
        optimizer=name,
        lr=as_float(opt.get("lr", 1e-3), "train.optimizer.lr", 1e-12, 10.0),
        weight_decay=as_float(
            opt.get("weight_decay", WEIGHT_DECAY[name]), "train.optimizer.weight_decay", 0.0, 10.0
        ),
        momentum=as_float(
            opt.get("momentum", 0.9), "train.optimizer.momentum", 0.0, 1.0, hi_open=True
        ),
        scheduler=as_choice(scheduler, "train.scheduler", SCHEDULERS),
        beta=as_float(t.get("beta", 1.0), "train.beta", 0.0, 1000.0),
        seed=as_int(t.get("seed", 0), "train.seed", 0, 2**31 - 1),
        param_groups=tuple(param_groups),
        freeze=freeze,
    )


def _part_name(name: Any, where: str) -> str:
    """A name of a model part (checked against the plan by the builder)."""
    if not isinstance(name, str) or not PART_NAME_RE.fullmatch(name):
        raise SpecError(
            where,
            f"{_type_name(name)} is not a part name",
            "use a part name from `scaffold show`, e.g. `features`",
        )
    return name


def parse_spec(raw: Any) -> Spec:
    """Check a raw mapping (from YAML, JSON or copier answers) and normalize it."""
    data = as_mapping(raw, "spec", "a mapping with `model:` and `train:`")
    check_keys(data, TOP_KEYS, "spec", "the top level")
    if "model" not in data:
        raise SpecError("spec", "missing key `model`", "add a `model:` section; see examples/")
    project = check_project_name(data["project"]) if data.get("project") is not None else None
    model = parse_model(data["model"])
    train = parse_train(data.get("train"), model.kind, multitask=bool(model.heads))
    return Spec(project, model, train, raw=data)
