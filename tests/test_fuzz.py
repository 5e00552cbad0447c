"""Fuzzing: hundreds of random specs per run, half of them broken on purpose.

Valid specs are built valid by construction (the strategy tracks every shape
with torch's formulas) across kinds, input dimensions, defaults and options.
For each one the engine must accept it, every rendered Python file of the
project must parse, and the rendered ``model.py``, executed in a fresh module
namespace and built on the meta device, must have exactly the shapes and
parameter count of the static plan (forward hooks against
``plan.module_shapes()``).

Invalid specs are valid ones with exactly one mutation (wrong type, zero or
negative size, shrinking conv stack, unknown key, missing key, huge number,
wrong nesting, impossible combination). Each must fail with exactly one
:class:`SpecError` (never another exception) that names the mutated location,
says what is wrong (with the shapes when a stack shrinks) and how to fix it.

A sample of both goes through the real CLI (``scaffold new`` in a fresh
interpreter): valid ones must produce the same files as the fast renderer,
invalid ones exit 2 with the same message, no traceback and nothing on disk.

Every spec that ever failed lives in ``tests/corpus/`` (see
:func:`test_corpus`). Runs are deterministic (``derandomize=True``, no example
database); ``SCAFFOLD_FUZZ_SCALE=4`` multiplies the example counts for a longer
local run.
"""

from __future__ import annotations

import ast
import copy
import functools
import hashlib
import json
import math
import os
import posixpath
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

from scaffold.builders import plan_from_raw
from scaffold.errors import SpecError
from scaffold.jinja_ext import black_format
from scaffold.spec import load_yaml_text

from conftest import ROOT, load_source, run_cli

torch = pytest.importorskip("torch")

SCALE = max(1, int(os.environ.get("SCAFFOLD_FUZZ_SCALE", "1")))
N_VALID = 300 * SCALE  # valid specs: render, parse, build, compare with torch
N_INVALID = 320 * SCALE  # mutated specs: one clear SpecError
N_CLI_VALID = 4  # through `scaffold new` in a fresh interpreter
N_CLI_INVALID = 12
CORPUS = ROOT / "tests" / "corpus"
TEMPLATE = ROOT / "templates" / "project"

FUZZ = settings(
    derandomize=True,  # the same examples on every run and machine (CI)
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=list(HealthCheck),
)

# Specs seen per test, deduplicated: the figures in docs/robustness.md.
SEEN: dict[str, set[str]] = {}


def count(test: str, spec: Any) -> None:
    SEEN.setdefault(test, set()).add(hashlib.sha1(repr(spec).encode()).hexdigest())


# ============================================================================ rendering


def _environment(black: bool):
    import jinja2

    from scaffold.jinja_ext import ScaffoldExtension

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE.parent)),  # copier's root: includes/ too
        extensions=[ScaffoldExtension],
        keep_trailing_newline=True,
    )
    env.globals["pathjoin"] = posixpath.join  # as copier defines it
    if not black:  # the same text, unformatted: ast.parse checks what black would parse
        env.filters["black"] = lambda source: source
    return env


@functools.lru_cache(maxsize=None)
def environment(black: bool = False):
    return _environment(black)


def template_files() -> list[str]:
    """Template files (relative, '/'-separated) in Copier's order; the answers file is Copier's own."""
    return sorted(
        p.relative_to(TEMPLATE).as_posix()
        for p in TEMPLATE.rglob("*.jinja")
        if "_copier_conf" not in p.name
    )


@functools.lru_cache(maxsize=None)
def copier_settings() -> tuple[dict[str, str], list[str]]:
    """copier.yml's computed answers (`when: false`: name -> default template) and its
    `_exclude` patterns (templates too)."""
    import yaml

    config = yaml.safe_load((TEMPLATE.parent / "copier.yml").read_text())
    computed = {
        name: question["default"]
        for name, question in config.items()
        if isinstance(question, dict) and question.get("when") is False and name != "package_name"
    }
    return computed, list(config.get("_exclude", []))


def render_project(spec: dict, project: str = "fuzzed", black: bool = False) -> dict[str, str]:
    """Render every template file the way Copier does: the computed answers (family,
    images, ...) first, names are templates too, an empty name or an `_exclude` pattern skips
    the file, and a later file rendering to the same path replaces an earlier one."""
    import fnmatch

    env = environment(black)
    context = {"spec": spec, "project_name": project, "package_name": project.replace("-", "_")}
    computed, exclude = copier_settings()
    for name, default in computed.items():
        value = env.from_string(default).render(context)
        context[name] = {"True": True, "False": False}.get(value, value)
    patterns = [p for p in (env.from_string(e).render(context) for e in exclude) if p]
    files: dict[str, str] = {}
    for relative in template_files():
        parts = [env.from_string(part).render(context) for part in relative[: -len(".jinja")].split("/")]
        if not all(parts) or any(fnmatch.fnmatch("/".join(parts), p) for p in patterns):
            continue
        files["/".join(parts)] = env.get_template(f"project/{relative}").render(context)
    return files


def first(output):
    """A module's output, or the first of several (a GRU's (output, h_n))."""
    return output[0] if isinstance(output, tuple) else output


def exec_model(source: str, class_name: str):
    """Execute a rendered model.py in a fresh module namespace; return the model class."""
    module = load_source(source, "fuzzed_model".replace("-", "_"))
    return getattr(module, class_name)


def check_model_against_plan(plan, source: str) -> None:
    """Build the rendered model on the meta device; torch's shapes must equal the plan's."""
    cls = exec_model(source, plan.class_name)
    with torch.device("meta"):
        model = cls()
    assert sum(p.numel() for p in model.parameters()) == plan.params
    modules = dict(model.named_modules())
    expected = dict(plan.module_shapes())
    assert len(expected) == len(plan.module_shapes()), "duplicate module paths in the plan"
    seen: dict[str, tuple[int, ...]] = {}
    for name in expected:
        assert name in modules, f"the plan names {name}, which the model does not have"
        modules[name].register_forward_hook(
            lambda mod, args, out, name=name: seen.update({name: tuple(first(out).shape[1:])})
        )
    model.train()
    if plan.kind in ("lm", "seq"):  # token ids
        x = torch.zeros((2, *plan.input_shape), dtype=torch.long, device="meta")
    else:
        x = torch.empty((2, *plan.input_shape), device="meta")
    if plan.kind == "gan":
        assert tuple(model.discriminator(x).shape) == (2, 1)
        out = model.generator(torch.empty((2, plan.latent), device="meta"))
        assert tuple(out.shape[1:]) == plan.input_shape
    else:
        out = model(x)
        main = out[0] if plan.kind == "vae" else out[plan.heads[0].name] if plan.heads else out
        assert tuple(main.shape[1:]) == plan.output_shape
    assert seen == expected


