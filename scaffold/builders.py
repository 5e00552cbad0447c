"""Builders: one per model kind, each turning a checked spec into a plan.

A builder walks the blocks in order, inferring each block's input from the
previous block's output, checking every shape with torch's formulas and
raising a :class:`SpecError` at the first block that cannot work. Autoencoders
and VAEs get their decoder by transposing the encoder (:meth:`Builder.mirror`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from scaffold import layers as L
from scaffold.errors import SpecError, SpecWarning, did_you_mean
from scaffold.layers import Layer, Shape, fmt_dims
from scaffold.plan import Block, Item, Part, Plan
from scaffold.spec import ConvSpec, LinearSpec, Spec, check_project_name, load_spec_file, parse_spec

LARGE_MODEL = 50_000_000  # parameters; above this, warn about memory and test time
NORMALIZING = ("softmax", "log_softmax")


@dataclass
class Encoder:
    """What the encoder stack produced, kept so the decoder can retrace it."""

    items: list[Item] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)  # conv then linear blocks, in order
    specs: list[ConvSpec | LinearSpec] = field(default_factory=list)
    pre_pool: dict[int, Shape] = field(default_factory=dict)  # block index -> shape before pooling
    flat_from: Shape | None = None  # the shape that Flatten turned into a vector

    @property
    def out_shape(self) -> Shape:
        return self.items[-1].out_shape


class Builder:
    """Common machinery; subclasses implement :meth:`build` for one kind."""

    def __init__(self, spec: Spec, project: str | None = None) -> None:
        self.spec = spec
        self.model = spec.model
        self.project = check_project_name(project) if project else (spec.project or "model")
        self.ndim = len(self.model.input) - 1
        self.warnings: list[SpecWarning] = []
        self.trail: list[str] = [f"input {fmt_dims(self.model.input)}"]

    # ------------------------------------------------------------------ blocks

    def conv_block(self, c: ConvSpec, in_shape: Shape, source: str) -> tuple[Block, Shape]:
        """Conv -> norm -> activation -> pool -> dropout; returns the block and its pre-pool shape."""
        if c.in_channels is not None and c.in_channels != in_shape[0]:
            raise SpecError(
                c.where,
                f"declares in_channels {c.in_channels} but {source} has {in_shape[0]} channels "
                f"(shape {fmt_dims(in_shape)})",
                f"set `in_channels: {in_shape[0]}`, or remove `in_channels` (it is inferred)",
                self._trail_lines(),
            )
        for n, k, s, p, d in zip(in_shape[1:], c.kernel, c.stride, c.padding, c.dilation):
            reach = d * (k - 1) + 1
            if n + 2 * p < reach:
                size = f"{fmt_dims(in_shape[1:])}" + (f" ({n} + 2*{p} = {n + 2 * p} with padding)" if p else "")
                what = f"kernel {k}" if d == 1 else f"dilated kernel {reach} (kernel {k}, dilation {d})"
                raise SpecError(
                    c.where,
                    f"its input is {size}, smaller than {what}",
                    "remove this block, or make the feature map larger earlier: smaller "
                    "kernels or strides, pooling removed, or more padding",
                    self._trail_lines() + [f"arithmetic: {L.conv_arithmetic(n, k, s, p, d)}"],
                )
        first = L.conv(self.ndim, in_shape, c.channels, c.kernel, c.stride, c.padding, c.dilation, c.bias)
        shape = first.out_shape
        pre_pool = shape
        if c.residual:
            layers = self._residual_conv_layers(c, in_shape, first)
        else:
            layers = [first]
            if c.norm != "none":
                layers.append(L.norm(c.norm, shape))
            if c.activation != "none":
                layers.append(L.activation(c.activation, shape))
        if c.pool is not None:
            for n, k, s, p in zip(shape[1:], c.pool.kernel, c.pool.stride, c.pool.padding):
                if c.pool.kind == "avg" and self.ndim == 3 and n < k:  # torch's AvgPool3d ignores padding here
                    raise SpecError(
                        f"{c.where}.pool",
                        f"after the conv the volume is {fmt_dims(shape[1:])}; AvgPool3d needs every side "
                        f"at least its kernel {k} before padding",
                        "use a smaller pool, max pooling, or remove the pool from this block",
                        self._trail_lines() + [f"conv: {fmt_dims(in_shape)} -> {fmt_dims(shape)}"],
                    )
                if n + 2 * p < k:
                    raise SpecError(
                        f"{c.where}.pool",
                        f"after the conv the feature map is {fmt_dims(shape[1:])}, smaller than the pooling window {k}",
                        "use a smaller pool, or remove the pool from this block",
                        self._trail_lines()
                        + [f"conv: {fmt_dims(in_shape)} -> {fmt_dims(shape)}", f"pool arithmetic: {L.conv_arithmetic(n, k, s, p, 1)}"],
                    )
            layers.append(L.pool(self.ndim, shape, c.pool.kind, c.pool.kernel, c.pool.stride, c.pool.padding))
            shape = layers[-1].out_shape
        if c.dropout:
            layers.append(L.dropout(c.dropout, shape))
        if c.activation in NORMALIZING and shape[0] == 1:
            self.warn(c.where, f"{c.activation} over a single channel always outputs {'1' if c.activation == 'softmax' else '0'}")
        block = Block("ResidualConvBlock" if c.residual else "ConvBlock", c.where, in_shape, tuple(layers))
        self.trail.append(f"{c.where} -> {fmt_dims(block.out_shape)}")
        return block, pre_pool

    def _residual_conv_layers(self, c: ConvSpec, in_shape: Shape, first: Layer) -> list[Layer]:
        """conv1 -> norm1 -> act -> conv2 -> norm2, plus a shortcut: torchvision's BasicBlock."""
        shape = first.out_shape
        ones = (1,) * self.ndim
        layers = [replace(first, role="conv1")]
        if c.norm != "none":
            layers.append(replace(L.norm(c.norm, shape), role="norm1"))
        if c.activation != "none":
            layers.append(L.activation(c.activation, shape))
        conv2 = L.conv(self.ndim, shape, c.channels, c.kernel, ones, c.padding, c.dilation, c.bias)
        layers.append(replace(conv2, role="conv2"))
        if c.norm != "none":
            layers.append(replace(L.norm(c.norm, shape), role="norm2"))
        if shape != in_shape:  # channels or size change: project the identity
            layers.append(L.conv_shortcut(self.ndim, in_shape, shape, c.stride, c.norm != "none"))
        return layers

    def linear_block(self, b: LinearSpec, in_shape: Shape, source: str) -> Block:
        """Linear -> norm -> activation -> dropout."""
        if b.in_features is not None and b.in_features != in_shape[0]:
            raise SpecError(
                b.where,
                f"declares {b.in_features} input features but {source}",
                f"set `in_features: {in_shape[0]}`, or remove `in_features` (it is inferred)",
                self._trail_lines(),
            )
        layers = self._linear_layers(in_shape, b.features, b, b.norm, b.activation, b.dropout)
        if b.activation in NORMALIZING and b.features == 1:
            self.warn(
                b.where,
                f"{b.activation} over a single output always returns {'1' if b.activation == 'softmax' else '0'}; "
                "for one binary output use `activation: sigmoid` (or none, with BCEWithLogitsLoss)",
            )
        self.trail.append(f"{b.where} -> {b.features}")
        return Block(_linear_class(b), b.where, in_shape, tuple(layers))

    def _linear_layers(
        self, in_shape: Shape, features: int, b: LinearSpec, norm: str, act: str, drop: float
    ) -> list[Layer]:
        """The layers of a plain, gated or residual linear block, in forward order."""
        shape: Shape = (features,)
        if b.residual:
            layers = [replace(L.linear(in_shape[0], features, b.bias), role="fc1")]
            if norm != "none":
                layers.append(replace(L.norm(norm, shape), role="norm1"))
            if act != "none":
                layers.append(L.activation(act, shape))
            layers.append(replace(L.linear(features, features, b.bias), role="fc2"))
            if norm != "none":
                layers.append(replace(L.norm(norm, shape), role="norm2"))
            if b.scale:
                layers.append(L.scale(shape))
            if in_shape != shape:
                layers.append(L.linear_shortcut(in_shape[0], features))
        else:
            layers = [L.linear(in_shape[0], features, b.bias)]
            if b.gate:
                layers.append(replace(L.linear(features, features, True), role="gate"))
            if norm != "none":
                layers.append(L.norm(norm, shape))
            if b.scale:
                layers.append(L.scale(shape))
            if act != "none":
                layers.append(L.activation(act, shape))
        if drop:
            layers.append(L.dropout(drop, shape))
        return layers

    # ------------------------------------------------------------------ stacks

    def encoder(self) -> Encoder:
        """Conv blocks, Flatten where needed, then linear blocks."""
        enc = Encoder()
        shape: Shape = self.model.input
        source = "the input"
        for i, c in enumerate(self.model.conv):
            block, pre_pool = self.conv_block(c, shape, source)
            enc.items.append(block)
            enc.blocks.append(block)
            enc.specs.append(c)
            enc.pre_pool[len(enc.blocks) - 1] = pre_pool
            shape, source = block.out_shape, f"the previous block ({c.where}) outputs a map that"
        if self.model.mlp and len(shape) > 1:
            enc.flat_from = shape
            enc.items.append(L.flatten(shape))
        for i, b in enumerate(self.model.mlp):
            source = self._describe_source(i, shape, enc.flat_from)
            shape = (math.prod(shape),)
            block = self.linear_block(b, shape, source)
            enc.items.append(block)
            enc.blocks.append(block)
            enc.specs.append(b)
            shape = block.out_shape
        for c_or_b, block in zip(enc.specs, enc.blocks):
            self._warn_no_activation(c_or_b, block, enc)
        return enc

    def _describe_source(self, i: int, shape: Shape, flat_from: Shape | None) -> str:
        if i > 0:
            return f"{self.model.mlp[i - 1].where} outputs {shape[0]}"
        if flat_from is not None:
            what = "the conv stack" if self.model.conv else "the input"
            return f"{what} flattens to {fmt_dims(flat_from)} = {math.prod(flat_from)}"
        return f"the input has {shape[0]} features"

    def _warn_no_activation(self, spec: ConvSpec | LinearSpec, block: Block, enc: Encoder) -> None:
        is_last = block is enc.blocks[-1]
        if spec.activation == "none" and not is_last:
            self.warn(
                spec.where,
                "no activation before the next block: two layers with nothing non-linear between "
                "them compute what one layer could; add e.g. `activation: relu`",
            )

    def mirror(self, enc: Encoder, start: Shape, name: str = "decoder") -> list[Item]:
        """Transpose the encoder into a decoder that reproduces its input shape exactly.

        Blocks come in reverse order. Each inverts the encoder block it mirrors
        (Linear back to the block's input size; ConvTranspose with the same
        kernel, stride, padding and dilation plus the output_padding that lands
        on the recorded size; an Upsample to the recorded size where the
        encoder pooled). Each hidden decoder block then applies the norm,
        activation and dropout that the encoder applied to produce that same
        shape, so the decoder retraces the encoder's feature maps and the
        encoder's own output activation never leaks into it. The last block has
        no norm or dropout, and `output_activation`.
        """
        items: list[Item] = []
        shape = start
        n = len(enc.blocks)
        for j in range(n):
            i = n - 1 - j
            spec, block = enc.specs[i], enc.blocks[i]
            source = enc.specs[i - 1] if i > 0 else None
            if source is None:  # the output layer
                style = ("none", self.model.output_activation, 0.0)
            else:
                style = (source.norm, source.activation, source.dropout)
            where, note = f"{name}[{j}]", f"mirrors {spec.where}"
            if isinstance(spec, LinearSpec):
                mirrored = spec if source is not None else replace(spec, residual=False, gate=False)
                layers = self._linear_layers(shape, block.in_shape[0], mirrored, *style)
                items.append(Block(_linear_class(mirrored), where, shape, tuple(layers), note=note))
                shape = block.in_shape
                if i == 0 and enc.flat_from is not None and not self.model.conv:
                    items.append(L.unflatten(enc.flat_from))  # mlp-only encoder of a multi-dimensional input
                    shape = enc.flat_from
                continue
            if shape != block.out_shape:  # leaving the linear part: restore the conv map
                items.append(L.unflatten(block.out_shape))
                shape = block.out_shape
            cls, layers = self._mirror_conv(spec, shape, block.in_shape, enc.pre_pool[i], residual=spec.residual and source is not None, style=style)
            items.append(Block(cls, where, shape, tuple(layers), note=note))
            shape = layers[-1].out_shape
        if shape != self.model.input:  # the transposition is exact by construction
            raise AssertionError(f"decoder output {shape} != input {self.model.input}")
        return items

    def _mirror_conv(
        self, spec: ConvSpec, shape: Shape, target: Shape, pre_pool: Shape, residual: bool,
        style: tuple[str, str, float],
    ) -> tuple[str, list[Layer]]:
        """Invert one conv block: [Upsample], ConvTranspose landing exactly on `target`, then style."""
        norm, act, drop = style
        layers: list[Layer] = []
        if spec.pool is not None:
            layers.append(L.upsample(shape, pre_pool[1:]))
            shape = pre_pool
        padding_out = tuple(
            want - L.conv_transpose_out(have, k, s, p, d, 0)
            for want, have, k, s, p, d in zip(target[1:], shape[1:], spec.kernel, spec.stride, spec.padding, spec.dilation)
        )
        for op, s, d in zip(padding_out, spec.stride, spec.dilation):
            if not (0 <= op and (op < s or op < d)):  # cannot happen for a valid encoder
                raise AssertionError(f"output_padding {op} out of range for stride {s}")
        up_conv = L.conv_transpose(
            self.ndim, shape, target[0], spec.kernel, spec.stride, spec.padding, spec.dilation, padding_out, spec.bias
        )
        if residual:  # the transposed BasicBlock: ConvTranspose, norm, act, Conv, norm, + shortcut
            layers.append(replace(up_conv, role="conv1"))
            if norm != "none":
                layers.append(replace(L.norm(norm, target), role="norm1"))
            if act != "none":
                layers.append(L.activation(act, target))
            ones = (1,) * self.ndim
            conv2 = L.conv(self.ndim, target, target[0], spec.kernel, ones, spec.padding, spec.dilation, spec.bias)
            layers.append(replace(conv2, role="conv2"))
            if norm != "none":
                layers.append(replace(L.norm(norm, target), role="norm2"))
            if shape != target:
                layers.append(L.conv_transpose_shortcut(self.ndim, shape, target, spec.stride, norm != "none"))
        else:
            layers.append(up_conv)
            if norm != "none":
                layers.append(L.norm(norm, target))
            if act != "none":
                layers.append(L.activation(act, target))
        if drop:
            layers.append(L.dropout(drop, target))
        return ("ResidualUpBlock" if residual else "UpBlock"), layers

    # ------------------------------------------------------------------ plan

    def warn(self, where: str, message: str) -> None:
        self.warnings.append(SpecWarning(where, message))

    def _trail_lines(self) -> list[str]:
        return ["shapes: " + " -> ".join(self.trail)]

    def plan(self, parts: list[Part], output_shape: Shape) -> Plan:
        train = self.spec.train
        plan = Plan(
            project=self.project,
            kind=self.model.kind,
            task=train.task,
            input_shape=self.model.input,
            output_shape=output_shape,
            parts=tuple(parts),
            train=train,
            latent=self.model.latent,
            output_activation=self.model.output_activation,
        )
        self._check_parts(plan)
        if train.batch_size == 1 and any(op.startswith("BatchNorm") for op in plan.layer_ops()):
            self.warn("train.batch_size", "BatchNorm cannot train on batches of one sample; use batch_size >= 2")
        if plan.params > LARGE_MODEL:
            self.warn(
                "model",
                f"{plan.params:,} parameters ({plan.params * 4 / 2**30:.1f} GiB as float32); "
                "the generated tests build this model, so expect them to be slow",
            )
        return replace(plan, warnings=tuple(self.warnings))

    def _check_parts(self, plan: Plan) -> None:
        """`param_groups` and `freeze` must name parts that have parameters."""
        trainable = [part.name for part in plan.parts if part.params]
        named = [(f"train.param_groups.{name}", name) for name, _ in plan.train.param_groups]
        named += [(f"train.freeze[{i}]", name) for i, name in enumerate(plan.train.freeze)]
        for where, name in named:
            if name not in trainable:
                raise SpecError(
                    where,
                    f"`{name}` is not a part of this {plan.kind} with parameters{did_you_mean(name, trainable)}",
                    f"use one of: {', '.join(trainable)}",
                )
        if plan.train.freeze and set(plan.train.freeze) >= set(trainable):
            raise SpecError("train.freeze", "freezes every part, so nothing would train", f"leave at least one of {', '.join(trainable)} out")
        frozen_groups = sorted({name for name, _ in plan.train.param_groups} & set(plan.train.freeze))
        if frozen_groups:
            self.warn("train.param_groups", f"{', '.join(frozen_groups)} frozen, so the learning rate given for it is unused")

    def build(self) -> Plan:  # pragma: no cover - abstract
        raise NotImplementedError


