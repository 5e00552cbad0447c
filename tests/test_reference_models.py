"""Models compared with the field's references, not with themselves.

* examples/dcgan.yaml is the PyTorch DCGAN tutorial's pair of networks (Radford et al.,
  2016): the reference below is written from the paper's description, layer for layer.
* No decoder, generator or projection composes two affine layers (Linear, Conv,
  ConvTranspose) without a nonlinearity between them unless the user's own encoder does:
  every reference VAE applies the hidden activation after its sampler (h = relu(fc3(z))).
* A conv VAE trained with bf16 autocast (--amp) keeps a finite, decreasing loss: its loss
  works on logits.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from conftest import EXAMPLES, ROOT, load_source, render_template, run_cli
from hypothesis import given, settings
from test_fuzz import FUZZ, valid_specs

from scaffold.builders import plan_from_raw
from scaffold.plan import Block
from scaffold.spec import parse_spec

torch = pytest.importorskip("torch")
nn = torch.nn

NZ, NGF, NDF, NC = 100, 64, 64, 3


def dcgan_generator() -> nn.Sequential:
    """The DCGAN tutorial's generator: z (nz x 1 x 1) -> 64 x 64 x 3, BatchNorm and ReLU on
    every hidden layer, tanh at the output, no bias."""
    return nn.Sequential(
        nn.ConvTranspose2d(NZ, NGF * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(NGF * 8), nn.ReLU(True),
        nn.ConvTranspose2d(NGF * 8, NGF * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(NGF * 4), nn.ReLU(True),
        nn.ConvTranspose2d(NGF * 4, NGF * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(NGF * 2), nn.ReLU(True),
        nn.ConvTranspose2d(NGF * 2, NGF, 4, 2, 1, bias=False), nn.BatchNorm2d(NGF), nn.ReLU(True),
        nn.ConvTranspose2d(NGF, NC, 4, 2, 1, bias=False), nn.Tanh(),
    )  # fmt: skip


def dcgan_discriminator() -> nn.Sequential:
    """The DCGAN tutorial's discriminator: LeakyReLU(0.2), BatchNorm except on the input
    layer, a last 4 x 4 convolution to one value (its sigmoid lives in our loss: logits)."""
    return nn.Sequential(
        nn.Conv2d(NC, NDF, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(NDF, NDF * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(NDF * 2), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(NDF * 2, NDF * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(NDF * 4), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(NDF * 4, NDF * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(NDF * 8), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(NDF * 8, 1, 4, 1, 0, bias=False),
    )  # fmt: skip


def describe(module: nn.Module) -> list[tuple]:
    """The computing leaves in order, with what defines each (sizes, geometry, bias, slope)."""
    rows = []
    for leaf in module.modules():
        if list(leaf.children()) or isinstance(leaf, (nn.Flatten, nn.Unflatten, nn.Identity)):
            continue
        if isinstance(leaf, (nn.Conv2d, nn.ConvTranspose2d)):
            row = (type(leaf).__name__, leaf.in_channels, leaf.out_channels, leaf.kernel_size, leaf.stride,
                   leaf.padding, leaf.bias is not None)  # fmt: skip
        elif isinstance(leaf, nn.BatchNorm2d):
            row = ("BatchNorm2d", leaf.num_features)
        elif isinstance(leaf, nn.LeakyReLU):
            row = ("LeakyReLU", leaf.negative_slope)
        else:
            row = (type(leaf).__name__,)
        rows.append(row)
    return rows


def build_model(spec: dict, project: str):
    source = render_template("src/{{package_name}}/model.py.jinja", spec, project)
    module = load_source(source, f"{project}_model".replace("-", "_"))
    plan = plan_from_raw(spec, project)
    torch.manual_seed(0)
    return getattr(module, plan.class_name)(), plan


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_dcgan_example_is_the_tutorials_networks_layer_for_layer():
    spec = yaml.safe_load((ROOT / "examples" / "dcgan.yaml").read_text())
    model, plan = build_model(spec, "dcgan")
    generator, discriminator = dcgan_generator(), dcgan_discriminator()
    assert describe(model.generator) == describe(generator)
    assert describe(model.discriminator) == describe(discriminator)
    assert count(model.generator) == count(generator) == 3_576_704
    assert count(model.discriminator) == count(discriminator) == 2_765_568
    assert (
        plan.part("generator").params == 3_576_704
        and plan.part("discriminator").params == 2_765_568
    )
    z = torch.randn(2, NZ)
    assert tuple(model.generator(z).shape) == (2, NC, 64, 64)
    assert tuple(model.discriminator(torch.randn(2, NC, 64, 64)).shape) == (2, 1)


def test_the_dcgan_tutorial_trains_with_the_same_weights_as_ours():
    """Same weights, same inputs: our networks compute exactly the reference's outputs."""
    spec = yaml.safe_load((ROOT / "examples" / "dcgan.yaml").read_text())
    model, _ = build_model(spec, "dcgan")
    generator, discriminator = dcgan_generator(), dcgan_discriminator()
    ours_g = [p for p in model.generator.parameters()]
    for mine, theirs in zip(ours_g, generator.parameters(), strict=True):
        theirs.data.copy_(mine.data)
    for mine, theirs in zip(
        model.discriminator.parameters(), discriminator.parameters(), strict=True
    ):
        theirs.data.copy_(mine.data)
    model.eval(), generator.eval(), discriminator.eval()
    z = torch.randn(3, NZ)
    torch.testing.assert_close(model.generator(z), generator(z.view(3, NZ, 1, 1)))
    x = torch.rand(3, NC, 64, 64) * 2 - 1
    torch.testing.assert_close(model.discriminator(x), discriminator(x).view(3, 1))


