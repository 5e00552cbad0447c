"""Builders: one per model kind, each turning a checked spec into a plan.

A builder walks the blocks in order, inferring each block's input from the previous
block's output, checking every shape with torch's formulas and raising a
:class:`SpecError` at the first block that cannot work. Autoencoders, VAEs and GANs get
their decoder (generator) by transposing the encoder (discriminator): see :func:`mirror`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from scaffold import blocks as B
from scaffold import layers as L
from scaffold.blocks import Style
from scaffold.errors import SpecError, SpecWarning, did_you_mean
from scaffold.layers import ConvGeometry, Layer, Shape, fmt_dims
from scaffold.plan import Block, Item, Part, Plan
from scaffold.spec import ConvSpec, LinearSpec, Spec, check_project_name, load_spec_file, parse_spec

LARGE_MODEL = 50_000_000  # parameters; above this, warn about memory and test time
NORMALIZING = ("softmax", "log_softmax")


def style_of(spec: ConvSpec | LinearSpec) -> Style:
    return Style(spec.norm, spec.activation, spec.negative_slope, spec.dropout)


def geometry(spec: ConvSpec) -> ConvGeometry:
    return ConvGeometry(spec.kernel, spec.stride, spec.padding, spec.dilation)


def dense(
    where: str, in_features: int, out_features: int, style: Style, bias: bool | None, note: str = ""
) -> Item:
    """A Linear, or a LinearBlock when a norm, activation or dropout follows it."""
    if style == B.PLAIN:
        return L.linear(in_features, out_features, style.bias(bias))
    return B.linear_block(where, in_features, out_features, style, bias, note=note)


@dataclass
class Encoder:
    """What the encoder stack produced, kept so the decoder can retrace it."""

    items: list[Item] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)  # conv then linear blocks, in order
    specs: list[ConvSpec | LinearSpec] = field(default_factory=list)
    pre_pool: dict[int, Shape] = field(default_factory=dict)  # block index -> shape before pooling
    flat_from: Shape | None = None  # the shape that Flatten turned into a vector
    global_pool: Layer | None = None  # adaptive pooling after the conv stack (`global_pool:`)

    @property
    def out_shape(self) -> Shape:
        return self.items[-1].out_shape

    def last_style(self) -> Style:
        """The norm, activation and dropout the encoder's output went through."""
        return style_of(self.specs[-1])