class HeadBuilder(Builder):
    """`mlp` and `cnn`: an optional conv stack, then an mlp whose last block is the output."""

    def build(self) -> Plan:
        enc = self.encoder()
        parts: list[Part] = []
        convs = [block for spec, block in zip(enc.specs, enc.blocks) if isinstance(spec, ConvSpec)]
        linears = [block for spec, block in zip(enc.specs, enc.blocks) if isinstance(spec, LinearSpec)]
        if convs:
            parts.append(Part("features", "Convolutional feature extractor.", self.model.input, tuple(convs)))
        out = enc.out_shape if enc.items else self.model.input
        if self.model.heads and enc.flat_from is None and len(out) > 1:
            enc.flat_from = out  # heads right after a conv stack (or on a multi-dimensional input)
        if enc.flat_from is not None:
            parts.append(Part("flatten", "Flatten the feature map into a vector.", enc.flat_from,
                              (L.flatten(enc.flat_from),), sequential=False))
        if self.model.heads:
            return self._multitask(parts, enc, linears)
        head_doc = "Classifier head: the last layer outputs one logit per class." if self.spec.train.task == "classification" else "Regression head."
        parts.append(Part("head", head_doc, linears[0].in_shape, tuple(linears)))
        out = linears[-1]
        spec_out = self.model.mlp[-1]
        if spec_out.residual or spec_out.gate:
            raise SpecError(
                spec_out.where,
                "the output layer cannot be residual or gated: it maps features to the outputs",
                "add a plain block at the end, e.g. `{features: 10}`",
            )
        if self.spec.train.task == "classification":
            if out.out_shape[0] < 2:
                raise SpecError(
                    spec_out.where,
                    f"a classifier needs one output per class, but the output layer has {out.out_shape[0]}",
                    "set `features:` to the number of classes (2 for a binary problem)",
                )
            if spec_out.activation != "none":
                self.warn(
                    spec_out.where,
                    f"the output layer applies {spec_out.activation}, but the classification loss "
                    "(cross entropy) expects raw logits; use `activation: none`",
                )
        return self.plan(parts, out.out_shape)


    def _multitask(self, parts: list[Part], enc: Encoder, linears: list[Block]) -> Plan:
        """A shared trunk (the mlp blocks, all hidden) and one Linear head per task, in a ModuleDict."""
        shared = linears[-1].out_shape if linears else (enc.out_shape if enc.items else self.model.input)
        if len(shared) > 1:  # no mlp blocks: the flatten part made the vector
            shared = (math.prod(shared),)
        if linears:
            parts.append(Part("trunk", "Shared trunk: the features every head reads.", linears[0].in_shape, tuple(linears)))
        heads = [Block("LinearBlock", h.where, shared, (L.linear(shared[0], h.features, True),)) for h in self.model.heads]
        names = tuple(h.name for h in self.model.heads)
        parts.append(Part("heads", "One output head per task, by name.", shared, tuple(heads), keys=names))
        plan = self.plan(parts, heads[0].out_shape)
        return replace(plan, heads=self.model.heads)