# --------------------------------------------------------------------------- affine pairs

AFFINE = (
    "Linear",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
)
RESIDUAL = ("ResidualLinearBlock", "ResidualConvBlock", "ResidualUpBlock")


def decoder_path(plan) -> list[tuple[str, str]]:
    """(module path, "affine" | "nonlinear") along the path from the code (z) to the output."""
    names = {"vae": ("fc_decode", "decoder"), "autoencoder": ("decoder",), "gan": ("generator",)}[
        plan.kind
    ]
    steps = []
    for path, part, item in plan.items():
        if part.name not in names:
            continue
        if isinstance(item, Block) and item.cls in RESIDUAL:
            # conv1, norm1, act, conv2, norm2, then act(out + identity): ends non-linear if it has an act
            steps.append((path, "affine"))
            if any(layer.role == "act" for layer in item.layers):
                steps.append((path, "nonlinear"))
            continue
        layers = item.layers if isinstance(item, Block) else (item,)
        for layer in layers:
            if "." in layer.role:  # inside a member (the gate's own Linear): the member counts
                continue
            if layer.op == "Gate":  # x * sigmoid(fc(x))
                steps.append((f"{path}.gate", "nonlinear"))
            elif layer.op in AFFINE:
                steps.append(
                    (f"{path}.{layer.role}" if isinstance(item, Block) else path, "affine")
                )
            elif layer.role == "act":
                steps.append((f"{path}.act", "nonlinear"))
    return steps


def affine_pairs(plan) -> list[tuple[str, str]]:
    steps = decoder_path(plan)
    return [(a[0], b[0]) for a, b in zip(steps, steps[1:]) if a[1] == b[1] == "affine"]


def user_asked_for_linear_stacking(spec) -> bool:
    """The user's own encoder (or generator setting) has a hidden block without activation."""
    model = spec.model
    if model.kind == "gan":
        return model.generator.activation == "none"
    return any(block.activation == "none" for block in (*model.conv, *model.mlp))


def decoder_specs() -> list[tuple[str, dict]]:
    out = []
    for path in EXAMPLES:
        raw = yaml.safe_load(path.read_text())
        if raw["model"]["kind"] in ("autoencoder", "vae", "gan"):
            out.append((path.stem, raw))
    return out


@pytest.mark.parametrize("name,raw", decoder_specs(), ids=[n for n, _ in decoder_specs()])
def test_no_two_affine_layers_in_a_row_in_example_decoders(name, raw):
    plan = plan_from_raw(raw)
    assert decoder_path(plan), name
    if user_asked_for_linear_stacking(parse_spec(raw)):
        pytest.skip("the spec itself stacks linear layers")
    assert affine_pairs(plan) == []


WALKED = {"walked": 0, "stacked by the spec": 0}


@settings(FUZZ, max_examples=120)
@given(raw=valid_specs().filter(lambda raw: raw["model"]["kind"] in ("autoencoder", "vae", "gan")))
def test_no_two_affine_layers_in_a_row_in_fuzzed_decoders(raw):
    spec = parse_spec(raw)
    if user_asked_for_linear_stacking(spec):
        WALKED["stacked by the spec"] += 1
        return
    plan = plan_from_raw(raw)
    assert decoder_path(plan)
    assert affine_pairs(plan) == [], json.dumps(raw)
    WALKED["walked"] += 1