class Stack:
    """Walks a spec's conv and mlp blocks in order, checking each shape; keeps a trail of
    shapes for error messages and the warnings found on the way."""

    def __init__(self, spec: Spec) -> None:
        self.model = spec.model
        self.ndim = len(self.model.input) - 1
        self.warnings: list[SpecWarning] = []
        self.trail: list[str] = [f"input {fmt_dims(self.model.input)}"]

    def warn(self, where: str, message: str) -> None:
        self.warnings.append(SpecWarning(where, message))

    def trail_lines(self) -> list[str]:
        return ["shapes: " + " -> ".join(self.trail)]

    def conv_block(self, c: ConvSpec, in_shape: Shape, source: str) -> tuple[Block, Shape]:
        """Conv, norm, activation, pool, dropout; returns the block and its pre-pool shape."""
        if c.in_channels is not None and c.in_channels != in_shape[0]:
            raise SpecError(
                c.where,
                f"declares in_channels {c.in_channels} but {source} has {in_shape[0]} channels "
                f"(shape {fmt_dims(in_shape)})",
                f"set `in_channels: {in_shape[0]}`, or remove `in_channels` (it is inferred)",
                self.trail_lines(),
            )
        for n, k, s, p, d in zip(in_shape[1:], c.kernel, c.stride, c.padding, c.dilation):
            reach = d * (k - 1) + 1
            if n + 2 * p < reach:
                size = f"{fmt_dims(in_shape[1:])}" + (
                    f" ({n} + 2*{p} = {n + 2 * p} with padding)" if p else ""
                )
                what = (
                    f"kernel {k}"
                    if d == 1
                    else f"dilated kernel {reach} (kernel {k}, dilation {d})"
                )
                raise SpecError(
                    c.where,
                    f"its input is {size}, smaller than {what}",
                    "remove this block, or make the feature map larger earlier: smaller "
                    "kernels or strides, pooling removed, or more padding",
                    self.trail_lines() + [f"arithmetic: {L.conv_arithmetic(n, k, s, p, d)}"],
                )
        g = geometry(c)
        pre_pool = (c.channels, *g.out(in_shape[1:]))
        pool = self._pool(c, in_shape, pre_pool) if c.pool is not None else None
        build = B.residual_conv_block if c.residual else B.conv_block
        block = build(c.where, self.ndim, in_shape, c.channels, g, style_of(c), c.bias, pool)
        if c.activation in NORMALIZING and block.out_shape[0] == 1:
            self.warn(
                c.where,
                f"{c.activation} over a single channel always outputs {'1' if c.activation == 'softmax' else '0'}",
            )
        self.trail.append(f"{c.where} -> {fmt_dims(block.out_shape)}")
        return block, pre_pool

    def _pool(self, c: ConvSpec, in_shape: Shape, shape: Shape) -> Layer:
        assert c.pool is not None
        for n, k, s, p in zip(shape[1:], c.pool.kernel, c.pool.stride, c.pool.padding):
            if (
                c.pool.kind == "avg" and self.ndim == 3 and n < k
            ):  # torch's AvgPool3d ignores padding here
                raise SpecError(
                    f"{c.where}.pool",
                    f"after the conv the volume is {fmt_dims(shape[1:])}; AvgPool3d needs every side "
                    f"at least its kernel {k} before padding",
                    "use a smaller pool, max pooling, or remove the pool from this block",
                    self.trail_lines() + [f"conv: {fmt_dims(in_shape)} -> {fmt_dims(shape)}"],
                )
            if n + 2 * p < k:
                raise SpecError(
                    f"{c.where}.pool",
                    f"after the conv the feature map is {fmt_dims(shape[1:])}, smaller than the pooling window {k}",
                    "use a smaller pool, or remove the pool from this block",
                    self.trail_lines()
                    + [
                        f"conv: {fmt_dims(in_shape)} -> {fmt_dims(shape)}",
                        f"pool arithmetic: {L.conv_arithmetic(n, k, s, p, 1)}",
                    ],
                )
        return L.pool(self.ndim, shape, c.pool.kind, c.pool.kernel, c.pool.stride, c.pool.padding)

    def linear_block(self, b: LinearSpec, in_shape: Shape, source: str) -> Block:
        """Linear, [gate], norm, [scale], activation, dropout; or the residual block."""
        if b.in_features is not None and b.in_features != in_shape[0]:
            raise SpecError(
                b.where,
                f"declares {b.in_features} input features but {source}",
                f"set `in_features: {in_shape[0]}`, or remove `in_features` (it is inferred)",
                self.trail_lines(),
            )
        if b.activation in NORMALIZING and b.features == 1:
            self.warn(
                b.where,
                f"{b.activation} over a single output always returns {'1' if b.activation == 'softmax' else '0'}; "
                "for one binary output use `activation: sigmoid` (or none, with BCEWithLogitsLoss)",
            )
        self.trail.append(f"{b.where} -> {b.features}")
        return linear_spec_block(b, b.where, in_shape[0], b.features, style_of(b))

    def encoder(self) -> Encoder:
        """Conv blocks, Flatten where needed, then linear blocks."""
        enc = Encoder()
        shape: Shape = self.model.input
        source = "the input"
        for c in self.model.conv:
            block, pre_pool = self.conv_block(c, shape, source)
            enc.pre_pool[len(enc.blocks)] = pre_pool
            enc.items.append(block)
            enc.blocks.append(block)
            enc.specs.append(c)
            shape, source = block.out_shape, f"the previous block ({c.where}) outputs a map that"
        if self.model.global_pool:  # one value per channel, whatever the input size
            ones = (1,) * self.ndim
            op = f"Adaptive{self.model.global_pool.capitalize()}Pool{self.ndim}d"
            enc.global_pool = Layer(f"{self.model.global_pool}pool", op, (ones,), (shape[0], *ones))
            enc.items.append(enc.global_pool)
            shape = enc.global_pool.out_shape
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
        for spec in enc.specs[:-1]:
            if spec.activation == "none":
                self.warn(
                    spec.where,
                    "no activation before the next block: two layers with nothing non-linear between "
                    "them compute what one layer could; add e.g. `activation: relu`",
                )
        return enc

    def _describe_source(self, i: int, shape: Shape, flat_from: Shape | None) -> str:
        if i > 0:
            return f"{self.model.mlp[i - 1].where} outputs {shape[0]}"
        if flat_from is not None:
            what = "the conv stack" if self.model.conv else "the input"
            return f"{what} flattens to {fmt_dims(flat_from)} = {math.prod(flat_from)}"
        return f"the input has {shape[0]} features"