class AutoencoderBuilder(Builder):
    """Encoder, optional latent bottleneck, mirrored decoder."""

    def build(self) -> Plan:
        enc = self.encoder()
        items = list(enc.items)
        start = enc.out_shape
        decoder: list[Item] = []
        if self.model.latent is not None:
            if len(start) > 1:
                items.append(L.flatten(start))
            flat = (math.prod(start),)
            self._check_latent(flat[0])
            items.append(L.linear(flat[0], self.model.latent, True))
            decoder.append(L.linear(self.model.latent, flat[0], True))
            if len(start) > 1:
                decoder.append(L.unflatten(start))
        decoder += self.mirror(enc, start)
        parts = [
            Part("encoder", "Encoder: input -> code.", self.model.input, tuple(items)),
            Part("decoder", "Decoder: the encoder transposed, code -> input shape.", items[-1].out_shape, tuple(decoder)),
        ]
        return self.plan(parts, decoder[-1].out_shape)

    def _check_latent(self, flat: int) -> None:
        if self.model.latent is not None and self.model.latent >= flat:
            self.warn(
                "model.latent",
                f"latent {self.model.latent} is not smaller than the encoder output ({flat} values), "
                "so the bottleneck does not compress",
            )


class VAEBuilder(AutoencoderBuilder):
    """Encoder, mean and log-variance heads, sampler, mirrored decoder."""

    def build(self) -> Plan:
        enc = self.encoder()
        items = list(enc.items)
        start = enc.out_shape
        if len(start) > 1:
            items.append(L.flatten(start))
        flat = math.prod(start)
        latent = self.model.latent
        assert latent is not None
        self._check_latent(flat)
        decoder: list[Item] = []
        if len(start) > 1:
            decoder.append(L.unflatten(start))
        decoder += self.mirror(enc, start)
        parts = [
            Part("encoder", "Encoder: input -> features for the posterior.", self.model.input, tuple(items)),
            Part("fc_mu", "Mean of q(z|x).", (flat,), (L.linear(flat, latent, True),), sequential=False),
            Part("fc_logvar", "Log-variance of q(z|x).", (flat,), (L.linear(flat, latent, True),), sequential=False),
            Part("fc_decode", "Sampler: z back to the encoder's output size.", (latent,),
                 (L.linear(latent, flat, True),), sequential=False),
            Part("decoder", "Decoder: the encoder transposed, back to the input shape.", (flat,), tuple(decoder)),
        ]
        return self.plan(parts, decoder[-1].out_shape)