def literal_assignment(source: str, name: str) -> Any:
    """The value of a top-level `NAME = <literal>` in generated code."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"no {name} = ... in the generated code")


def check_valid(spec: dict, black: bool = False, project: str = "fuzzed") -> Any:
    """The whole check of an accepted spec; returns the plan."""
    try:
        plan = plan_from_raw(spec, project)
    except SpecError as error:
        raise AssertionError(f"a valid spec was rejected:\n{error.render()}") from None
    files = render_project(spec, project)
    if black:  # Copier's output: the same text through black
        formatted = environment(True).get_template("project/src/{{package_name}}/model.py.jinja").render(
            spec=spec, project_name=project, package_name=project.replace("-", "_"))
        assert formatted == black_format(files[f"src/{project.replace('-', '_')}/model.py"])
    package = project.replace("-", "_")
    for name in (f"src/{package}/model.py", f"src/{package}/train.py", "tests/test_model.py", "pyproject.toml"):
        assert name in files, f"{name} was not rendered"
    for name, text in files.items():
        if name.endswith(".py"):
            ast.parse(text, filename=name)
        assert "{{" not in text and "{%" not in text, f"unrendered Jinja in {name}"
    model_py = files[f"src/{package}/model.py"]
    check_model_against_plan(plan, model_py)
    # the generated tests carry the same static plan
    shapes = literal_assignment(files["tests/test_model.py"], "EXPECTED_SHAPES")
    assert shapes == {name: tuple(shape) for name, shape in plan.module_shapes()}
    assert literal_assignment(files["tests/test_model.py"], "PARAM_COUNT") == plan.params
    if plan.kind in ("lm", "seq"):  # sizes in the config dataclass, whose default is CONTEXT
        assert literal_assignment(model_py, "CONTEXT") == plan.input_shape[0]
    else:
        assert literal_assignment(model_py, "INPUT_SHAPE") == plan.input_shape
    return plan


# ============================================================================ valid specs

ACTIVATIONS = ["none", "relu", "leaky_relu", "gelu", "silu", "elu", "tanh", "sigmoid", "softmax", "log_softmax"]
HIDDEN_ACTS = ["relu", "relu", "gelu", "silu", "leaky_relu", "tanh", "elu", "none"]
SPATIAL_MAX = {1: 40, 2: 20, 3: 9}


def conv_out(n: int, k: int, s: int, p: int, d: int = 1) -> int:
    """torch's formula: floor((n + 2p - d(k-1) - 1) / s) + 1."""
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def per_dim(value: Any, ndim: int) -> list[int]:
    return list(value) if isinstance(value, list) else [value] * ndim


def maybe_list(draw, values: st.SearchStrategy, ndim: int) -> Any:
    """An int, or (sometimes) one int per spatial dimension."""
    if ndim > 1 and draw(st.integers(0, 4)) == 0:
        return [draw(values) for _ in range(ndim)]
    return draw(values)


