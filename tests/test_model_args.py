"""The generated model is built from what a user changes, and starts from the references'
initialisation.

* Sizes from one place: each example's model, built with other sizes (classes, input
  channels, latent size; vocabulary, context, width and depth through the config of a
  sequence model), has the shapes those sizes ask for and trains a step with a gradient on
  every parameter. `Model()` with no arguments is the spec's model.
* Initial weights follow the references' rules: torchvision's ResNet (Kaiming normal,
  fan_out, for convolutions; norms at 1 and 0; `zero_init_residual`), the DCGAN tutorial's
  `weights_init` (conv N(0, 0.02), BatchNorm N(1, 0.02), biases 0) and nanoGPT's
  (N(0, 0.02), residual projections N(0, 0.02 / sqrt(2 * n_layer))).
* Global pooling on the model lets a residual CNN take other input sizes.
* Heads keep the spec's order in the plan, model.py, `show` and the picture.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest
import yaml
from conftest import EXAMPLES, ROOT, load_source, render_template

from scaffold.builders import plan_from_raw
from scaffold.draw import plan_data, render_svg

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


def load(name: str, spec: dict | None = None):
    """The rendered model.py of an example (or of `spec`) as a module, and its plan."""
    if spec is None:
        path = ROOT / "examples" / f"{name}.yaml"
        if not path.exists():
            path = ROOT / "tests" / "reference" / f"{name}.yaml"
        spec = yaml.safe_load(path.read_text())
    plan = plan_from_raw(spec, name)
    source = render_template("src/{{package_name}}/model.py.jinja", spec, name)
    return load_source(source, f"{name.replace('-', '_')}_model_args"), plan


def changed(plan) -> dict:
    """Other values for every size the model takes."""
    out = {}
    for arg in plan.sizes.args:
        if arg.name == "in_channels" or arg.name == "in_features":
            out[arg.name] = plan.input_shape[0] + 2
        elif arg.name in ("num_classes", "num_outputs"):
            out[arg.name] = plan.num_outputs + 3
        elif arg.name == "latent_dim":
            out[arg.name] = plan.latent + 5
        elif arg.name == "vocab_size":
            out[arg.name] = plan.vocab + 7
        elif arg.name == "context":
            out[arg.name] = max(4, plan.input_shape[0] // 2)
        elif arg.name == "n_layer":
            out[arg.name] = 1
    names = plan.sizes.names()
    if "n_embd" in names:  # a width the heads still divide
        heads = next((int(a.default) for a in plan.sizes.args if a.name == "n_head"), 1)
        out["n_embd"] = heads * 6
    return out


def build(module, plan, sizes: dict):
    cls = getattr(module, plan.class_name)
    if plan.kind in ("lm", "seq"):
        config = getattr(module, f"{plan.class_name}Config")
        return cls(config(**sizes))
    return cls(**sizes)


def one_step(model, plan, sizes: dict) -> None:
    """Forward a tiny batch with the changed sizes, check the output shapes, backward, and
    check that every parameter got a gradient; then take an optimizer step."""
    torch.manual_seed(0)
    model.train()
    batch = 4
    channels = sizes.get("in_channels", sizes.get("in_features", plan.input_shape[0]))
    shape = (channels, *plan.input_shape[1:])
    if plan.kind in ("lm", "seq"):
        context = sizes.get("context", plan.input_shape[0])
        vocab = sizes.get("vocab_size", plan.vocab)
        length = context
        idx = torch.randint(0, vocab, (batch, length))
        out = model(idx)
        if plan.kind == "lm":
            assert tuple(out.shape) == (batch, length, vocab)
            loss = F.cross_entropy(out[:, :-1].reshape(-1, vocab), idx[:, 1:].reshape(-1))
        else:
            outputs = sizes.get("num_classes", sizes.get("num_outputs", plan.num_outputs))
            assert tuple(out.shape) == (batch, outputs)
            loss = out.square().mean()
    elif plan.kind == "gan":
        latent = sizes.get("latent_dim", plan.latent)
        fake = model(torch.randn(batch, latent))
        assert tuple(fake.shape) == (batch, *shape)
        assert tuple(model.sample(2).shape) == (2, *shape)
        real = torch.randn(batch, *shape)
        loss = model.discriminate(real).mean() + model.discriminate(fake).mean()
    else:
        x = torch.rand(batch, *shape)
        out = model(x)
        if plan.kind == "vae":
            recon, mu, logvar = out
            latent = sizes.get("latent_dim", plan.latent)
            assert tuple(recon.shape) == (batch, *shape)
            assert tuple(mu.shape) == tuple(logvar.shape) == (batch, latent)
            loss = recon.square().mean() + mu.square().mean() + logvar.exp().mean()
        elif plan.kind == "autoencoder":
            assert tuple(out.shape) == (batch, *shape)
            loss = out.square().mean()
        elif plan.heads:
            assert list(out) == [head.name for head in plan.heads]
            for head in plan.heads:
                assert tuple(out[head.name].shape) == (batch, head.features)
            loss = sum(o.square().mean() for o in out.values())
        else:
            outputs = sizes.get("num_classes", sizes.get("num_outputs", plan.num_outputs))
            assert tuple(out.shape) == (batch, outputs)
            loss = out.square().mean()
    assert torch.isfinite(loss)
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    torch.optim.SGD(model.parameters(), lr=0.01).step()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_each_example_builds_and_trains_with_other_sizes(path):
    module, plan = load(path.stem)
    with torch.device("meta"):
        default = getattr(module, plan.class_name)()
    assert sum(p.numel() for p in default.parameters()) == plan.params  # Model(): the spec's
    sizes = changed(plan)
    assert sizes, f"{path.stem}: the model takes no size"
    model = build(module, plan, sizes)
    if any(name in sizes for name in ("num_classes", "n_embd", "latent_dim", "vocab_size")):
        assert sum(p.numel() for p in model.parameters()) != plan.params
    one_step(model, plan, sizes)


def code_lines(source: str, start: str, end: str) -> list[str]:
    """The code (comments and docstrings left out) of source between two markers."""
    body = source[source.index(start) : source.index(end)]
    lines = [line.split("#")[0] for line in body.splitlines()]
    return [line for line in lines if line.strip() and not line.strip().startswith('"""')]