def _linear_class(b: LinearSpec) -> str:
    return "ResidualLinearBlock" if b.residual else "GatedLinearBlock" if b.gate else "LinearBlock"


class GANBuilder(Builder):
    """Discriminator from the conv (and mlp) stack, generator from its transposition."""

    def build(self) -> Plan:
        enc = self.encoder()
        start = enc.out_shape
        latent = self.model.latent
        assert latent is not None
        flat = math.prod(start)
        critic = list(enc.items)
        if len(start) > 1:
            critic.append(L.flatten(start))
        critic.append(L.linear(flat, 1, True))  # one real/fake logit
        generator: list[Item] = [L.linear(latent, flat, True)]
        if len(start) > 1:
            generator.append(L.unflatten(start))
        generator += self.mirror(enc, start, name="generator")
        parts = [
            Part("generator", "Generator: latent z -> a sample shaped like the data (the discriminator transposed).",
                 (latent,), tuple(generator)),
            Part("discriminator", "Discriminator: a sample -> one logit, real (high) or generated (low).",
                 self.model.input, tuple(critic)),
        ]
        return self.plan(parts, generator[-1].out_shape)


BUILDERS: dict[str, type[Builder]] = {
    "mlp": HeadBuilder,
    "cnn": HeadBuilder,
    "autoencoder": AutoencoderBuilder,
    "vae": VAEBuilder,
    "gan": GANBuilder,
}


def build_plan(spec: Spec, project: str | None = None) -> Plan:
    """Run the builder for the spec's kind."""
    return BUILDERS[spec.model.kind](spec, project).build()


def plan_from_raw(raw: Any, project: str | None = None) -> Plan:
    """Spec mapping -> checked spec -> plan."""
    return build_plan(parse_spec(raw), project)


def plan_from_file(path: str | Path, project: str | None = None) -> Plan:
    """Spec file -> plan; raises SpecError on the first problem."""
    return plan_from_raw(load_spec_file(path), project)
