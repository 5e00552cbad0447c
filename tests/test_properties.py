"""Property test: for random specs, torch's shapes equal the static plan.

Accepted specs: every layer built with torch on the meta device has the shape
and parameter count the plan says, the rendered model.py runs forward with the
same shapes, and mirrored decoders (and GAN generators) return the input
shape. Rejected conv stacks: torch really fails on the same layers. Every kind
is drawn: mlp (plain, residual, gated, scaled, multi-task heads), cnn (also
with heads and global pooling), autoencoder, vae and gan, over 1-D, 2-D and 3-D inputs, and the sequence
kinds lm and seq (transformer and recurrent blocks).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scaffold.builders import plan_from_raw
from scaffold.errors import SpecError

from conftest import check_rendered_model, torch_check_plan
from test_fuzz import sequence_specs

torch = pytest.importorskip("torch")

ACTS = ["relu", "gelu", "tanh", "none", "leaky_relu", "silu"]


@st.composite
def conv_specs(draw):
    ndim = draw(st.integers(1, 3))
    sizes = draw(st.lists(st.integers(1, 40 if ndim < 3 else 13), min_size=ndim, max_size=ndim))
    channels = draw(st.integers(1, 4))
    blocks = []
    for _ in range(draw(st.integers(1, 3))):
        block = {
            "channels": draw(st.integers(1, 6)),
            "kernel": draw(st.integers(1, 5)),
            "stride": draw(st.integers(1, 3)),
            "padding": draw(st.integers(0, 2)),
            "dilation": draw(st.integers(1, 2)),
            "activation": draw(st.sampled_from(ACTS)),
            "norm": draw(st.sampled_from(["none", "batch"])),
        }
        if block["kernel"] % 2 and draw(st.integers(0, 3)) == 0:
            block["residual"] = True  # padding becomes "same"
            del block["padding"]
        if draw(st.booleans()):
            k = draw(st.integers(1, 3))
            block["pool"] = {"kind": draw(st.sampled_from(["max", "avg"])), "kernel": k,
                             "stride": draw(st.integers(1, 3)), "padding": draw(st.integers(0, k // 2))}
        blocks.append(block)
    kind = draw(st.sampled_from(["cnn", "autoencoder", "vae", "gan"]))
    model = {"kind": kind, "input": [channels, *sizes], "conv": blocks}
    if kind == "cnn":
        if draw(st.integers(0, 3)) == 0:  # torchvision's avgpool: one value per channel
            model["global_pool"] = draw(st.sampled_from(["avg", "max"]))
        if draw(st.integers(0, 3)) == 0:
            model["mlp"] = [{"features": draw(st.integers(2, 9)), "activation": "relu"}]
            model["heads"] = draw(heads())
        else:
            model["mlp"] = [{"features": draw(st.integers(2, 5))}]
    else:
        if kind in ("vae", "gan") or draw(st.booleans()):
            model["latent"] = draw(st.integers(1, 8))
        if kind != "gan" and draw(st.booleans()):
            model["mlp"] = [{"features": draw(st.integers(1, 9)), "activation": "relu"}]
        model["output_activation"] = draw(st.sampled_from(["none", "sigmoid", "tanh"]))
    return {"model": model}


@st.composite
def heads(draw):
    """Multi-task heads: one to three named outputs, each with a task and a weight."""
    names = draw(st.lists(st.sampled_from(["digit", "age", "stroke", "q"]), min_size=1, max_size=3, unique=True))
    drawn = {}
    for name in names:
        task = draw(st.sampled_from(["classification", "regression"]))
        features = draw(st.integers(2 if task == "classification" else 1, 6))  # a classifier: 2 classes or more
        drawn[name] = {"features": features, "task": task, "weight": draw(st.sampled_from([0.5, 1.0, 2.0]))}
    return drawn


@st.composite
def mlp_specs(draw):
    """mlp kind: plain, residual (identity or projection skips), gated and scaled blocks,
    over a 1-D or a multi-dimensional (flattened) input; sometimes with heads."""
    shape = draw(st.lists(st.integers(1, 12), min_size=1, max_size=3))
    blocks = []
    for _ in range(draw(st.integers(1, 4))):
        block = {"features": draw(st.integers(1, 24)), "activation": draw(st.sampled_from(ACTS)),
                 "norm": draw(st.sampled_from(["none", "batch", "layer"]))}
        style = draw(st.sampled_from(["plain", "plain", "residual", "gate"]))
        if style != "plain":
            block[style] = True
        if draw(st.integers(0, 3)) == 0:
            block["scale"] = True
        blocks.append(block)
    model = {"kind": "mlp", "input": shape, "mlp": blocks}
    if draw(st.integers(0, 2)) == 0:
        model["heads"] = draw(heads())
    else:
        blocks.append({"features": draw(st.integers(2, 5))})  # the output layer of a classifier
    return {"model": model}


def torch_encoder_fails(model) -> bool:
    """Run the conv stack in torch; True if torch rejects it."""
    ndim = len(model["input"]) - 1
    x = torch.empty((1, *model["input"]), device="meta")
    conv = [torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d][ndim - 1]
    pools = {"max": [torch.nn.MaxPool1d, torch.nn.MaxPool2d, torch.nn.MaxPool3d],
             "avg": [torch.nn.AvgPool1d, torch.nn.AvgPool2d, torch.nn.AvgPool3d]}
    try:
        for b in model["conv"]:
            padding = b["dilation"] * (b["kernel"] - 1) // 2 if b.get("residual") else b["padding"]
            layer = conv(x.shape[1], b["channels"], b["kernel"], b["stride"], padding, b["dilation"])
            x = layer.to("meta")(x)
            if "pool" in b:
                p = b["pool"]
                x = pools[p["kind"]][ndim - 1](p["kernel"], p["stride"], p["padding"])(x)
            if min(x.shape) <= 0:
                return True
    except RuntimeError:
        return True
    return False


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(conv_specs(), mlp_specs()))
def test_plan_equals_torch(spec):
    try:
        plan = plan_from_raw(spec)
    except SpecError as error:
        if "conv" not in spec["model"]:
            raise  # every drawn mlp spec is valid
        if error.where.startswith("model.conv["):
            assert torch_encoder_fails(spec["model"]), error.render()
        return
    if "conv" in spec["model"]:
        assert not torch_encoder_fails(spec["model"])
    torch_check_plan(plan)
    check_rendered_model(plan, spec)
    if spec["model"]["kind"] in ("autoencoder", "vae", "gan"):
        assert plan.output_shape == tuple(spec["model"]["input"])
    if "heads" in spec["model"]:
        assert [(h.name, h.features) for h in plan.heads] == [(k, v["features"]) for k, v in spec["model"]["heads"].items()]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence_specs())
def test_sequence_plan_equals_torch(spec):
    """Embeddings, transformer blocks, GRUs and LSTMs, final norms and poolings: every layer's
    shape and parameter count, and the rendered model's forward pass, equal the plan."""
    plan = plan_from_raw(spec)
    torch_check_plan(plan)
    check_rendered_model(plan, spec)
    (context,) = spec["model"]["input"]
    if plan.kind == "lm":
        assert plan.output_shape == (context, spec["model"]["vocab"])
