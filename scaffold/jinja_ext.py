"""Jinja extension that lets the Copier template read the plan.

Copier loads it through ``_jinja_extensions`` in ``templates/copier.yml`` (so
``copier copy`` / ``copier update`` need ``--trust``). It adds:

* ``scaffold_plan(spec, project_name)``: the validated plan (the template
  never computes a shape itself);
* ``scaffold_compose(...)``: the spec built from the interactive answers;
* ``scaffold_check_*``: answer validators that return an error message or "";
* the ``black`` filter: ``{% filter black %}...{% endfilter %}`` wraps every
  generated Python file, so every render (copy, and both sides of an update)
  comes out black-formatted and updates never show formatting-only conflicts.

Nothing here imports torch.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from jinja2.ext import Extension

from scaffold.draw import render_svg
from scaffold.errors import SpecError
from scaffold.layers import fmt_shape
from scaffold.plan import format_table
from scaffold.spec import MAX_SIZE, check_project_name, package_name

LINE_LENGTH = 100  # also written to the generated pyproject.toml ([tool.black])


def black_format(source: str) -> str:
    """Format generated Python with black (imported lazily: it is slow to import)."""
    import black

    return black.format_str(source, mode=black.Mode(line_length=LINE_LENGTH))


@lru_cache(maxsize=32)
def _plan_cached(spec_json: str, project: str):
    from scaffold.builders import plan_from_raw

    return plan_from_raw(json.loads(spec_json), project)


def scaffold_plan(spec: Any, project_name: str):
    """The plan for a spec mapping; raises SpecError (aborting the render) if invalid."""
    return _plan_cached(json.dumps(spec), project_name)  # keys in the spec's order (heads)


def _ints(text: Any, what: str, allow_empty: bool = False) -> list[int]:
    """'1, 28, 28' -> [1, 28, 28]"""
    if isinstance(text, int) and not isinstance(text, bool):
        return [text]
    if not isinstance(text, str):
        raise ValueError(f"{what}: expected numbers separated by commas")
    parts = [p for p in re.split(r"[\s,x]+", text.strip()) if p]
    if not parts and not allow_empty:
        raise ValueError(f"{what}: give at least one number")
    if not all(p.isdigit() and 0 < int(p) <= MAX_SIZE for p in parts):
        raise ValueError(f"{what}: use positive whole numbers separated by commas, e.g. 16, 32")
    return [int(p) for p in parts]


def scaffold_compose(
    kind: str,
    input_shape: str,
    conv_channels: str,
    hidden: str,
    num_outputs: int,
    latent: int,
    task: str,
    epochs: int,
    batch_size: int,
    lr: float,
    vocab: int = 65,
    seq_block: str = "transformer",
    width: int = 128,
    layers: int = 2,
    heads: int = 4,
) -> dict[str, Any]:
    """Build a spec from the interactive answers (conventional defaults for the rest)."""
    if kind in ("lm", "seq"):
        return _compose_sequence(
            kind, input_shape, hidden, num_outputs, task, epochs, batch_size, lr,
            vocab, seq_block, width, layers, heads,
        )  # fmt: skip
    shape = _ints(input_shape, "input shape")
    model: dict[str, Any] = {"kind": kind, "input": shape}
    convs = (
        _ints(conv_channels, "conv channels", allow_empty=True)
        if len(shape) > 1 and kind != "mlp"
        else []
    )
    widths = _ints(hidden, "hidden sizes", allow_empty=True)
    if kind in ("mlp", "cnn"):
        model["defaults"] = {"kernel": 3, "padding": 1, "norm": "batch", "activation": "relu"}
        if convs:
            model["conv"] = [{"channels": c, "pool": 2} for c in convs]
        model["mlp"] = [{"features": w} for w in widths] + [{"features": num_outputs}]
    elif kind == "gan":
        # DCGAN's defaults apply: BatchNorm (not on the input layer) and LeakyReLU(0.2) in
        # the discriminator, BatchNorm and ReLU in the generator
        model["defaults"] = {"kernel": 4, "stride": 2, "padding": 1}
        if convs:
            model["conv"] = [{"channels": c} for c in convs]
        else:
            model["mlp"] = [{"features": w} for w in widths or [128]]
        model["latent"] = latent
        model["output_activation"] = "tanh"
    else:
        model["defaults"] = {
            "kernel": 3,
            "stride": 2,
            "padding": 1,
            "norm": "batch",
            "activation": "relu",
        }
        if convs:
            model["conv"] = [{"channels": c} for c in convs]
        if widths or not convs:
            model["mlp"] = [{"features": w} for w in widths or [max(latent * 4, 8)]]
        model["latent"] = latent
        model["decoder"] = "mirror"
        model["output_activation"] = "sigmoid"
    natural = {"autoencoder": "reconstruction", "vae": "reconstruction", "gan": "adversarial"}
    train: dict[str, Any] = {
        "task": task if kind in ("mlp", "cnn") else natural[kind],
        "epochs": epochs,
        "batch_size": batch_size,
        "optimizer": {"name": "adamw", "lr": lr, "weight_decay": 0.01},
        "scheduler": "cosine",
    }
    return {"model": model, "train": train}


def _compose_sequence(
    kind: str,
    context: str,
    hidden: str,
    num_outputs: int,
    task: str,
    epochs: int,
    batch_size: int,
    lr: float,
    vocab: int,
    seq_block: str,
    width: int,
    layers: int,
    heads: int,
) -> dict[str, Any]:
    """A language model or sequence model from the answers: nanoGPT's layout for a
    transformer (learned positions, final norm, tied output layer), or a recurrent stack."""
    (length,) = _ints(context, "context")[:1]
    transformer = seq_block == "transformer"
    seq: list[dict[str, Any]] = [
        {"type": "embedding", "features": width, "position": "learned" if transformer else "none"}
    ]
    if transformer:
        seq += [{"type": "transformer", "layers": layers, "heads": heads}, {"type": "norm"}]
    else:
        seq.append({"type": seq_block, "features": width, "layers": layers})
    model: dict[str, Any] = {"kind": kind, "input": [length], "vocab": vocab, "seq": seq}
    if kind == "lm":
        model["tie_embeddings"] = True
        train_task = "language_modeling"
    else:
        seq.append({"type": "pool", "mode": "mean" if transformer else "last"})
        widths = _ints(hidden, "hidden sizes", allow_empty=True)
        model["defaults"] = {"activation": "relu"}
        model["mlp"] = [{"features": w} for w in widths] + [{"features": num_outputs}]
        train_task = task
    train = {
        "task": train_task,
        "epochs": epochs,
        "batch_size": batch_size,
        "optimizer": {"name": "adamw", "lr": lr, "weight_decay": 0.1},
        "scheduler": "cosine",
    }
    return {"model": model, "train": train}


def scaffold_check_name(name: Any) -> str:
    try:
        check_project_name(name)
    except SpecError as error:
        return f"{error.problem}; {error.fix}"
    return ""


def scaffold_check_ints(text: Any, what: str, allow_empty: bool = False) -> str:
    try:
        _ints(text, what, allow_empty)
    except ValueError as error:
        return str(error)
    return ""


def scaffold_check_spec(spec: Any, project_name: Any) -> str:
    """'' when the spec builds, else the engine's message (for copier validators)."""
    try:
        scaffold_plan(spec, project_name)
    except SpecError as error:
        return error.render()
    except (TypeError, ValueError) as error:
        return f"error: spec: {error}"
    return ""


class ScaffoldExtension(Extension):
    """Registers scaffold's globals and the black filter on a Jinja environment."""

    def __init__(self, environment):
        super().__init__(environment)
        environment.globals.update(
            scaffold_plan=scaffold_plan,
            scaffold_compose=scaffold_compose,
            scaffold_check_name=scaffold_check_name,
            scaffold_check_ints=scaffold_check_ints,
            scaffold_check_spec=scaffold_check_spec,
            scaffold_package_name=package_name,
            scaffold_table=format_table,
            scaffold_svg=render_svg,
        )
        environment.filters["black"] = black_format
        environment.filters["shape"] = fmt_shape