def test_an_mlp_vae_decoder_is_not_linear_in_z():
    """784 -> 400 -> z: the decoder is relu(fc_decode(z)) -> Linear -> (sigmoid in the loss),
    as in the PyTorch VAE example, not sigmoid(W2 (W1 z + b1) + b2)."""
    spec = {"model": {"kind": "vae", "input": [784], "mlp": [{"features": 400, "activation": "relu"}],
                      "latent": 20, "output_activation": "sigmoid"}}  # fmt: skip
    model, plan = build_model(spec, "mlp-vae")
    layers = [m for m in model.fc_decode.children() if not isinstance(m, nn.Identity)]
    assert [type(m).__name__ for m in layers] == ["Linear", "ReLU"]
    leaves = [m for m in model.decoder.modules() if not list(m.children())]
    assert [type(m).__name__ for m in leaves if not isinstance(m, nn.Identity)] == ["Linear"]
    assert affine_pairs(plan) == []


# --------------------------------------------------------------------------- bf16


def test_amp_conv_vae_loss_is_finite_and_decreasing(tmp_path, env):
    """bf16 autocast on the conv VAE: a sigmoid in bf16 rounds outputs near 1 to 1.0 and BCE
    saturates; on logits the loss stays finite and keeps going down."""
    project = tmp_path / "conv-vae"
    result = run_cli(
        "new", project, "--spec", ROOT / "examples" / "conv-vae.yaml", cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr
    out = tmp_path / "runs"
    run = subprocess.run(
        [sys.executable, "-m", "conv_vae.train", "--epochs", "3", "--amp", "--out", str(out),
         "--device", "cpu"],  # fmt: skip
        cwd=project,
        env={**env, "PYTHONPATH": str(project / "src")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    (metrics,) = out.rglob("metrics.jsonl")
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    losses = [row["train_loss"] if "train_loss" in row else row["loss"] for row in rows]
    assert len(losses) == 3, rows
    assert all(loss == loss and abs(loss) < float("inf") for loss in losses), losses
    assert losses[0] > losses[1] > losses[2], losses


# --------------------------------------------------------------------------- nanoGPT


class NanoGPTConfig:
    """nanoGPT's GPTConfig for config/train_shakespeare_char.py."""

    block_size, vocab_size, n_layer, n_head, n_embd, dropout, bias = 256, 65, 6, 6, 384, 0.2, False


class CausalSelfAttention(nn.Module):  # nanoGPT's model.py, written out here as the reference
    def __init__(self, config):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=None, dropout_p=self.dropout if self.training else 0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class NanoMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class NanoBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = NanoMLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([NanoBlock(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying

    def forward(self, idx):
        pos = torch.arange(0, idx.size(1), dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        return self.lm_head(x[:, [-1], :])  # inference: the last position only


def weighted_leaves(module: nn.Module) -> list[tuple]:
    return [
        (type(leaf).__name__, tuple(tuple(p.shape) for p in leaf.parameters(recurse=False)))
        for leaf in module.modules()
        if not list(leaf.children()) and list(leaf.parameters(recurse=False))
    ]


def test_shakespeare_char_is_nanogpts_gpt_layer_for_layer():
    spec = yaml.safe_load((ROOT / "examples" / "shakespeare-char.yaml").read_text())
    ours, plan = build_model(spec, "shakespeare-char")
    reference = GPT(NanoGPTConfig)
    assert count(ours) == count(reference) == plan.params == 10_745_088
    # every layer with parameters, in order, with its parameters' shapes (nanoGPT's
    # attn_dropout is unused on its flash path, where scaled_dot_product_attention drops)
    assert weighted_leaves(ours) == weighted_leaves(reference)
    assert {m.p for m in ours.modules() if isinstance(m, nn.Dropout)} == {0.2}
    assert all(m.causal for m in ours.modules() if hasattr(m, "causal"))
    # the same weights give the same next-token logits
    renamed = {
        name.replace("transformer.", "").replace("wte", "embed.wte").replace("wpe", "embed.wpe"): p
        for name, p in reference.state_dict().items()
    }
    ours.load_state_dict(renamed)
    ours.eval(), reference.eval()
    idx = torch.randint(0, 65, (2, 40))
    torch.testing.assert_close(ours(idx)[:, [-1], :], reference(idx))