def test_sizes_are_written_once_in_model_py():
    """No literal repeats a constant: the output layer reads num_classes, the LM's layers
    read the config (nanoGPT's GPT(config)), the config's defaults are the constants."""
    source = render_template(
        "src/{{package_name}}/model.py.jinja",
        yaml.safe_load((ROOT / "examples" / "digits-cnn.yaml").read_text()),
        "digits-cnn",
    )
    assert "nn.Linear(64, num_classes)" in source and "nn.Linear(64, 10)" not in source
    assert "in_channels: int = INPUT_SHAPE[0], num_classes: int = NUM_CLASSES" in source
    source = render_template(
        "src/{{package_name}}/model.py.jinja",
        yaml.safe_load((ROOT / "examples" / "shakespeare-char.yaml").read_text()),
        "shakespeare-char",
    )
    init = code_lines(source, "    def __init__(self, config", "    def _init_weights")
    layers = [line for line in init if "init." not in line]  # the layers, not their init
    assert len(layers) > 8
    for line in layers:  # every size comes from the config: no number at all
        assert not re.search(r"\d", line), line
    assert any("math.sqrt(2 * config.n_layer)" in line for line in init)
    assert "vocab_size: int = VOCAB_SIZE" in source and "context: int = CONTEXT" in source


# --------------------------------------------------------------------------- initialisation


def test_resnet_cnn_starts_from_torchvisions_initialisation():
    module, plan = load("resnet-cnn")
    torch.manual_seed(0)
    model = getattr(module, plan.class_name)()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 9  # stem, 3 x 2 in the blocks, 2 projections
    for conv in convs:  # kaiming_normal_(mode="fan_out", nonlinearity="relu")
        fan_out = conv.out_channels * math.prod(conv.kernel_size)
        expected = math.sqrt(2.0 / fan_out)
        assert abs(conv.weight.std().item() / expected - 1) < 0.2, conv
        assert abs(conv.weight.mean().item()) < 0.2 * expected
    for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias))
    blocks = [m for m in model.modules() if type(m).__name__ == "ResidualConvBlock"]
    assert all(torch.equal(b.norm2.weight, torch.ones_like(b.norm2.weight)) for b in blocks)

    zeroed = getattr(module, plan.class_name)(zero_init_residual=True)
    blocks = [m for m in zeroed.modules() if type(m).__name__ == "ResidualConvBlock"]
    assert len(blocks) == 3
    for block in blocks:  # the last norm of each residual branch, and only that one
        assert torch.count_nonzero(block.norm2.weight) == 0
        assert torch.equal(block.norm1.weight, torch.ones_like(block.norm1.weight))
    # a zeroed branch makes an identity block pass its input through its activation
    block = blocks[0]
    block.eval()
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(block(x), torch.relu(x))


def test_resnet_cnn_takes_other_input_sizes():
    module, plan = load("resnet-cnn")
    assert plan.has_part("avgpool")
    model = getattr(module, plan.class_name)().eval()
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d)
    for size in (32, 20, 64):
        assert tuple(model(torch.randn(2, 3, size, size)).shape) == (2, 10)


@pytest.mark.parametrize("name", ["dcgan", "gan"])
def test_gans_start_from_the_dcgan_tutorials_initialisation(name):
    module, plan = load(name)
    torch.manual_seed(0)
    model = getattr(module, plan.class_name)()
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    assert convs and norms
    for conv in convs:  # N(0, 0.02), biases 0
        if conv.weight.numel() >= 1000:
            assert abs(conv.weight.std().item() / 0.02 - 1) < 0.1, conv
            assert abs(conv.weight.mean().item()) < 0.002
        if conv.bias is not None:
            assert torch.count_nonzero(conv.bias) == 0
    weights = torch.cat([norm.weight.detach() for norm in norms])  # N(1, 0.02), biases 0
    assert abs(weights.mean().item() - 1) < 0.005
    assert abs(weights.std().item() / 0.02 - 1) < 0.15
    assert all(torch.count_nonzero(norm.bias) == 0 for norm in norms)