def linear_spec_block(
    b: LinearSpec, where: str, in_features: int, out_features: int, style: Style, note: str = ""
) -> Block:
    """The block an mlp entry asks for: residual, gated, or plain."""
    if b.residual:
        return B.residual_linear_block(
            where, in_features, out_features, style, b.bias, b.scale, note
        )
    return B.linear_block(
        where, in_features, out_features, style, b.bias, gate=b.gate, scale=b.scale, note=note
    )


def mirror(
    enc: Encoder,
    items: list[Item],
    start: Shape,
    name: str,
    hidden: Style | None,
    output: Style,
    ndim: int,
    input_shape: Shape,
) -> None:
    """Transpose the encoder into `items`, a decoder that reproduces the input shape exactly.

    Blocks come in reverse order. Each inverts the encoder block it mirrors (a Linear back
    to the block's input size; a ConvTranspose with the same kernel, stride, padding and
    dilation plus the output_padding that lands on the recorded size; an Upsample to the
    recorded size where the encoder pooled). Each hidden block then applies `hidden`, or,
    when that is None, the norm, activation and dropout that the encoder applied to produce
    the same shape: the decoder retraces the encoder's feature maps. The last block has
    `output` (no norm or dropout; the output activation). A bias written on an encoder block
    applies to its mirror too.
    """
    shape = start
    n = len(enc.blocks)
    for i in reversed(range(n)):
        spec, block = enc.specs[i], enc.blocks[i]
        last = i == 0
        style = output if last else (hidden or style_of(enc.specs[i - 1]))
        where, note = f"{name}.{len(items)}", f"mirrors {spec.where}"
        if isinstance(spec, LinearSpec):
            plain = replace(spec, residual=False, gate=False) if last else spec
            items.append(linear_spec_block(plain, where, shape[0], block.in_shape[0], style, note))
            shape = block.in_shape
            if last and enc.flat_from is not None and not enc.pre_pool:
                items.append(
                    L.unflatten(enc.flat_from)
                )  # an mlp-only encoder of a multi-dimensional input
                shape = enc.flat_from
            continue
        if len(shape) == 1:  # leaving the linear part: restore the conv map
            items.append(L.unflatten(block.out_shape))
            shape = block.out_shape
        where = f"{name}.{len(items)}"
        upsample = enc.pre_pool[i][1:] if spec.pool is not None else None
        up = B.up_block(
            where,
            ndim,
            shape,
            block.in_shape,
            geometry(spec),
            style,
            spec.bias,
            upsample,
            residual=spec.residual and not last,
            note=note,
        )
        items.append(up)
        shape = up.out_shape
    if shape != input_shape:  # the transposition is exact by construction
        raise AssertionError(f"decoder output {shape} != input {input_shape}")