@st.composite
def conv_stack(draw, shape: list[int], defaults: dict, count: int) -> list[dict]:
    """Conv blocks that all fit: sizes are tracked and a block that would not fit is repaired."""
    ndim = len(shape) - 1
    blocks = []
    for _ in range(count):
        b: dict[str, Any] = {"channels": draw(st.integers(1, 8))}
        for key, values in (
            ("kernel", st.integers(1, 5)),
            ("stride", st.integers(1, 3)),
            ("padding", st.integers(0, 2)),
            ("dilation", st.integers(1, 2)),
        ):
            if draw(st.integers(0, 2)) == 0:
                b[key] = maybe_list(draw, values, ndim)
        if draw(st.booleans()):
            b["activation"] = draw(st.sampled_from(ACTIVATIONS))
        if draw(st.integers(0, 3)) == 0:
            b["norm"] = draw(st.sampled_from(["none", "batch"]))
        if draw(st.integers(0, 4)) == 0:
            b["bias"] = draw(st.booleans())
        if draw(st.integers(0, 4)) == 0:
            b["dropout"] = draw(st.sampled_from([0, 0.0, 0.1, 0.5]))
        if draw(st.integers(0, 3)) == 0:
            b["pool"] = draw(
                st.one_of(
                    st.integers(1, 3),
                    st.just(None),
                    st.just("none"),
                    st.lists(st.integers(1, 2), min_size=ndim, max_size=ndim),
                    st.builds(
                        lambda kind, k, s, p: {"kind": kind, "kernel": k, "stride": s, "padding": min(p, k // 2)},
                        st.sampled_from(["max", "avg"]),
                        st.integers(1, 3),
                        st.integers(1, 3),
                        st.integers(0, 1),
                    ),
                )
            )
        eff = {**{k: v for k, v in defaults.items() if k in ("kernel", "stride", "padding", "dilation", "pool")}, **b}
        kernel = per_dim(eff.get("kernel", 3), ndim)
        residual = draw(st.integers(0, 5)) == 0 and all(k % 2 for k in kernel)
        if residual:
            b["residual"] = True
            b.pop("padding", None)  # "same" padding is set for residual blocks
        stride = per_dim(eff.get("stride", 1), ndim)
        dilation = per_dim(eff.get("dilation", 1), ndim)
        padding = per_dim(eff.get("padding", 0), ndim)
        if residual:
            padding = [d * (k - 1) // 2 for k, d in zip(kernel, dilation)]
        if any(n + 2 * p < d * (k - 1) + 1 for n, k, p, d in zip(shape[1:], kernel, padding, dilation)):
            b["kernel"], b["dilation"], kernel, dilation = 1, 1, [1] * ndim, [1] * ndim  # repair: a 1x1 conv fits
            if residual:
                padding = [0] * ndim
        out = [conv_out(n, k, s, p, d) for n, k, s, p, d in zip(shape[1:], kernel, stride, padding, dilation)]
        pool = eff.get("pool")
        if pool not in (None, "none", 0, False):
            if isinstance(pool, dict):
                pk, ps, pp = per_dim(pool["kernel"], ndim), per_dim(pool.get("stride", pool["kernel"]), ndim), per_dim(pool.get("padding", 0), ndim)
                avg3d = pool.get("kind", "max") == "avg" and ndim == 3
            else:
                pk, pp, avg3d = per_dim(pool, ndim), [0] * ndim, False
                ps = pk
            if any(n + 2 * p < k or (avg3d and n < k) for n, k, p in zip(out, pk, pp)):
                b["pool"] = None  # repair: drop the pool that does not fit
            else:
                out = [conv_out(n, k, s, p) for n, k, s, p in zip(out, pk, ps, pp)]
        if draw(st.integers(0, 5)) == 0:
            b["in_channels"] = shape[0]
        shape = [b["channels"], *out]
        blocks.append(b)
    return blocks


@st.composite
def linear_block(draw, hidden: bool, features: st.SearchStrategy, in_features: int | None) -> dict:
    b: dict[str, Any] = {"features": draw(features)}
    if hidden:
        if draw(st.booleans()):
            b["activation"] = draw(st.sampled_from(HIDDEN_ACTS))
        if draw(st.integers(0, 2)) == 0:
            b["norm"] = draw(st.sampled_from(["none", "batch", "layer"]))
        if draw(st.integers(0, 3)) == 0:
            b["dropout"] = draw(st.sampled_from([0.0, 0.25]))
        style = draw(st.sampled_from(["plain"] * 4 + ["residual", "gate"]))
        if style != "plain":
            b[style] = True
        if draw(st.integers(0, 4)) == 0:
            b["scale"] = True
    else:
        b["activation"] = draw(st.sampled_from(["none", "none", "none", "sigmoid", "tanh"]))
    if draw(st.integers(0, 4)) == 0:
        b["bias"] = draw(st.booleans())
    if in_features is not None and draw(st.integers(0, 5)) == 0:
        b["in_features"] = in_features
    return b


PARTS = {
    "mlp": ["head"],
    "cnn": ["features", "head"],
    "autoencoder": ["encoder", "decoder"],
    "vae": ["encoder", "fc_mu", "fc_logvar", "fc_decode", "decoder"],
    "gan": ["generator", "discriminator"],
}


@st.composite
def valid_specs(draw) -> dict:
    """A spec that the engine must accept, of any kind and input dimension."""
    kind = draw(st.sampled_from(["mlp", "mlp", "cnn", "cnn", "autoencoder", "autoencoder", "vae", "vae", "gan"]))
    if kind == "cnn":
        ndim = draw(st.integers(1, 3))
    elif kind == "mlp":
        ndim = draw(st.sampled_from([0, 0, 0, 1, 2]))
    else:
        ndim = draw(st.integers(0, 3))
    channels = draw(st.integers(1, 4)) if ndim else draw(st.integers(1, 64))
    shape = [channels] + [draw(st.integers(1, SPATIAL_MAX[ndim])) for _ in range(ndim)]
    model: dict[str, Any] = {"kind": kind, "input": list(shape)}

    want_conv = ndim > 0 and kind != "mlp" and (kind == "cnn" or draw(st.integers(0, 3)) > 0)
    defaults: dict[str, Any] = {}
    if draw(st.booleans()):
        if want_conv:
            for key, values in (("kernel", st.integers(1, 5)), ("stride", st.integers(1, 2)), ("padding", st.integers(0, 2)),
                                ("dilation", st.integers(1, 2)), ("pool", st.sampled_from([None, 2, "none"]))):
                if draw(st.integers(0, 2)) == 0:
                    defaults[key] = draw(values)
        if draw(st.booleans()):
            defaults["activation"] = draw(st.sampled_from(HIDDEN_ACTS))
        if draw(st.integers(0, 2)) == 0:
            defaults["norm"] = draw(st.sampled_from(["none", "batch"] if want_conv else ["none", "batch", "layer"]))
        if draw(st.integers(0, 3)) == 0:
            defaults["dropout"] = draw(st.sampled_from([0.0, 0.1]))
        if draw(st.integers(0, 3)) == 0:
            defaults["bias"] = draw(st.booleans())
        model["defaults"] = defaults

    if want_conv:
        model["conv"] = draw(conv_stack(shape, defaults, draw(st.integers(1, 4))))

    heads = kind in ("mlp", "cnn") and draw(st.integers(0, 7)) == 0
    n_hidden = draw(st.integers(0, 3))
    if kind in ("autoencoder", "vae", "gan") and not want_conv:
        n_hidden = max(n_hidden, 1)
    mlp = [draw(linear_block(True, st.integers(1, 32), None)) for _ in range(n_hidden)]
    task = None
    if kind in ("mlp", "cnn"):
        task = draw(st.sampled_from(["classification", "classification", "regression"]))
        if not heads:
            minimum = 2 if task == "classification" else 1
            mlp.append(draw(linear_block(False, st.integers(minimum, 12), None)))
    if mlp or draw(st.booleans()):
        model["mlp"] = mlp
    if heads:
        names = draw(st.lists(st.sampled_from(["digit", "parity", "size", "age", "x1", "out_2"]), min_size=1, max_size=3, unique=True))
        model["heads"] = {}
        for name in names:
            head_task = draw(st.sampled_from(["classification", "regression"]))
            head: dict[str, Any] = {"features": draw(st.integers(2 if head_task == "classification" else 1, 9))}
            if draw(st.booleans()):
                head["task"] = head_task
            elif head_task == "regression":
                head["features"] = max(head["features"], 2)  # task defaults to classification
            if draw(st.booleans()):
                head["weight"] = draw(st.sampled_from([0.5, 1, 2.0]))
            model["heads"][name] = head

    if kind in ("vae", "gan") or (kind == "autoencoder" and draw(st.booleans())):
        model["latent"] = draw(st.integers(1, 16))
    if kind in ("autoencoder", "vae", "gan"):
        if draw(st.booleans()):
            model["output_activation"] = draw(st.sampled_from(["none", "sigmoid", "tanh"]))
        if draw(st.integers(0, 3)) == 0:
            model["decoder"] = "mirror"

    spec: dict[str, Any] = {"model": model}
    if draw(st.integers(0, 4)) == 0:
        spec["project"] = draw(st.sampled_from(["fuzzed", "my-net", "net_2"]))
    train: dict[str, Any] = {}
    if heads:
        if draw(st.booleans()):
            train["task"] = "multitask"
    elif task and (task == "regression" or draw(st.booleans())):
        train["task"] = task
    elif kind in ("autoencoder", "vae") and draw(st.booleans()):
        train["task"] = "reconstruction"
    if draw(st.booleans()):
        train["epochs"] = draw(st.integers(1, 50))
    if draw(st.booleans()):
        train["batch_size"] = draw(st.integers(2, 256))
    if draw(st.booleans()):
        name = draw(st.sampled_from(["adamw", "adam", "sgd"]))
        if draw(st.booleans()):
            train["optimizer"] = name
        else:
            opt: dict[str, Any] = {"name": name, "lr": draw(st.sampled_from([1e-4, 0.001, 0.01, 1]))}
            if draw(st.booleans()):
                opt["weight_decay"] = draw(st.sampled_from([0, 0.01, 0.1]))
            if name == "sgd" and draw(st.booleans()):
                opt["momentum"] = draw(st.sampled_from([0, 0.5, 0.9]))
            train["optimizer"] = opt
    if draw(st.booleans()):
        train["scheduler"] = draw(st.sampled_from(["cosine", "none"]))
    if kind == "vae" and draw(st.booleans()):
        train["beta"] = draw(st.sampled_from([0, 0.5, 1.0, 4]))
    if draw(st.integers(0, 3)) == 0:
        train["seed"] = draw(st.integers(0, 2**31 - 1))
    parts = list(PARTS[kind])
    if kind in ("mlp", "cnn") and heads:
        parts = (["features"] if kind == "cnn" else []) + (["trunk"] if mlp else []) + ["heads"]
    if draw(st.integers(0, 3)) == 0:
        groups = draw(st.lists(st.sampled_from(parts), max_size=2, unique=True))
        train["param_groups"] = {p: {"lr": draw(st.sampled_from([1e-5, 1e-4, 0.01]))} for p in groups}
    if len(parts) > 1 and draw(st.integers(0, 3)) == 0:
        train["freeze"] = draw(st.lists(st.sampled_from(parts), min_size=1, max_size=len(parts) - 1, unique=True))
    if train or draw(st.booleans()):
        spec["train"] = train
    return spec


@settings(FUZZ, max_examples=N_VALID)
@given(spec=valid_specs(), black=st.integers(0, 3).map(lambda i: i == 0))
def test_valid_specs_render_build_and_match_torch(spec, black):
    """Accepted; every rendered Python file parses; torch's shapes equal the plan's."""
    note(yaml.safe_dump(spec, sort_keys=False))
    count("valid", spec)
    bug = known_bug(spec)
    if bug:
        try:
            check_valid(spec, black=black)
        except (AssertionError, Exception):  # noqa: BLE001 - a known bug, in tests/corpus as xfail
            COUNTS[f"known bug: {bug}"] = COUNTS.get(f"known bug: {bug}", 0) + 1
        return
    check_valid(spec, black=black)


def known_bug(spec: dict) -> str:
    """Bugs the fuzzer found that are not fixed yet; each has an xfail spec in tests/corpus.

    The fuzzer still runs these specs (and counts them) but does not fail on them,
    so that CI stays green until the engine is fixed; the corpus entry then XPASSes
    strictly and its marker (and the line here) must go.
    """
    return ""  # none open: the ones found so far are fixed, and their specs are in tests/corpus


# ============================================================================ mutations

TYPO_KEYS = ["chanels", "kernal", "activaton", "featurs", "lr_rate", "Kind", "inputs", "droput"]
HOSTILE_KEYS = [
    "__class__", "{{ 7*7 }}", "{% raw %}", "a\nb", "'; import os #", "ｋｅｒｎｅｌ", "kеrnel",  # Cyrillic е
    "../x", "x" * 500, 42, None, True, 3.5,
]
INT_KEYS = {"channels", "in_channels", "features", "in_features", "kernel", "stride", "padding", "dilation",
            "latent", "epochs", "batch_size", "seed"}
FLOAT_KEYS = {"dropout", "lr", "weight_decay", "momentum", "beta", "weight"}
BOOL_KEYS = {"bias", "residual", "gate", "scale"}
CHOICE_KEYS = {"kind", "norm", "activation", "task", "name", "scheduler", "output_activation", "decoder"}
ZERO_OK = {"padding", "seed", "dropout", "weight_decay", "momentum", "beta"}  # 0 is a valid value


@dataclass
class Mutant:
    spec: Any
    category: str
    wheres: tuple[str, ...]  # the error must point at one of these (or inside it)
    shapes: bool = False  # the message must show the shapes involved
    known_bug: str = ""  # the engine mishandles it today; see tests/corpus
    base: dict | None = None  # the valid spec it was made from


def where_of(path: tuple) -> str:
    """('model', 'conv', 1, 'pool', 'kernel') -> 'model.conv[1].pool.kernel'"""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "spec"


def leaves(spec: dict) -> list[tuple[tuple, Any]]:
    """Every scalar (and list-valued shape field) in the spec with its path."""
    found = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, path + (key,))
        elif isinstance(node, list) and not (path and path[-1] in ("kernel", "stride", "padding", "dilation", "pool")):
            for i, value in enumerate(node):
                walk(value, path + (i,))
        else:
            found.append((path, node))

    walk(spec, ())
    return found


def field_name(path: tuple) -> str:
    named = [p for p in path if isinstance(p, str)]
    if path[:2] == ("model", "input"):
        return "input"
    if path[-2:-1] == ("freeze",):
        return "part"
    if path and path[-1] == "optimizer":
        return "name"
    if "pool" in named:
        return "pool_" + (named[-1] if named[-1] != "pool" else "pool")
    return named[-1] if named else ""


def set_at(spec: Any, path: tuple, value: Any) -> Any:
    spec = copy.deepcopy(spec)
    node = spec
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return spec


def get_at(spec: Any, path: tuple) -> Any:
    for part in path:
        spec = spec[part]
    return spec


def leaf_wheres(spec: dict, path: tuple) -> tuple[str, ...]:
    """Where an error about this leaf must point: the leaf itself (a `defaults:` entry is
    blamed where it is written, not at a block that inherits it)."""
    return (where_of(path),)


def wrong_type_for(name: str, draw) -> Any:
    if name in INT_KEYS or name in ("input", "pool_kernel", "pool_stride", "pool_padding"):
        return draw(st.sampled_from(["sixteen", "3", [1, 2, 3, 4, 5], {"value": 3}, True, 2.5, [], "1e5"]))
    if name in FLOAT_KEYS:
        return draw(st.sampled_from(["0.1", [0.1], {"p": 0.1}, True, "small"]))
    if name in BOOL_KEYS:
        return draw(st.sampled_from(["yes", "true", 1, 0, [True], "on"]))
    if name in CHOICE_KEYS or name in ("pool_kind", "part"):
        return draw(st.sampled_from([3, ["relu"], {"name": "relu"}, True, "RELU", "ｒｅｌｕ", "re lu", "torch.relu", ""]))
    if name == "pool_pool":
        return draw(st.sampled_from(["sixteen", {"size": 2}, 2.5, True, [1, 2, 3, 4, 5]]))
    return draw(st.sampled_from(["sixteen", 2.5, True]))


def shape_blocks(plan) -> dict[str, Any]:
    from scaffold.plan import Block

    return {item.where: item for part in plan.parts for item in part.items
            if isinstance(item, Block) and item.where.startswith("model.conv[")}


@st.composite
def mutants(draw) -> Mutant:
    mutant = draw(mutants_of_valid())
    mutant.known_bug = mutant.known_bug or known_bug(mutant.base)
    return mutant


@st.composite
def mutants_of_valid(draw) -> Mutant:
    spec = draw(valid_specs())
    mutant = draw(mutate(spec))
    mutant.base = spec
    return mutant


@st.composite
def mutate(draw, spec: dict) -> Mutant:
    model = spec["model"]
    category = draw(st.sampled_from(
        ["wrong type", "zero or negative", "shrinking stack", "unknown key", "missing key", "huge number",
         "wrong nesting", "impossible combination"]))
    if category == "shrinking stack" and not model.get("conv"):
        category = "shape mismatch"
    all_leaves = [(p, v) for p, v in leaves(spec) if p[:2] != ("model", "heads") or len(p) > 3]

    if category == "wrong type":
        candidates = [(p, v) for p, v in all_leaves if field_name(p) and not (p[-1:] == ("project",))]
        path, _ = draw(st.sampled_from(candidates))
        name = field_name(path)
        if name == "pool_pool" and path[-1] == "pool" and get_at(spec, path) is None:
            name = "pool_pool"
        value = wrong_type_for(name, draw)
        mutated = set_at(spec, path, value)
        return Mutant(mutated, category, leaf_wheres(spec, path))

    if category in ("zero or negative", "huge number"):
        numeric = [(p, v) for p, v in all_leaves
                   if (field_name(p) in INT_KEYS | FLOAT_KEYS | {"input", "pool_kernel", "pool_stride", "pool_padding"}
                       or (field_name(p) == "pool_pool" and isinstance(v, int) and not isinstance(v, bool)))
                   and not isinstance(v, list) and field_name(p) != "in_channels" and field_name(p) != "in_features"]
        if not numeric:
            numeric = [(("model", "input", 0), model["input"][0])]
        path, _ = draw(st.sampled_from(numeric))
        name = field_name(path)
        if category == "zero or negative":
            if name in ZERO_OK or name == "pool_padding":
                value = draw(st.sampled_from([-1, -3, -0.5, -1e9]))
            elif name == "pool_pool":
                value = draw(st.sampled_from([-1, -2]))  # 0 means "no pool"
            elif name in FLOAT_KEYS and name != "lr" and name != "weight":
                value = draw(st.sampled_from([-1, -0.5]))
            else:
                value = draw(st.sampled_from([0, -1, -16, -(10**9)]))
        else:
            if name in FLOAT_KEYS:
                value = draw(st.sampled_from([1e9, 1e308, float("inf"), float("nan"), 10**30]))
            else:
                value = draw(st.sampled_from([10**12, 10**30, 2**63, 1e300, float("inf"), float("nan")]
                                             + ([10**7] if name != "seed" else [2**31])))
        return Mutant(set_at(spec, path, value), category, leaf_wheres(spec, path))

    if category == "shrinking stack":
        from scaffold.plan import Block  # noqa: F401

        plan = plan_from_raw(spec)
        blocks = shape_blocks(plan)
        conv = model["conv"]
        how = draw(st.sampled_from(["append", "kernel", "pool"]))
        if how == "kernel":
            choices = [i for i, b in enumerate(conv) if not b.get("residual")]
            how = "append" if not choices else how
        if how == "append":
            last = blocks[f"model.conv[{len(conv) - 1}]"].out_shape
            k = min(last[1:]) + 1 + draw(st.integers(0, 3))
            mutated = copy.deepcopy(spec)
            mutated["model"]["conv"].append({"channels": 4, "kernel": k, "padding": 0, "dilation": 1})
            return Mutant(mutated, category, (f"model.conv[{len(conv)}]",), shapes=True)
        if how == "kernel":
            i = draw(st.sampled_from(choices))
            n = min(blocks[f"model.conv[{i}]"].in_shape[1:])
            mutated = copy.deepcopy(spec)
            mutated["model"]["conv"][i].update(kernel=n + 1 + draw(st.integers(0, 3)), padding=0, dilation=1)
            return Mutant(mutated, category, (f"model.conv[{i}]",), shapes=True)
        i = draw(st.integers(0, len(conv) - 1))
        block = blocks[f"model.conv[{i}]"]
        before_pool = [layer for layer in block.layers if layer.role not in ("pool", "drop")][-1].out_shape
        k = min(before_pool[1:]) + 1 + draw(st.integers(0, 2))
        mutated = copy.deepcopy(spec)
        mutated["model"]["conv"][i]["pool"] = {"kind": "max", "kernel": k}
        return Mutant(mutated, category, (f"model.conv[{i}].pool",), shapes=True)

    if category == "shape mismatch":
        mlp = model.get("mlp") or []
        if not mlp:
            mutated = copy.deepcopy(spec)
            mutated["model"]["input"] = [model["input"][0]] * 5
            return Mutant(mutated, category, ("model.input",))
        plan = plan_from_raw(spec)
        from scaffold.plan import Block

        j = draw(st.integers(0, len(mlp) - 1))
        inputs = {item.where: item.in_shape for part in plan.parts for item in part.items
                  if isinstance(item, Block)}
        if plan.has_part("head"):  # a plain output layer is an nn.Linear, not a block
            inputs.setdefault(f"model.mlp[{len(mlp) - 1}]", plan.part("head").in_shape)
        mutated = copy.deepcopy(spec)
        mutated["model"]["mlp"][j]["in_features"] = inputs[f"model.mlp[{j}]"][0] + draw(st.integers(1, 5))
        return Mutant(mutated, category, (f"model.mlp[{j}]",), shapes=True)

    if category == "unknown key":
        mappings: list[tuple[tuple, str]] = [((), "spec"), (("model",), "model")]
        if isinstance(model.get("defaults"), dict):
            mappings.append((("model", "defaults"), "model.defaults"))
        for stack in ("conv", "mlp"):
            for i, b in enumerate(model.get(stack) or []):
                mappings.append((("model", stack, i), f"model.{stack}[{i}]"))
                if isinstance(b.get("pool"), dict):
                    mappings.append((("model", stack, i, "pool"), f"model.{stack}[{i}].pool"))
        for name in model.get("heads") or {}:
            mappings.append((("model", "heads", name), f"model.heads.{name}"))
        if isinstance(spec.get("train"), dict):
            mappings.append((("train",), "train"))
            if isinstance(spec["train"].get("optimizer"), dict):
                mappings.append((("train", "optimizer"), "train.optimizer"))
            for name in spec["train"].get("param_groups") or {}:
                mappings.append((("train", "param_groups", name), f"train.param_groups.{name}"))
        path, where = draw(st.sampled_from(mappings))
        key = draw(st.sampled_from(TYPO_KEYS + HOSTILE_KEYS))
        mutated = copy.deepcopy(spec)
        node = get_at(mutated, path)
        if key in node:
            key = "chanels_"
        node[key] = draw(st.sampled_from([1, "x", None, {"a": 1}]))
        return Mutant(mutated, category, (where,))

    if category == "missing key":
        options: list[tuple[tuple, str]] = [(("model",), "spec"), (("model", "kind"), "model"), (("model", "input"), "model")]
        for i, _ in enumerate(model.get("conv") or []):
            options.append((("model", "conv", i, "channels"), f"model.conv[{i}]"))
            if isinstance(model["conv"][i].get("pool"), dict):
                options.append((("model", "conv", i, "pool", "kernel"), f"model.conv[{i}].pool"))
        for i, _ in enumerate(model.get("mlp") or []):
            options.append((("model", "mlp", i, "features"), f"model.mlp[{i}]"))
        for name in model.get("heads") or {}:
            options.append((("model", "heads", name, "features"), f"model.heads.{name}"))
        if model["kind"] in ("vae", "gan"):
            options.append((("model", "latent"), "model"))
        if model["kind"] == "cnn":
            options.append((("model", "conv"), "model.conv"))
        if model["kind"] in ("mlp", "cnn") and not model.get("heads"):
            options.append((("model", "mlp"), "model.mlp"))
        if model["kind"] in ("autoencoder", "vae", "gan"):
            stacks = [s for s in ("conv", "mlp") if model.get(s)]
            if len(stacks) == 1:
                options.append((("model", stacks[0]), "model"))
        for name in (spec.get("train") or {}).get("param_groups") or {}:
            options.append((("train", "param_groups", name, "lr"), f"train.param_groups.{name}"))
        path, where = draw(st.sampled_from(options))
        mutated = copy.deepcopy(spec)
        del get_at(mutated, path[:-1])[path[-1]]
        return Mutant(mutated, category, (where,))

    if category == "wrong nesting":
        how = draw(st.sampled_from(["spec list", "model list", "flattened", "train in model", "input nested",
                                    "input mapping", "stack mapping", "block list", "block wrapped",
                                    "defaults list", "optimizer list", "freeze string", "groups list", "pool nested",
                                    "heads list"]))
        mutated = copy.deepcopy(spec)
        m = mutated["model"]
        stack = "conv" if m.get("conv") else "mlp" if m.get("mlp") else None
        if how == "spec list":
            return Mutant([mutated], category, ("spec",))
        if how == "model list":
            mutated["model"] = [{k: v} for k, v in m.items()]
            return Mutant(mutated, category, ("model",))
        if how == "flattened":
            top = {**{k: v for k, v in mutated.items() if k != "model"}, **m}
            return Mutant(top, category, ("spec",))
        if how == "train in model":
            m["train"] = mutated.pop("train", {"epochs": 1})
            return Mutant(mutated, category, ("model",))
        if how == "input nested":
            m["input"] = [m["input"]]
            return Mutant(mutated, category, ("model.input",))
        if how == "input mapping":
            m["input"] = {"channels": m["input"][0], "size": m["input"][1:]}
            return Mutant(mutated, category, ("model.input",))
        if how in ("stack mapping", "block list", "block wrapped") and stack:
            if how == "stack mapping":
                m[stack] = m[stack][0]
                return Mutant(mutated, category, (f"model.{stack}",))
            if how == "block list":
                m[stack] = [m[stack]]
                return Mutant(mutated, category, (f"model.{stack}[0]",))
            m[stack][0] = {"block": m[stack][0]}
            return Mutant(mutated, category, (f"model.{stack}[0]",))
        if how == "defaults list":
            m["defaults"] = [{"activation": "relu"}]
            return Mutant(mutated, category, ("model.defaults",))
        if how == "pool nested" and m.get("conv"):
            m["conv"][0]["pool"] = {"pool": {"kernel": 2}}
            return Mutant(mutated, category, ("model.conv[0].pool",))
        if how == "heads list" and m.get("heads"):
            m["heads"] = [{k: v} for k, v in m["heads"].items()]
            return Mutant(mutated, category, ("model.heads",))
        train = mutated.setdefault("train", {})
        if train is None:
            train = mutated["train"] = {}
        if how == "freeze string":
            train["freeze"] = draw(st.sampled_from(["head", "encoder", "features"]))
            return Mutant(mutated, category, ("train.freeze",))
        if how == "groups list":
            train["param_groups"] = [{"lr": 0.1}]
            return Mutant(mutated, category, ("train.param_groups",))
        train["optimizer"] = ["adamw", 0.001]
        return Mutant(mutated, category, ("train.optimizer",))

    # impossible combination: each value is fine alone, not together
    kind = model["kind"]
    mutated = copy.deepcopy(spec)
    m = mutated["model"]
    train = mutated.get("train") if isinstance(mutated.get("train"), dict) else {}
    mutated["train"] = train
    options = ["task", "freeze all", "unknown part"]
    if kind in ("mlp", "cnn"):
        options += ["latent on a head", "output_activation on a head", "beta"]
        if not m.get("heads"):
            options += ["one class"]
    if kind in ("autoencoder", "gan"):
        options += ["beta"]
    if kind == "mlp":
        options += ["conv on mlp"]
    if kind != "mlp" and m.get("conv"):
        options += ["even residual"]
    if m.get("mlp") and any(True for _ in m["mlp"]):
        options += ["residual and gate"]
    if m.get("conv"):
        options += ["conv norm layer"]
    if len(m["input"]) == 1 and kind != "mlp":
        options += ["conv on vectors"]
    choice = draw(st.sampled_from(options))
    if choice == "task":
        natural = {"mlp": ["reconstruction", "adversarial"], "cnn": ["reconstruction", "multitask"],
                   "autoencoder": ["classification", "regression"], "vae": ["classification", "adversarial"],
                   "gan": ["reconstruction", "classification"]}[kind]
        if m.get("heads"):
            natural = ["classification", "regression"]
        train["task"] = draw(st.sampled_from(natural))
        return Mutant(mutated, category, ("train.task",))
    if choice == "freeze all":
        parts = list(PARTS[kind])
        if m.get("heads"):
            parts = (["features"] if kind == "cnn" else []) + (["trunk"] if m.get("mlp") else []) + ["heads"]
        train["freeze"] = parts
        return Mutant(mutated, category, ("train.freeze",))
    if choice == "unknown part":
        name = draw(st.sampled_from(["backbone", "flatten", "decoder" if kind in ("mlp", "cnn") else "head"]))
        if draw(st.booleans()):
            train["freeze"] = [name]
            return Mutant(mutated, category, ("train.freeze[0]",))
        train["param_groups"] = {name: {"lr": 0.01}}
        return Mutant(mutated, category, (f"train.param_groups.{name}",))
    if choice == "latent on a head":
        m["latent"] = 8
        return Mutant(mutated, category, ("model.latent",))
    if choice == "output_activation on a head":
        m["output_activation"] = "sigmoid"
        return Mutant(mutated, category, ("model.output_activation",))
    if choice == "beta":
        train["beta"] = 1.0
        return Mutant(mutated, category, ("train.beta",))
    if choice == "one class":
        train["task"] = "classification"
        m["mlp"][-1]["features"] = 1
        return Mutant(mutated, category, (f"model.mlp[{len(m['mlp']) - 1}]",))
    if choice == "conv on mlp":
        if len(m["input"]) == 1:
            m["input"] = [1, 8]
        m["conv"] = [{"channels": 4}]
        return Mutant(mutated, category, ("model.conv",))
    if choice == "even residual":
        m["conv"][0].update(residual=True, kernel=draw(st.sampled_from([2, 4])))
        m["conv"][0].pop("padding", None)
        return Mutant(mutated, category, ("model.conv[0].kernel",))
    if choice == "residual and gate":
        j = draw(st.integers(0, len(m["mlp"]) - 1))
        m["mlp"][j].update(residual=True, gate=True)
        return Mutant(mutated, category, (f"model.mlp[{j}]",))
    if choice == "conv norm layer":
        i = draw(st.integers(0, len(m["conv"]) - 1))
        m["conv"][i]["norm"] = "layer"
        return Mutant(mutated, category, (f"model.conv[{i}].norm",))
    m["conv"] = [{"channels": 4}]  # conv on vectors
    return Mutant(mutated, category, ("model.conv",))


def located(where: str, wheres: tuple[str, ...]) -> bool:
    return any(where == w or where.startswith(w + ".") or where.startswith(w + "[") for w in wheres)


def check_invalid(spec: Any, wheres: tuple[str, ...] = (), shapes: bool = False) -> SpecError:
    """Exactly one SpecError, pointing at the mutation, saying what is wrong and how to fix it."""
    try:
        plan_from_raw(spec)
    except SpecError as error:
        caught = error
    except Exception as error:  # noqa: BLE001 - the point: nothing but SpecError
        raise AssertionError(f"{type(error).__name__} instead of a SpecError: {error}") from error
    else:
        raise AssertionError("an invalid spec was accepted")
    check_message(caught)
    if wheres:
        assert located(caught.where, wheres), f"error at {caught.where}, expected {wheres}:\n{caught.render()}"
    if shapes:
        text = caught.render()
        assert "shapes: input" in text, text  # the trail of shapes up to the failing block
        assert re.search(r"\d+ x \d+|\d+ \+ 2\*\d+|feature map is \d+|\d+ input features but .* \d+", text), text
    return caught


def check_message(error: SpecError) -> None:
    text = error.render()
    lines = text.splitlines()
    assert lines[0] == f"error: {error.where}: {error.problem}"
    assert sum(line.startswith("error:") for line in lines) == 1, text
    assert "\n" not in error.where and "\n" not in error.problem, f"a multi-line problem:\n{text}"
    assert error.problem.strip() and error.fix.strip(), text
    assert lines[-1] == f"  fix: {error.fix}"
    assert len(error.problem) < 400 and len(error.fix) < 400, text
    assert "Traceback" not in text


@settings(FUZZ, max_examples=N_INVALID)
@given(mutant=mutants())
def test_invalid_specs_fail_with_one_clear_error(mutant):
    """Exactly one SpecError at the mutated location; the same through YAML."""
    note(f"{mutant.category}: expected at {mutant.wheres}\n{mutant.spec!r}")
    count("invalid", mutant.spec)
    if mutant.known_bug:  # run, counted, not failed on: tests/corpus holds it as xfail
        try:
            plan_from_raw(mutant.spec)
        except Exception:  # noqa: BLE001
            pass
        COUNTS[f"known bug: {mutant.known_bug}"] = COUNTS.get(f"known bug: {mutant.known_bug}", 0) + 1
        return
    error = check_invalid(mutant.spec, mutant.wheres, mutant.shapes)
    COUNTS[mutant.category] = COUNTS.get(mutant.category, 0) + 1
    # the same spec written as YAML fails with the same message
    try:
        text = yaml.safe_dump(mutant.spec, allow_unicode=True, sort_keys=False)
    except yaml.YAMLError:
        return
    try:
        again = plan_from_raw(load_yaml_text(text))
    except SpecError as error2:
        if isinstance(mutant.spec, dict):
            assert error2.render() == error.render()
        else:  # the loader words a non-mapping document its own way
            assert error2.where == "spec" and error.where == "spec"
    else:
        raise AssertionError(f"accepted after a YAML round trip: {again.summary()}")


# ============================================================================ sequence models


@st.composite
def sequence_specs(draw) -> dict:
    """kind lm or seq: an embedding, transformer and recurrent blocks, a final norm, a pool."""
    kind = draw(st.sampled_from(["lm", "seq"]))
    width = draw(st.sampled_from([4, 6, 8, 12, 16]))
    seq: list[dict[str, Any]] = [{"type": "embedding", "features": width}]
    if draw(st.booleans()):
        seq[0]["position"] = draw(st.sampled_from(["learned", "none"]))
    if draw(st.booleans()):
        seq[0]["dropout"] = draw(st.sampled_from([0.0, 0.1]))
    for _ in range(draw(st.integers(0, 3))):
        if draw(st.booleans()):
            heads = draw(st.sampled_from([h for h in (1, 2, 3, 4) if width % h == 0]))
            block = {"type": "transformer", "heads": heads, "layers": draw(st.integers(1, 2))}
            if draw(st.booleans()):
                block["mlp_ratio"] = draw(st.integers(1, 4))
                block["activation"] = draw(st.sampled_from(["gelu", "relu", "silu"]))
                block["bias"] = draw(st.booleans())
            if kind == "seq" and draw(st.booleans()):
                block["causal"] = draw(st.booleans())
        else:
            block = {"type": draw(st.sampled_from(["gru", "lstm"])), "features": width}
            layers = draw(st.integers(1, 2))
            if layers > 1:
                block.update(layers=layers, dropout=draw(st.sampled_from([0.0, 0.1])))
            if kind == "seq" and draw(st.booleans()):
                block["bidirectional"] = True
                width = 2 * width
        seq.append(block)
        width = width if block["type"] == "transformer" else width
    if draw(st.booleans()):
        seq.append({"type": "norm", "bias": draw(st.booleans())})
    model: dict[str, Any] = {"kind": kind, "input": [draw(st.integers(1, 12))],
                             "vocab": draw(st.integers(2, 40)), "seq": seq}  # fmt: skip
    if kind == "lm":
        if seq[0]["features"] == width and draw(st.booleans()):
            model["tie_embeddings"] = True
    else:
        recurrent = any(b["type"] in ("gru", "lstm") for b in seq)
        modes = ["mean", "last"] if recurrent else ["mean", "last", "cls"]
        seq.append({"type": "pool", "mode": draw(st.sampled_from(modes))})
        hidden = [{"features": draw(st.integers(2, 9)), "activation": "relu"}] if draw(st.booleans()) else []
        model["mlp"] = [*hidden, {"features": draw(st.integers(2, 4))}]
    return {"model": model}


@settings(FUZZ, max_examples=40 * SCALE)
@given(spec=sequence_specs())
def test_valid_sequence_specs_render_build_and_match_torch(spec):
    """Transformers, GRUs and LSTMs: rendered, built by torch, the plan's shapes and counts."""
    note(yaml.safe_dump(spec, sort_keys=False))
    count("valid", spec)
    plan = check_valid(spec)
    assert plan.output_shape == ((spec["model"]["input"][0], spec["model"]["vocab"])
                                 if plan.kind == "lm" else (spec["model"]["mlp"][-1]["features"],))  # fmt: skip


SEQUENCE_MUTATIONS = [
    # (what, change, the location the error must name)
    ("heads that do not divide the width", lambda m: m["seq"].insert(1, {"type": "transformer", "heads": 7}),
     "model.seq[1].heads"),
    ("unknown key", lambda m: m["seq"][0].update(widht=3), "model.seq[0]"),
    ("unknown block type", lambda m: m["seq"][0].update(type="conv"), "model.seq[0].type"),
    ("no embedding first", lambda m: m["seq"].insert(0, {"type": "norm"}), "model.seq[0]"),
    ("vocab of one", lambda m: m.update(vocab=1), "model.vocab"),
    ("zero layers", lambda m: m["seq"].insert(1, {"type": "gru", "features": 4, "layers": 0}),
     "model.seq[1].layers"),
    ("a string for the context", lambda m: m.update(input=["256"]), "model.input[0]"),
]  # fmt: skip


@settings(FUZZ, max_examples=30 * SCALE)
@given(spec=sequence_specs(), which=st.integers(0, len(SEQUENCE_MUTATIONS) - 1))
def test_invalid_sequence_specs_fail_with_one_clear_error(spec, which):
    what, change, where = SEQUENCE_MUTATIONS[which]
    mutated = copy.deepcopy(spec)
    change(mutated["model"])
    note(f"{what}: expected at {where}\n{mutated!r}")
    count("invalid", mutated)
    check_invalid(mutated, (where,), shapes=False)
    COUNTS[f"sequence: {what}"] = COUNTS.get(f"sequence: {what}", 0) + 1


COUNTS: dict[str, int] = {}


# ============================================================================ the real CLI


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root with its content (None for directories)."""
    return {
        str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(root.rglob("*"))
    }


@settings(FUZZ, max_examples=N_CLI_INVALID)
@given(mutant=mutants())
def test_cli_rejects_invalid_specs_cleanly(mutant, tmp_path_factory):
    """`scaffold new` on an invalid spec: exit 2, the engine's exact message, no traceback,
    nothing on disk (no project, no staging directory, no template repository)."""
    assume(not mutant.known_bug)
    try:
        text = yaml.safe_dump(mutant.spec, allow_unicode=True, sort_keys=False)
    except yaml.YAMLError:
        return
    try:  # what `scaffold new proj` checks: the spec, with the directory's name as project
        raw = load_yaml_text(text, source="bad.yaml")
        plan_from_raw({**raw, "project": "proj"}, "proj")
    except SpecError as error:
        expected = error.render()
    else:
        return  # only the spec's own `project:` was wrong, and `new` replaces it
    count("cli-invalid", mutant.spec)
    work = tmp_path_factory.mktemp("cli-invalid")
    (work / "bad.yaml").write_text(text, encoding="utf-8")
    env = cli_env(work)
    before = tree(work)
    result = run_cli("new", "proj", "--spec", "bad.yaml", cwd=work, env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr == expected + "\n"
    assert result.stdout == ""
    assert tree(work) == before


def cli_env(work: Path) -> dict[str, str]:
    from conftest import GIT_IDENTITY

    return {
        **os.environ,
        **GIT_IDENTITY,
        "SCAFFOLD_HOME": str(work / "scaffold-home"),
        "COPIER_SETTINGS_PATH": str(work / "no-copier-settings.yml"),
    }


@settings(FUZZ, max_examples=N_CLI_VALID)
@given(spec=valid_specs())
def test_cli_generates_what_the_fast_renderer_checked(spec, tmp_path_factory):
    """`scaffold new` (Copier, black, git) writes exactly the files rendered above."""
    assume(not known_bug(spec))
    count("cli-valid", spec)
    work = tmp_path_factory.mktemp("cli-valid")
    (work / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    result = run_cli("new", "fuzzed", "--spec", "spec.yaml", cwd=work, env=cli_env(work), timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    project = work / "fuzzed"
    stored = {**spec, "project": "fuzzed"}
    expected = render_project(stored, "fuzzed", black=True)
    for name, text in expected.items():
        path = project / name
        assert path.is_file(), f"{name} is missing"
        assert path.read_text(encoding="utf-8") == text, f"{name} differs from the fast render"
    for path in project.rglob("*.py"):
        ast.parse(path.read_text(encoding="utf-8"))
    assert [p.name for p in work.iterdir() if p.name.endswith(".scaffold-tmp")] == []
    check_model_against_plan(plan_from_raw(stored, "fuzzed"), (project / "src" / "fuzzed" / "model.py").read_text())


# ============================================================================ corpus


def corpus_entries() -> list:
    params = []
    for path in sorted(CORPUS.glob("*.yaml")):
        header = dict(re.findall(r"^# (\w+): (.*)$", path.read_text(encoding="utf-8"), flags=re.M))
        marks = [pytest.mark.xfail(strict=True, reason=header["xfail"])] if "xfail" in header else []
        params.append(pytest.param(path, header, marks=marks, id=path.stem))
    return params


def test_corpus_is_documented():
    """Each corpus spec says what broke and what must happen now."""
    entries = list(CORPUS.glob("*.yaml"))
    assert entries
    for path in entries:
        text = path.read_text(encoding="utf-8")
        assert re.search(r"^# broke: .+", text, flags=re.M), f"{path.name}: no `# broke:` line"
        assert re.search(r"^# expect: (ok|error \S+)", text, flags=re.M), f"{path.name}: no `# expect:` line"


@pytest.mark.parametrize(("path", "header"), corpus_entries())
def test_corpus(path, header):
    """Every spec that ever broke something: it must now pass the same check as the fuzzer's."""
    raw_text = path.read_text(encoding="utf-8")
    expect = header["expect"].split()
    if expect[0] == "error" and expect[1] == "@file":  # a YAML-level error names the file
        expect[1] = path.name
    try:
        spec = load_yaml_text(raw_text, source=path.name)
    except SpecError as error:
        check_message(error)
        assert expect[0] == "error" and located(error.where, (expect[1],)), error.render()
        return
    except Exception as error:  # noqa: BLE001
        raise AssertionError(f"{type(error).__name__} while loading: {error}") from error
    if expect[0] == "ok":
        plan = check_valid(spec)
        # every train option that names a part must reach the generated trainer
        files = render_project(spec)
        train = files.get("src/fuzzed/train.py", "")
        for name in [*(spec.get("train") or {}).get("freeze", []), *((spec.get("train") or {}).get("param_groups") or {})]:
            assert re.search(rf"\b{name}\b", train), f"train.py never mentions part `{name}`"
        assert plan
    else:
        check_invalid(spec, (expect[1],), shapes="shapes" in header.get("check", ""))


def test_fuzz_figures():
    """How many distinct specs this run tried (printed for docs/robustness.md)."""
    if not {"valid", "invalid"} <= SEEN.keys():
        pytest.skip("run with the fuzz tests above")
    total = sum(len(v) for v in SEEN.values())
    print(f"\nfuzz: {total} distinct specs: " + ", ".join(f"{k} {len(v)}" for k, v in SEEN.items()))
    print("invalid by category: " + ", ".join(f"{k} {v}" for k, v in sorted(COUNTS.items())))
    assert total >= 500
    assert len(SEEN["invalid"]) >= 0.4 * total