def test_shakespeare_char_starts_from_nanogpts_initialisation():
    module, plan = load("shakespeare-char")
    config = module.ShakespeareCharConfig
    assert dataclasses.is_dataclass(config)
    assert (config().vocab_size, config().context) == (module.VOCAB_SIZE, module.CONTEXT)
    for n_layer in (6, 2):
        torch.manual_seed(0)
        model = module.ShakespeareChar(config(n_layer=n_layer))
        assert len(model.h) == n_layer
        for name, p in model.named_parameters():
            if p.dim() < 2:  # LayerNorm weights (no biases: bias=False)
                assert torch.equal(p, torch.ones_like(p)), name
                continue
            std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") else 0.02
            assert abs(p.std().item() / std - 1) < 0.05, (name, p.std().item(), std)
            assert abs(p.mean().item()) < 0.05 * std, name


def test_generate_runs_the_output_layer_on_the_last_position_only():
    module, _ = load("shakespeare-char")
    config = module.ShakespeareCharConfig(context=16, n_layer=1, n_head=2, n_embd=16)
    torch.manual_seed(0)
    model = module.ShakespeareChar(config).eval()
    seen = []
    model.lm_head.register_forward_hook(lambda m, args, out: seen.append(tuple(out.shape)))
    idx = torch.randint(0, config.vocab_size, (2, 20))
    out = model.generate(idx, max_new_tokens=3)
    assert tuple(out.shape) == (2, 23)
    assert seen == [(2, config.vocab_size)] * 3
    seen.clear()
    assert tuple(model(idx[:, :16]).shape) == (2, 16, config.vocab_size)  # training: every position
    assert seen == [(2, 16, config.vocab_size)]


# --------------------------------------------------------------------------- one order


def test_heads_keep_the_specs_order_everywhere(tmp_path):
    spec = yaml.safe_load((ROOT / "examples" / "multitask-cnn.yaml").read_text())
    heads = spec["model"]["heads"]
    spec["model"]["heads"] = {"stroke": heads["stroke"], "digit": heads["digit"]}
    order = ["stroke", "digit"]
    module, plan = load("multitask-cnn", spec)
    assert [head.name for head in plan.heads] == order
    assert list(module.HEADS) == order
    model = module.MultitaskCnn().eval()
    assert list(model.heads) == order
    assert list(model(torch.randn(2, 1, 28, 28))) == order
    svg = render_svg(plan)
    assert svg.index("stroke") < svg.index("digit")
    data = json.loads(json.dumps(plan_data(plan)))  # `scaffold show --format json`
    assert [head["name"] for head in data["heads"]] == order
    keys = [
        item["path"] for part in data["parts"] if part["name"] == "heads" for item in part["items"]
    ]
    assert keys == [f"heads.{name}" for name in order]


# --------------------------------------------------------------------------- torchvision


@pytest.fixture
def torchvision(monkeypatch):
    """torchvision's models are plain Python; its compiled ops do not register against the
    CPU torch of this environment, so their fake-kernel registration is skipped."""
    monkeypatch.setattr(torch.library, "register_fake", lambda *args, **kwargs: lambda fn: fn)
    return pytest.importorskip("torchvision")


def test_resnet18_spec_is_torchvisions_resnet18(torchvision):
    module, plan = load("resnet18")  # tests/reference/resnet18.yaml
    one_step(module.Resnet18(num_classes=7), plan, {"num_classes": 7})
    reference = torchvision.models.resnet18()
    assert plan.params == 11_689_512
    with torch.device("meta"):  # shapes first, at no cost
        ours = module.Resnet18()
    assert [tuple(p.shape) for p in ours.parameters()] == [
        tuple(p.shape) for p in reference.parameters()
    ]
    torch.manual_seed(0)
    ours = module.Resnet18()
    theirs = reference.state_dict()
    mine = ours.state_dict()
    assert len(mine) == len(theirs)  # parameters and BatchNorm buffers, in the same order
    ours.load_state_dict(dict(zip(mine, theirs.values(), strict=True)))
    ours.eval(), reference.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))
    # and torchvision's initialization: both fresh models have the same weight statistics
    torch.manual_seed(1)
    fresh = module.Resnet18()
    for (name, a), b in zip(fresh.named_parameters(), reference.parameters(), strict=True):
        if a.dim() == 4:  # Kaiming normal, fan_out
            assert abs(a.std().item() / b.std().item() - 1) < 0.15, name
        elif name.startswith("features") and a.dim() == 1:  # norms at 1 and 0
            assert torch.equal(a, b), name