class Builder:
    """Common machinery; subclasses implement :meth:`build` for one kind."""

    def __init__(self, spec: Spec, project: str | None = None) -> None:
        self.spec = spec
        self.model = spec.model
        self.project = check_project_name(project) if project else (spec.project or "model")
        self.ndim = len(self.model.input) - 1
        self.stack = Stack(spec)

    def warn(self, where: str, message: str) -> None:
        self.stack.warn(where, message)

    def plan(self, parts: list[Part], output_shape: Shape, **extra: Any) -> Plan:
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
            **extra,
        )
        self._check_parts(plan)
        if train.batch_size == 1 and any(op.startswith("BatchNorm") for op in plan.layer_ops()):
            self.warn(
                "train.batch_size",
                "BatchNorm cannot train on batches of one sample; use batch_size >= 2",
            )
        if plan.params > LARGE_MODEL:
            self.warn(
                "model",
                f"{plan.params:,} parameters ({plan.params * 4 / 2**30:.1f} GiB as float32); "
                "the generated tests build this model, so expect them to be slow",
            )
        return replace(plan, warnings=tuple(self.stack.warnings))

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
            raise SpecError(
                "train.freeze",
                "freezes every part, so nothing would train",
                f"leave at least one of {', '.join(trainable)} out",
            )
        frozen_groups = sorted(
            {name for name, _ in plan.train.param_groups} & set(plan.train.freeze)
        )
        if frozen_groups:
            self.warn(
                "train.param_groups",
                f"{', '.join(frozen_groups)} frozen, so the learning rate given for it is unused",
            )

    def output_part(self, spec_out: LinearSpec, in_features: int) -> Part:
        """The `head` part: the last mlp block, the model's output layer (mlp, cnn, seq)."""
        if spec_out.residual or spec_out.gate:
            raise SpecError(
                spec_out.where,
                "the output layer cannot be residual or gated: it maps features to the outputs",
                "add a plain block at the end, e.g. `{features: 10}`",
            )
        classify = self.spec.train.task == "classification"
        if classify and spec_out.features < 2:
            raise SpecError(
                spec_out.where,
                f"a classifier needs one output per class, but the output layer has {spec_out.features}",
                "set `features:` to the number of classes (2 for a binary problem)",
            )
        if classify and spec_out.activation != "none":
            self.warn(
                spec_out.where,
                f"the output layer applies {spec_out.activation}, but the classification loss "
                "(cross entropy) expects raw logits; use `activation: none`",
            )
        head = dense(
            spec_out.where, in_features, spec_out.features, style_of(spec_out), spec_out.bias
        )
        doc = "Output layer, one logit per class" if classify else "Output layer"
        return Part("head", doc, (in_features,), (head,), sequential=False)

    def output_style(self) -> Style:
        """The decoder's last layer: the output activation, or none where forward returns
        logits (a sigmoid output of a reconstruction model: the loss applies it)."""
        activation = self.model.output_activation
        if self.model.kind in ("autoencoder", "vae") and activation == "sigmoid":
            activation = "none"
        return Style(activation=activation)

    def build(self) -> Plan:  # pragma: no cover - abstract
        raise NotImplementedError


class HeadBuilder(Builder):
    """`mlp` and `cnn`: features (conv blocks), trunk (hidden mlp blocks), head (the output
    layer); or, with `heads:`, one Linear head per task on the trunk."""

    def build(self) -> Plan:
        enc = self.stack.encoder()
        parts: list[Part] = []
        convs = [block for spec, block in zip(enc.specs, enc.blocks) if isinstance(spec, ConvSpec)]
        linears = [
            block for spec, block in zip(enc.specs, enc.blocks) if isinstance(spec, LinearSpec)
        ]
        if convs:
            parts.append(
                Part("features", "Convolutional feature extractor.", self.model.input, tuple(convs))
            )
        if enc.global_pool is not None:
            pool = enc.global_pool
            doc = "Global pooling to one value per channel (any input size)"
            parts.append(Part(pool.role, doc, convs[-1].out_shape, (pool,), sequential=False))
        out = enc.out_shape if enc.items else self.model.input
        if self.model.heads and enc.flat_from is None and len(out) > 1:
            enc.flat_from = out  # heads right after a conv stack (or on a multi-dimensional input)
        if enc.flat_from is not None:
            parts.append(
                Part(
                    "flatten",
                    "Flatten the feature map into a vector",
                    enc.flat_from,
                    (L.flatten(enc.flat_from),),
                    sequential=False,
                )
            )
        if self.model.heads:
            return self._multitask(parts, enc, linears)
        spec_out = self.model.mlp[-1]
        if len(linears) > 1:
            parts.append(Part("trunk", "Hidden layers.", linears[0].in_shape, tuple(linears[:-1])))
        parts.append(self.output_part(spec_out, linears[-1].in_shape[0]))
        head = parts[-1].items[0]
        return self.plan(parts, head.out_shape)

    def _multitask(self, parts: list[Part], enc: Encoder, linears: list[Block]) -> Plan:
        """A shared trunk (the mlp blocks, all hidden) and one Linear head per task, in a ModuleDict."""
        shared = (
            linears[-1].out_shape if linears else (enc.out_shape if enc.items else self.model.input)
        )
        if len(shared) > 1:  # no mlp blocks: the flatten part made the vector
            shared = (math.prod(shared),)
        if linears:
            parts.append(
                Part(
                    "trunk",
                    "Shared trunk: the features every head reads.",
                    linears[0].in_shape,
                    tuple(linears),
                )
            )
        heads = tuple(L.linear(shared[0], h.features, True) for h in self.model.heads)
        names = tuple(h.name for h in self.model.heads)
        parts.append(
            Part("heads", "One output layer per task, by name.", shared, heads, keys=names)
        )
        return self.plan(parts, heads[0].out_shape, heads=self.model.heads)


