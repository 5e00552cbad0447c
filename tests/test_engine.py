"""The engine: contract examples, contract rejects, shapes against torch."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import EXAMPLES, ROOT, check_rendered_model, torch_check_plan

from scaffold.builders import plan_from_file, plan_from_raw
from scaffold.errors import SpecError
from scaffold.plan import Block, format_table

CONTRACT = {"tabular-mlp", "digits-cnn", "conv-vae", "odd-autoencoder"}


def raw(name: str) -> dict:
    return yaml.safe_load(next(p for p in EXAMPLES if p.stem == name).read_text())


def test_contract_examples_are_shipped():
    assert CONTRACT <= {p.stem for p in EXAMPLES}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_plans_match_torch(path):
    plan = plan_from_file(path)
    assert plan.project == path.stem
    assert not plan.warnings, [w.render() for w in plan.warnings]
    torch_check_plan(plan)
    check_rendered_model(plan, yaml.safe_load(path.read_text()), path.stem)


@pytest.mark.parametrize("name", ["conv-vae", "odd-autoencoder"])
def test_mirrored_decoder_reproduces_input(name):
    plan = plan_from_raw(raw(name))
    decoder = plan.part("decoder")
    assert decoder.out_shape == plan.input_shape
    assert plan.output_shape == plan.input_shape


def test_odd_autoencoder_layers():
    plan = plan_from_raw(raw("odd-autoencoder"))
    shapes = [block.out_shape for block in plan.part("encoder").items if isinstance(block, Block)]
    assert shapes == [(8, 17, 25), (16, 4, 6)]
    decoder = plan.part("decoder").items
    # the latent is projected back through the activation the encoder's output had
    assert [layer.code for layer in decoder[0].layers] == ["nn.Linear(32, 384)", "nn.ReLU()"]
    codes = [layer.code for block in decoder[2:] for layer in block.layers]
    # the pool is undone by an upsampling to the exact pre-pool size, then the strided convs
    assert codes[0] == "nn.Upsample(size=(9, 13))"
    assert codes[1] == "nn.ConvTranspose2d(16, 8, kernel_size=3, stride=2, padding=1)"
    assert codes[-1] == "nn.ConvTranspose2d(8, 3, kernel_size=5, stride=2)"


def test_conv_vae_decoder():
    plan = plan_from_raw(raw("conv-vae"))
    blocks = [b for b in plan.part("decoder").items if isinstance(b, Block)]
    first, last = [[layer.code for layer in b.layers] for b in blocks]
    # BatchNorm follows the transposed conv's *output* channels (and the conv has no bias);
    # the last block has no norm, and no sigmoid: forward returns logits for the loss
    assert first == [
        "nn.ConvTranspose2d(64, 32, kernel_size=3, stride=2, padding=1, output_padding=1, bias=False)",
        "nn.BatchNorm2d(32)",
        "nn.ReLU()",
    ]
    assert last == [
        "nn.ConvTranspose2d(32, 1, kernel_size=3, stride=2, padding=1, output_padding=1)"
    ]
    assert plan.logits_output
    assert plan.part("fc_mu").out_shape == (16,)
    # z goes back through the norm and activation of the encoder's last block
    (fc_decode,) = plan.part("fc_decode").items
    assert [layer.code for layer in fc_decode.layers] == [
        "nn.Linear(16, 3136, bias=False)",
        "nn.BatchNorm1d(3136)",
        "nn.ReLU()",
    ]


def test_defaults_fill_hidden_blocks_not_the_output_layer():
    plan = plan_from_raw(raw("digits-cnn"))
    (hidden,) = plan.part("trunk").items
    assert [layer.op for layer in hidden.layers] == ["Linear", "BatchNorm1d", "ReLU", "Dropout"]
    (head,) = plan.part("head").items
    assert head.code == "nn.Linear(64, 10)"  # a plain output layer is a plain Linear
    tab = plan_from_raw(raw("tabular-mlp"))
    assert all("bias=False" in b.layers[0].code for b in tab.part("trunk").items)
    assert tab.part("head").items[0].code == "nn.Linear(16, 3, bias=False)"


def test_encoder_output_activation_never_leaks_into_decoder():
    spec = {
        "model": {
            "kind": "autoencoder",
            "input": [1, 16, 16],
            "conv": [
                {"channels": 4, "stride": 2, "padding": 1, "activation": "relu", "norm": "batch"},
                {"channels": 8, "stride": 2, "padding": 1, "activation": "softmax"},
            ],
        }
    }
    plan = plan_from_raw(spec)
    ops = [layer.op for item in plan.part("decoder").items for layer in item.layers]
    assert "Softmax" not in ops
    # the hidden decoder block retraces the encoder map of the same shape: BatchNorm2d(4) then ReLU
    assert ops == ["ConvTranspose2d", "BatchNorm2d", "ReLU", "ConvTranspose2d"]
    torch_check_plan(plan)


def test_mlp_autoencoder_and_vae_mirror():
    spec = {
        "model": {
            "kind": "vae",
            "input": [1, 12, 12],
            "defaults": {"activation": "gelu", "norm": "layer"},
            "mlp": [{"features": 64}, {"features": 32}],
            "latent": 4,
            "output_activation": "sigmoid",
        }
    }
    plan = plan_from_raw(spec)
    assert plan.part("decoder").out_shape == (1, 12, 12)
    torch_check_plan(plan)


@pytest.mark.parametrize(
    "model, where, words",
    [
        (
            {
                "kind": "cnn",
                "input": [1, 8, 8],
                "defaults": {"kernel": 3, "stride": 2, "padding": 0},
                "conv": [{"channels": 8}, {"channels": 16}, {"channels": 32}],
                "mlp": [{"features": 10}],
            },
            "model.conv[2]",
            ["1 x 1", "smaller than kernel 3"],
        ),
        (
            {
                "kind": "cnn",
                "input": [1, 28, 28],
                "defaults": {
                    "kernel": 3,
                    "padding": 1,
                    "pool": {"kind": "max", "kernel": 2, "stride": 1},
                },
                "conv": [{"channels": 16}, {"channels": 16}, {"channels": 32}],
                "mlp": [{"in_features": 625, "features": 64}, {"features": 10}],
            },
            "model.mlp[0]",
            ["625", "32 x 25 x 25 = 20000", "in_features: 20000"],
        ),
        (
            {
                "kind": "cnn",
                "input": [1, 28, 28],
                "conv": [{"chanels": 16}],
                "mlp": [{"features": 10}],
            },
            "model.conv[0]",
            ["unknown key `chanels`", "did you mean `channels`"],
        ),
        (
            {
                "kind": "cnn",
                "input": [3, 8, 8],
                "conv": [{"channels": 4, "in_channels": 1}],
                "mlp": [{"features": 2}],
            },
            "model.conv[0]",
            ["in_channels 1", "3 channels"],
        ),
        (
            {
                "kind": "cnn",
                "input": [1, 4, 4],
                "conv": [{"channels": 4, "kernel": 3, "pool": 3}],
                "mlp": [{"features": 2}],
            },
            "model.conv[0].pool",
            ["2 x 2", "pooling window 3"],
        ),
        (
            {
                "kind": "cnn",
                "input": [1, 9, 9],
                "conv": [{"channels": 4, "pool": {"kernel": 2, "padding": 2}}],
                "mlp": [{"features": 2}],
            },
            "model.conv[0].pool.padding",
            ["half the kernel"],
        ),
        (
            {"kind": "mlp", "input": [4], "mlp": [{"features": 1}]},
            "model.mlp[0]",
            ["one output per class"],
        ),
        ({"kind": "vae", "input": [4], "mlp": [{"features": 2}]}, "model", ["latent"]),
        (
            {
                "kind": "cnn",
                "input": [1, 8, 8],
                "conv": [{"channels": 2, "kernel": [3, 3, 3]}],
                "mlp": [{"features": 2}],
            },
            "model.conv[0].kernel",
            ["3 values", "2 spatial"],
        ),
        (
            {"kind": "mlp", "input": [4], "mlp": [{"features": -3}]},
            "model.mlp[0].features",
            ["-3", "out of range"],
        ),
        (
            {"kind": "mlp", "input": [4], "mlp": [{"features": 2, "activation": "rleu"}]},
            "model.mlp[0].activation",
            ["did you mean `relu`"],
        ),
        (
            {"kind": "mlp", "input": [4], "mlp": [{"features": 2, "kernel": 3}]},
            "model.mlp[0]",
            ["unknown key `kernel`"],
        ),
    ],
)
def test_rejects_name_location_and_shapes(model, where, words):
    with pytest.raises(SpecError) as info:
        plan_from_raw({"model": model})
    error = info.value
    assert error.where == where, error.render()
    text = error.render()
    for word in words:
        assert word in text, text
    assert "fix:" in text


def test_rejected_shrinking_stack_really_fails_in_torch():
    torch = pytest.importorskip("torch")
    conv = torch.nn.Conv2d(16, 32, kernel_size=3, stride=2)
    with pytest.raises(RuntimeError):
        conv(torch.empty(1, 16, 1, 1))


def test_warnings_for_likely_mistakes():
    plan = plan_from_raw(
        {
            "model": {
                "kind": "mlp",
                "input": [4],
                "mlp": [{"features": 8}, {"features": 1, "activation": "softmax"}],
            },
            "train": {"task": "regression"},
        }
    )
    messages = [w.render() for w in plan.warnings]
    assert any("model.mlp[1]" in m and "single output" in m for m in messages)
    assert any("model.mlp[0]" in m and "no activation" in m for m in messages)
    plan = plan_from_raw(
        {"model": {"kind": "mlp", "input": [4], "mlp": [{"features": 3, "activation": "softmax"}]}}
    )
    assert any("raw logits" in w.message for w in plan.warnings)


def test_show_table_fits_100_columns():
    for path in EXAMPLES:
        table = format_table(plan_from_file(path))
        assert max(map(len, table.splitlines())) <= 100
        assert "total:" in table


def test_one_dimensional_and_three_dimensional_inputs():
    for shape in ([2, 51], [1, 7, 15, 9]):
        spec = {
            "model": {
                "kind": "autoencoder",
                "input": shape,
                "defaults": {
                    "kernel": 3,
                    "stride": 2,
                    "padding": 1,
                    "activation": "relu",
                    "norm": "batch",
                },
                "conv": [{"channels": 4}, {"channels": 8, "pool": 2}],
                "latent": 5,
            }
        }
        plan = plan_from_raw(spec)
        assert plan.output_shape == tuple(shape)
        torch_check_plan(plan)


def test_spec_is_not_mutated():
    spec = raw("digits-cnn")
    before = copy.deepcopy(spec)
    plan_from_raw(spec)
    assert spec == before


RESIDUAL_SPECS = {
    "residual-mlp": {
        "model": {
            "kind": "mlp",
            "input": [12],
            "defaults": {"norm": "batch", "activation": "relu"},
            "mlp": [
                {"features": 32},
                {"features": 32, "residual": True},
                {"features": 48, "residual": True, "scale": True},
                {"features": 48, "gate": True},
                {"features": 3},
            ],
        }
    },
    "residual-conv-ae": {
        "model": {
            "kind": "autoencoder",
            "input": [3, 21, 17],
            "defaults": {"kernel": 3, "norm": "batch", "activation": "relu"},
            "conv": [
                {"channels": 8, "residual": True},
                {"channels": 16, "stride": 2, "residual": True, "pool": 2},
                {"channels": 16, "residual": True, "kernel": 5},
            ],
            "latent": 6,
        }
    },
    "residual-vae-1d": {
        "model": {
            "kind": "vae",
            "input": [2, 45],
            "defaults": {"activation": "gelu", "norm": "batch"},
            "conv": [
                {"channels": 4, "stride": 2, "residual": True},
                {"channels": 8, "stride": 3, "residual": True},
            ],
            "mlp": [
                {"features": 16, "residual": True, "scale": True},
                {"features": 8, "gate": True},
            ],
            "latent": 3,
            "output_activation": "sigmoid",
        }
    },
}


@pytest.mark.parametrize("name", RESIDUAL_SPECS)
def test_residual_and_gated_blocks_match_torch_and_mirror(name):
    spec = RESIDUAL_SPECS[name]
    plan = plan_from_raw(spec)
    torch_check_plan(plan)
    check_rendered_model(plan, spec)
    assert (
        plan.output_shape == (3,) if plan.kind == "mlp" else plan.output_shape == plan.input_shape
    )
    classes = plan.block_classes()
    if plan.kind != "mlp":
        assert "ResidualUpBlock" in classes  # residual conv blocks are mirrored as residual blocks


def test_residual_projection_only_where_shapes_change():
    plan = plan_from_raw(RESIDUAL_SPECS["residual-conv-ae"])
    blocks = [b for b in plan.part("encoder").items if isinstance(b, Block)]
    shortcuts = [
        [layer.code for layer in b.layers if layer.role.startswith("shortcut.")] for b in blocks
    ]
    assert shortcuts == [
        ["nn.Conv2d(3, 8, kernel_size=1, bias=False)", "nn.BatchNorm2d(8)"],
        ["nn.Conv2d(8, 16, kernel_size=1, stride=2, bias=False)", "nn.BatchNorm2d(16)"],
        [],  # same channels, stride 1: identity
    ]


def test_residual_conv_block_with_wrong_padding_is_rejected():
    spec = {
        "model": {
            "kind": "cnn",
            "input": [1, 8, 8],
            "conv": [{"channels": 4, "residual": True, "padding": 0}],
            "mlp": [{"features": 2}],
        }
    }
    with pytest.raises(SpecError) as info:
        plan_from_raw(spec)
    assert info.value.where == "model.conv[0].padding" and "padding 1" in info.value.render()


def test_avg_pool_3d_needs_the_unpadded_volume_to_cover_the_kernel():
    # found by the property test: torch's AvgPool3d (unlike AvgPool2d or MaxPool3d) rejects
    # an input smaller than the kernel even when the padding would cover it
    spec = {
        "model": {
            "kind": "cnn",
            "input": [1, 2, 2, 2],
            "conv": [
                {
                    "channels": 1,
                    "kernel": 4,
                    "padding": 1,
                    "pool": {"kind": "avg", "kernel": 2, "stride": 1, "padding": 1},
                }
            ],
            "mlp": [{"features": 2}],
        }
    }
    with pytest.raises(SpecError) as info:
        plan_from_raw(spec)
    assert info.value.where == "model.conv[0].pool"
    torch = pytest.importorskip("torch")
    with pytest.raises(RuntimeError):
        torch.nn.AvgPool3d(2, 1, 1)(torch.empty(1, 1, 1, 1, 1))


MULTITASK = {
    "model": {
        "kind": "cnn",
        "input": [1, 20, 20],
        "defaults": {"kernel": 3, "padding": 1, "norm": "batch", "activation": "relu"},
        "conv": [{"channels": 4, "pool": 2}],
        "mlp": [{"features": 16}],
        "heads": {
            "digit": {"features": 10},
            "size": {"features": 1, "task": "regression", "weight": 0.5},
        },
    }
}
GAN = {
    "model": {
        "kind": "gan",
        "input": [3, 27, 19],
        "defaults": {
            "kernel": 4,
            "stride": 2,
            "padding": 1,
            "activation": "leaky_relu",
            "norm": "batch",
        },
        "conv": [{"channels": 8, "norm": "none"}, {"channels": 16}],
        "latent": 10,
    }
}


def test_multitask_heads_share_the_trunk():
    plan = plan_from_raw(MULTITASK)
    assert plan.task == "multitask"
    assert [h.name for h in plan.heads] == ["digit", "size"]
    heads = plan.part("heads")
    assert heads.is_dict and heads.keys == ("digit", "size")
    assert [b.out_shape for b in heads.items] == [(10,), (1,)]
    assert ("heads.digit", (10,)) in plan.module_shapes()
    check_rendered_model(plan, MULTITASK)


def test_gan_generator_is_the_discriminator_transposed():
    plan = plan_from_raw(GAN)
    assert plan.task == "adversarial" and plan.output_activation == "tanh"
    assert plan.part("generator").out_shape == (3, 27, 19)  # odd sizes come back exactly
    assert plan.part("discriminator").out_shape == (1,)
    ops = [
        layer.op
        for item in plan.part("generator").items
        for layer in (item.layers if isinstance(item, Block) else (item,))
    ]
    assert ops[-1] == "Tanh" and "ConvTranspose2d" in ops
    torch_check_plan(plan)
    check_rendered_model(plan, GAN)


@pytest.mark.parametrize(
    "model, where, words",
    [
        (
            {**MULTITASK["model"], "heads": {"a": {"features": 3, "weight": 0}}},
            "model.heads.a.weight",
            ["never trains"],
        ),
        (
            {**MULTITASK["model"], "heads": {"a": {"features": 1}}},
            "model.heads.a.features",
            ["one output per class"],
        ),
        (
            {**MULTITASK["model"], "heads": {"Bad-Name": {"features": 3}}},
            "model.heads",
            ["not a valid head name"],
        ),
        (
            {**MULTITASK["model"], "heads": {"a": {"features": 3, "tsk": "regression"}}},
            "model.heads.a",
            ["did you mean `task`"],
        ),
        (
            {**GAN["model"], "kind": "autoencoder", "heads": {"a": {"features": 3}}},
            "model.heads",
            ["mlp and cnn"],
        ),
        ({k: v for k, v in GAN["model"].items() if k != "latent"}, "model", ["latent"]),
    ],
)
def test_heads_and_gan_rejects(model, where, words):
    with pytest.raises(SpecError) as info:
        plan_from_raw({"model": model})
    assert info.value.where == where, info.value.render()
    for word in words:
        assert word in info.value.render()


def test_optimizer_name_survives_param_groups():
    spec = {
        "model": {
            "kind": "cnn",
            "input": [1, 8, 8],
            "conv": [{"channels": 2, "activation": "relu"}],
            "mlp": [{"features": 2}],
        },
        "train": {"optimizer": {"name": "sgd"}, "param_groups": {"features": {"lr": 0.01}}},
    }
    plan = plan_from_raw(spec)
    assert plan.train.optimizer == "sgd"
    assert plan.train.param_groups == (("features", 0.01),)


def test_a_thousand_layer_mlp_validates_and_matches_torch(tmp_path, env):
    """Depth is not a problem for the engine (its timing: benchmarks/validate_scaling.py)."""
    from conftest import run_cli

    blocks = ", ".join(["{features: 16, norm: batch, activation: relu}"] * 999 + ["{features: 3}"])
    (tmp_path / "deep.yaml").write_text(
        f"project: deep\nmodel: {{kind: mlp, input: [16], mlp: [{blocks}]}}\n"
    )
    result = run_cli("validate", "deep.yaml", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: deep: mlp, (B, 16) -> (B, 3), 2998 layers, ")
    plan = plan_from_file(tmp_path / "deep.yaml")
    torch_check_plan(plan)
    assert len(plan.part("trunk").items) == 999


@pytest.mark.parametrize("kind", ["lm", "seq"])
@pytest.mark.parametrize("block", ["transformer", "gru", "lstm"])
def test_interactive_answers_make_valid_sequence_models(kind, block):
    """The questions for kinds lm and seq compose a spec the engine accepts, in nanoGPT's
    layout for a transformer; copier.yml itself parses."""
    import yaml

    from scaffold.jinja_ext import scaffold_compose

    spec = scaffold_compose(kind, "64", "", "32", 3, 16, "classification", 2, 8, 1e-3, 50, block, 64, 2, 4)
    plan = plan_from_raw(spec)
    assert plan.kind == kind and plan.input_shape == (64,) and plan.vocab == 50
    assert plan.has_part("ln_f") == (block == "transformer")
    assert plan.output_shape == ((64, 50) if kind == "lm" else (3,))
    questions = yaml.safe_load((ROOT / "templates" / "copier.yml").read_text())
    assert {"vocab", "seq_block", "width", "layers", "heads"} <= questions.keys()