class AutoencoderBuilder(Builder):
    """Encoder, optional latent bottleneck, mirrored decoder."""

    def build(self) -> Plan:
        enc = self.stack.encoder()
        items = list(enc.items)
        start = enc.out_shape
        decoder: list[Item] = []
        latent = self.model.latent
        if latent is not None:
            flat = math.prod(start)
            self._check_latent(flat)
            if len(start) > 1:
                items.append(L.flatten(start))
            items.append(L.linear(flat, latent, True))
            # back to the encoder's output, through the activation the encoder's output had
            note = f"projects the code back to {enc.specs[-1].where}'s output"
            decoder.append(dense("decoder.0", latent, flat, enc.last_style(), None, note))
            if len(start) > 1:
                decoder.append(L.unflatten(start))
        mirror(
            enc, decoder, start, "decoder", None, self.output_style(), self.ndim, self.model.input
        )
        parts = [
            Part("encoder", "Encoder: input -> code.", self.model.input, tuple(items)),
            Part(
                "decoder",
                "Decoder: the encoder transposed, code -> input shape.",
                items[-1].out_shape,
                tuple(decoder),
            ),
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
        enc = self.stack.encoder()
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
        mirror(
            enc, decoder, start, "decoder", None, self.output_style(), self.ndim, self.model.input
        )
        last = enc.specs[-1].where
        fc_decode = dense(
            "fc_decode", latent, flat, enc.last_style(), None, f"z back to {last}'s output"
        )
        decode_doc = "z back to the encoder's output" + (
            "" if isinstance(fc_decode, Layer) else f" ({last}'s norm and act)"
        )
        parts = [
            Part(
                "encoder",
                "Encoder: input -> features for the posterior.",
                self.model.input,
                tuple(items),
            ),
            Part(
                "fc_mu",
                "Mean of q(z|x)",
                (flat,),
                (L.linear(flat, latent, True),),
                sequential=False,
            ),
            Part(
                "fc_logvar",
                "Log-variance of q(z|x)",
                (flat,),
                (L.linear(flat, latent, True),),
                sequential=False,
            ),
            Part("fc_decode", decode_doc, (latent,), (fc_decode,), sequential=False),
            Part(
                "decoder",
                "Decoder: the encoder transposed, back to the input shape.",
                (flat,),
                tuple(decoder),
            ),
        ]
        return self.plan(parts, decoder[-1].out_shape)


class GANBuilder(Builder):
    """Discriminator from the conv (and mlp) stack, generator from its transposition.

    When the stack ends in a single value (DCGAN's last 4x4 convolution to one channel), that
    value is the logit and the generator starts with that layer transposed, from a 1x1 map of
    latents; otherwise a Linear makes the logit and the generator starts with a Linear
    projection of z. Every hidden generator layer, the projection included, has the
    generator's norm and activation (DCGAN: BatchNorm and ReLU)."""

    def build(self) -> Plan:
        enc = self.stack.encoder()
        start = enc.out_shape
        latent = self.model.latent
        gen = self.model.generator
        assert latent is not None and gen is not None
        hidden = Style(gen.norm, gen.activation, gen.negative_slope)
        flat = math.prod(start)
        critic = list(enc.items)
        if len(start) > 1:
            critic.append(L.flatten(start))
        generator: list[Item] = []
        if flat == 1:  # the stack's last layer is the logit: transpose it from latents
            start = (latent, *start[1:])
            if len(start) > 1:
                generator.append(L.unflatten(start))
        else:
            critic.append(L.linear(flat, 1, True))  # one real/fake logit
            note = "projects z"
            generator.append(dense("generator.0", latent, flat, hidden, None, note))
            if len(start) > 1:
                generator.append(L.unflatten(start))
        mirror(
            enc,
            generator,
            start,
            "generator",
            hidden,
            Style(activation=self.model.output_activation),
            self.ndim,
            self.model.input,
        )
        parts = [
            Part(
                "generator",
                "Generator: latent z -> a sample shaped like the data (the discriminator transposed).",
                (latent,),
                tuple(generator),
            ),
            Part(
                "discriminator",
                "Discriminator: a sample -> one logit, real (high) or generated (low).",
                self.model.input,
                tuple(critic),
            ),
        ]
        return self.plan(parts, generator[-1].out_shape)


class SequenceBuilder(Builder):
    """`lm` and `seq`: token ids (B, T) -> TokenEmbedding -> blocks over the sequence (`h`,
    transformer or recurrent) -> [final LayerNorm `ln_f`] -> either `lm_head` to the vocabulary
    at every position (lm), or a pooling over time and an mlp head (seq)."""

    def build(self) -> Plan:
        model = self.model
        assert model.vocab is not None
        (context,) = model.input
        seq = list(model.seq)
        first = seq[0]
        if first.type != "embedding":
            raise SpecError(
                first.where,
                f"a sequence model starts from token ids, but its first block is a {first.type}",
                "start `seq:` with `{type: embedding, features: 64}`",
            )
        pool = seq[-1] if seq[-1].type == "pool" else None
        self._check_order(seq, pool)
        cls_token = pool is not None and pool.mode == "cls"
        assert first.features is not None
        embed = B.token_embedding(
            first.where, model.vocab, first.features, context, first.position == "learned",
            first.dropout, cls_token,
        )  # fmt: skip
        length, width = embed.out_shape
        trail = [f"input {context} tokens", f"{first.where} -> {length} x {width}"]
        blocks: list[Item] = []
        final_norm: Layer | None = None
        for spec in seq[1 : len(seq) - (1 if pool else 0)]:
            if spec.type == "transformer":
                self._check_heads(spec, width, trail)
                assert spec.heads is not None
                for n in range(spec.layers):
                    where = (
                        spec.where
                        if spec.layers == 1
                        else f"{spec.where} layer {n + 1} of {spec.layers}"
                    )
                    blocks.append(
                        B.transformer_block(
                            where, length, width, spec.heads, spec.mlp_ratio, spec.activation,
                            spec.dropout, spec.bias, spec.causal,
                        )  # fmt: skip
                    )
            elif spec.type in ("gru", "lstm"):
                assert spec.features is not None
                block = B.recurrent_block(
                    spec.where, spec.type, length, width, spec.features, spec.layers,
                    spec.bidirectional, spec.dropout,
                )  # fmt: skip
                blocks.append(block)
                width = block.out_shape[1]
            else:  # norm: the final LayerNorm (checked to be last)
                final_norm = L.layer_norm(width, (length, width), spec.bias, "ln_f")
            trail.append(f"{spec.where} -> {length} x {width}")
        self._warn_sequence(seq, pool, final_norm)
        parts = [
            Part("embed", "Token ids (B, T) -> vectors", (context,), (embed,), sequential=False)
        ]
        if blocks:
            doc = "Blocks over the sequence, each (B, T, C) -> (B, T, C')"
            parts.append(Part("h", doc, (length, width), tuple(blocks), container="ModuleList"))
        if final_norm is not None:
            parts.append(
                Part("ln_f", "Final LayerNorm", (length, width), (final_norm,), sequential=False)
            )
        if model.kind == "lm":
            return self._language_model(parts, embed, length, width)
        assert pool is not None
        pool_class = {"mean": "MeanPool", "last": "LastPool", "cls": "ClsTokenPool"}[pool.mode]
        pooled = Layer("pool", pool_class, (), (width,))
        parts.append(
            Part(
                "pool",
                f"Pool over time ({pool.mode})",
                (length, width),
                (pooled,),
                sequential=False,
            )
        )
        return self._head(parts, width)

    def _check_order(self, seq: list, pool) -> None:
        names = [spec.type for spec in seq]
        for spec in seq[1:]:
            if spec.type == "embedding":
                raise SpecError(spec.where, "a second embedding: only the first block reads token ids",
                                "keep one `{type: embedding}`, first")  # fmt: skip
            if spec.type == "pool" and spec is not seq[-1]:
                raise SpecError(spec.where, "pooling turns the sequence into one vector, so it comes last in `seq:`",
                                "move the pool block to the end of `seq:`")  # fmt: skip
            if spec.type == "norm" and spec is not (seq[-2] if pool else seq[-1]):
                raise SpecError(spec.where, "a norm block is the final LayerNorm; transformer blocks normalize their own inputs",
                                "move it to the end of `seq:` (before the pool)")  # fmt: skip
        if self.model.kind == "lm" and pool is not None:
            raise SpecError(pool.where, "a language model predicts a token at every position; pooling would lose them",
                            "remove the pool block (use `kind: seq` for one output per sequence)")  # fmt: skip
        if self.model.kind == "seq" and pool is None:
            raise SpecError("model.seq", "kind `seq` makes one output per sequence, but `seq:` does not end in a pool",
                            "add `{type: pool, mode: mean}` at the end of `seq:`")  # fmt: skip
        if pool is not None and pool.mode == "cls" and ({"gru", "lstm"} & set(names)):
            raise SpecError(pool.where, "a class token at position 0 only collects information through attention; "
                            "a recurrent layer's output there has seen only that token",
                            "use `mode: mean` or `mode: last` with recurrent layers")  # fmt: skip

    def _check_heads(self, spec, width: int, trail: list[str]) -> None:
        if width % spec.heads:
            divisors = [d for d in range(1, width + 1) if width % d == 0]
            nearest = sorted(sorted(divisors, key=lambda d: abs(d - spec.heads))[:3])
            raise SpecError(
                f"{spec.where}.heads",
                f"{width} features cannot be split into {spec.heads} heads: {width} / {spec.heads} = {width / spec.heads:g}",
                f"use a number of heads that divides {width}, e.g. {', '.join(map(str, nearest))}",
                ["shapes: " + " -> ".join(trail)],
            )

    def _warn_sequence(self, seq: list, pool, final_norm: Layer | None) -> None:
        first = seq[0]
        order_aware = first.position == "learned"
        for spec in seq[1:]:
            if spec.type in ("gru", "lstm"):
                order_aware = True
            if spec.type == "transformer" and not order_aware:
                self.warn(spec.where, "attention without positional information treats the sequence as a set: "
                          "give the embedding `position: learned`, or put a recurrent layer first")  # fmt: skip
                break
        transformers = [spec for spec in seq if spec.type == "transformer"]
        if transformers and final_norm is None:
            self.warn(transformers[-1].where, "pre-norm transformer blocks leave their output unnormalized; "
                      "add `{type: norm}` after them (nanoGPT's ln_f)")  # fmt: skip
        recurrent = [spec for spec in seq if spec.type in ("gru", "lstm")]
        if pool is not None and pool.mode == "last" and recurrent and recurrent[-1].bidirectional:
            self.warn(pool.where, "the backward direction's output at the last position has read one token; "
                      "use `mode: mean` after a bidirectional layer")  # fmt: skip

    def _language_model(self, parts: list[Part], embed: Block, length: int, width: int) -> Plan:
        model = self.model
        assert model.vocab is not None
        lm_head = replace(
            L.linear(width, model.vocab, False, role="lm_head"), out_shape=(length, model.vocab)
        )
        shared = 0
        if model.tie_embeddings:
            embed_width = embed.layers[0].args[1]
            if embed_width != width:
                raise SpecError(
                    "model.tie_embeddings",
                    f"the output layer reads {width} features but the token embedding has {embed_width}: "
                    "tied weights need one size",
                    f"make the last block output {embed_width} features, or remove `tie_embeddings:`",
                )
            shared = lm_head.params
        doc = "Next-token logits at every position" + (", tied to embed.wte" if shared else "")
        parts.append(Part("lm_head", doc, (length, width), (lm_head,), sequential=False))
        return self.plan(parts, (length, model.vocab), vocab=model.vocab, shared_params=shared)

    def _head(self, parts: list[Part], width: int) -> Plan:
        model = self.model
        shape: Shape = (width,)
        linears = []
        for i, b in enumerate(model.mlp):
            source = (
                f"the pool outputs {shape[0]}"
                if i == 0
                else f"{model.mlp[i - 1].where} outputs {shape[0]}"
            )
            linears.append(self.stack.linear_block(b, shape, source))
            shape = linears[-1].out_shape
        if len(linears) > 1:
            parts.append(Part("trunk", "Hidden layers.", linears[0].in_shape, tuple(linears[:-1])))
        parts.append(self.output_part(model.mlp[-1], linears[-1].in_shape[0]))
        head = parts[-1].items[0]
        return self.plan(parts, head.out_shape, vocab=model.vocab)


BUILDERS: dict[str, type[Builder]] = {
    "mlp": HeadBuilder,
    "cnn": HeadBuilder,
    "autoencoder": AutoencoderBuilder,
    "vae": VAEBuilder,
    "gan": GANBuilder,
    "lm": SequenceBuilder,
    "seq": SequenceBuilder,
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
