"""Blocks: the reusable modules of a generated model, each built from sizes.

Every function here returns a :class:`~scaffold.plan.Block`: the generated class's name and
constructor arguments (``ConvBlock(1, 32, kernel_size=3, norm_layer=nn.BatchNorm2d)``), and
the torch layers that constructor creates, named as the class names them, with their shapes
and parameter counts. The generated classes (templates/project/.../model.py.jinja) build
exactly these layers; torch checks that in the tests.

A block's norm, activation and dropout come as a :class:`Style`. A conv or linear layer
followed by BatchNorm has no bias (the norm's shift replaces it) unless the spec says
``bias: true``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from scaffold import layers as L
from scaffold.layers import Code, ConvGeometry, Layer, Shape
from scaffold.plan import Block


@dataclass(frozen=True)
class Style:
    """What follows a block's main layer: norm, activation (with its slope), dropout."""

    norm: str = "none"
    activation: str = "none"
    slope: float = L.DEFAULT_SLOPE
    dropout: float = 0.0

    def bias(self, explicit: bool | None) -> bool:
        """The main layer's bias: as written, else none before a norm (torchvision's rule)."""
        return explicit if explicit is not None else self.norm == "none"


PLAIN = Style()


def _style_args(style: Style, ndim: int, bias: bool) -> tuple:
    """The keyword arguments after a block's sizes; `bias` only where it is not the block's
    own default (none before a norm, else one)."""
    args: list = []
    if bias != style.bias(None):
        args.append(("bias", bias))
    if style.norm != "none":
        args.append(("norm_layer", Code(f"nn.{L.norm_op(style.norm, ndim)}")))
    if style.activation != "none":
        args.append(("act_layer", L.activation_layer(style.activation, style.slope)))
    if style.dropout:
        args.append(("dropout", style.dropout))
    return tuple(args)


def _tail(style: Style, shape: Shape, scale: bool = False) -> list[Layer]:
    """norm, [scale], act, drop: the layers after a plain block's main layer."""
    layers = []
    if style.norm != "none":
        layers.append(L.norm(style.norm, shape))
    if scale:
        layers.append(L.scale(shape))
    if style.activation != "none":
        layers.append(L.activation(style.activation, shape, style.slope))
    if style.dropout:
        layers.append(L.dropout(style.dropout, shape))
    return layers


# --------------------------------------------------------------------------- linear


def linear_block(
    where: str,
    in_features: int,
    out_features: int,
    style: Style = PLAIN,
    bias: bool | None = None,
    gate: bool = False,
    scale: bool = False,
    note: str = "",
) -> Block:
    """LinearBlock: fc, [gate], [norm], [scale], [act], [drop]."""
    use_bias = style.bias(bias)
    shape = (out_features,)
    layers = [L.linear(in_features, out_features, use_bias)]
    if gate:  # Gate(features): x * sigmoid(fc(x)), with its own Linear
        gate_fc = L.linear(out_features, out_features, True, role="gate.fc")
        layers += [Layer("gate", "Gate", (out_features,), shape, gate_fc.params), gate_fc]
    layers += _tail(style, shape, scale)
    args = (in_features, out_features, *_style_args(style, 0, use_bias))
    if gate:
        args += (("gate", True),)
    if scale:
        args += (("scale", True),)
    return Block("LinearBlock", where, (in_features,), tuple(layers), args, note)


def residual_linear_block(
    where: str,
    in_features: int,
    out_features: int,
    style: Style,
    bias: bool | None,
    scale: bool,
    note: str = "",
) -> Block:
    """ResidualLinearBlock: act(norm2(fc2(act(norm1(fc1(x))))) [* scale] + shortcut(x)), [drop]."""
    use_bias = style.bias(bias)
    shape = (out_features,)
    layers = [L.linear(in_features, out_features, use_bias, role="fc1")]
    if style.norm != "none":
        layers.append(L.norm(style.norm, shape, role="norm1"))
    if style.activation != "none":
        layers.append(L.activation(style.activation, shape, style.slope))
    layers.append(L.linear(out_features, out_features, use_bias, role="fc2"))
    if style.norm != "none":
        layers.append(L.norm(style.norm, shape, role="norm2"))
    if scale:
        layers.append(L.scale(shape))
    if in_features != out_features:
        layers.append(L.linear(in_features, out_features, False, role="shortcut"))
    if style.dropout:
        layers.append(L.dropout(style.dropout, shape))
    args = (in_features, out_features, *_style_args(style, 0, use_bias))
    if scale:
        args += (("scale", True),)
    return Block("ResidualLinearBlock", where, (in_features,), tuple(layers), args, note)


# --------------------------------------------------------------------------- conv


def _pool_module(pool: Layer) -> Code:
    return Code(pool.code)


def conv_block(
    where: str,
    ndim: int,
    in_shape: Shape,
    out_channels: int,
    g: ConvGeometry,
    style: Style,
    bias: bool | None,
    pool: Layer | None = None,
    note: str = "",
) -> Block:
    """ConvBlock: conv, [norm], [act], [pool], [drop]."""
    use_bias = style.bias(bias)
    first = L.conv(ndim, in_shape, out_channels, g, use_bias)
    layers = [first] + _tail(replace(style, dropout=0.0), first.out_shape)
    shape = first.out_shape
    if pool is not None:
        layers.append(pool)
        shape = pool.out_shape
    if style.dropout:
        layers.append(L.dropout(style.dropout, shape))
    args = (in_shape[0], out_channels, *g.block_args(), *_style_args(style, ndim, use_bias))
    if pool is not None:
        args += (("pool", _pool_module(pool)),)
    return Block("ConvBlock", where, in_shape, tuple(layers), _order(args), note)


def residual_conv_block(
    where: str,
    ndim: int,
    in_shape: Shape,
    out_channels: int,
    g: ConvGeometry,
    style: Style,
    bias: bool | None,
    pool: Layer | None = None,
    note: str = "",
) -> Block:
    """ResidualConvBlock, torchvision's BasicBlock: conv1, norm1, act, conv2, norm2, + shortcut."""
    use_bias = style.bias(bias)
    first = L.conv(ndim, in_shape, out_channels, g, use_bias, role="conv1")
    shape = first.out_shape
    ones = (1,) * ndim
    layers = [first]
    if style.norm != "none":
        layers.append(L.norm(style.norm, shape, role="norm1"))
    if style.activation != "none":
        layers.append(L.activation(style.activation, shape, style.slope))
    layers.append(
        L.conv(ndim, shape, out_channels, replace(g, stride=ones), use_bias, role="conv2")
    )
    if style.norm != "none":
        layers.append(L.norm(style.norm, shape, role="norm2"))
    if in_shape[0] != out_channels or any(s != 1 for s in g.stride):  # torchvision's downsample
        one = ConvGeometry(ones, g.stride, (0,) * ndim, ones)
        layers += _shortcut(L.conv(ndim, in_shape, out_channels, one, style.norm == "none"), style)
    if pool is not None:
        layers.append(pool)
    if style.dropout:
        layers.append(L.dropout(style.dropout, layers[-1].out_shape))
    args = (in_shape[0], out_channels, *g.block_args(), *_style_args(style, ndim, use_bias))
    if pool is not None:
        args += (("pool", _pool_module(pool)),)
    return Block("ResidualConvBlock", where, in_shape, tuple(layers), _order(args), note)


def _shortcut(layer: Layer, style: Style) -> list[Layer]:
    """The projection: a 1x1 (transposed) conv, then the block's BatchNorm if it has one.

    Recorded as ``shortcut`` (an nn.Sequential when there is a norm) plus its members."""
    if style.norm == "none":
        return [replace(layer, role="shortcut")]
    bn = L.norm(style.norm, layer.out_shape)
    seq = Layer("shortcut", "Sequential", (), layer.out_shape, layer.params + bn.params)
    return [seq, replace(layer, role="shortcut.0"), replace(bn, role="shortcut.1")]


def up_block(
    where: str,
    ndim: int,
    in_shape: Shape,
    target: Shape,
    g: ConvGeometry,
    style: Style,
    bias: bool | None,
    upsample: Shape | None = None,
    residual: bool = False,
    note: str = "",
) -> Block:
    """Invert a conv block: [Upsample to the pre-pool size], then a ConvTranspose landing
    exactly on `target` (output_padding picks the size), then the style.

    With residual, ResidualUpBlock: the transposed BasicBlock (ConvTranspose, norm, act,
    Conv, norm, plus a 1x1 ConvTranspose projection when the shape changes).
    """
    layers: list[Layer] = []
    shape = in_shape
    if upsample is not None:
        layers.append(L.upsample(shape, upsample))
        shape = (shape[0], *upsample)
    output_padding = tuple(
        want - L.conv_transpose_out(have, k, s, p, d, 0)
        for want, have, k, s, p, d in zip(
            target[1:], shape[1:], g.kernel, g.stride, g.padding, g.dilation
        )
    )
    for o, s, d in zip(output_padding, g.stride, g.dilation):
        if not (0 <= o and (o < s or o < d)):  # cannot happen for a valid encoder
            raise AssertionError(f"output_padding {o} out of range for stride {s}")
    use_bias = style.bias(bias)
    if not residual:
        layers.append(L.conv_transpose(ndim, shape, target[0], g, output_padding, use_bias))
        layers += _tail(style, target)
    else:
        ones = (1,) * ndim
        layers.append(
            L.conv_transpose(ndim, shape, target[0], g, output_padding, use_bias, role="conv1")
        )
        if style.norm != "none":
            layers.append(L.norm(style.norm, target, role="norm1"))
        if style.activation != "none":
            layers.append(L.activation(style.activation, target, style.slope))
        layers.append(
            L.conv(ndim, target, target[0], replace(g, stride=ones), use_bias, role="conv2")
        )
        if style.norm != "none":
            layers.append(L.norm(style.norm, target, role="norm2"))
        if shape[0] != target[0] or any(s != 1 for s in g.stride):
            # with "same" padding the 1x1 projection lands on target with conv1's output_padding
            one = ConvGeometry(ones, g.stride, (0,) * ndim, ones)
            projection = L.conv_transpose(
                ndim, shape, target[0], one, output_padding, style.norm == "none"
            )
            assert projection.out_shape == target, (projection.out_shape, target)
            layers += _shortcut(projection, style)
        if style.dropout:
            layers.append(L.dropout(style.dropout, target))
    args = (shape[0], target[0], *g.block_args(output_padding), *_style_args(style, ndim, use_bias))
    if upsample is not None:
        args += (("upsample", Code(layers[0].code)),)
    cls = "ResidualUpBlock" if residual else "UpBlock"
    return Block(cls, where, in_shape, tuple(layers), _order(args), note)


_KEYWORD_ORDER = ("bias", "norm_layer", "act_layer", "pool", "upsample", "dropout", "gate", "scale")


def _order(args: tuple) -> tuple:
    """Positional sizes, geometry keywords, then the style keywords in one fixed order."""
    positional = [
        a for a in args if not (isinstance(a, tuple) and len(a) == 2 and a[0] in _KEYWORD_ORDER)
    ]
    keywords = sorted(
        (a for a in args if isinstance(a, tuple) and len(a) == 2 and a[0] in _KEYWORD_ORDER),
        key=lambda a: _KEYWORD_ORDER.index(a[0]),
    )
    return tuple(positional + keywords)


# --------------------------------------------------------------------------- sequences


def token_embedding(
    where: str,
    vocab: int,
    features: int,
    context: int,
    positions: bool,
    dropout: float,
    cls_token: bool,
) -> Block:
    """TokenEmbedding: wte (token ids -> vectors), [cls_token], [wpe (learned positions)], [drop]."""
    length = context + (1 if cls_token else 0)
    shape = (length, features)
    layers = [L.embedding(vocab, features, (context, features), "wte")]
    if cls_token:
        layers.append(L.parameter("cls_token", (1, features), features))
    if positions:
        layers.append(L.embedding(length, features, shape, "wpe"))
    layers.append(L.dropout(dropout, shape))  # always there, as in nanoGPT (p may be 0)
    args: tuple = (vocab, features, context) if positions else (vocab, features)
    if dropout:
        args += (("dropout", dropout),)
    return Block("TokenEmbedding", where, (context,), tuple(layers), args, out=shape)


def transformer_block(
    where: str,
    length: int,
    features: int,
    heads: int,
    mlp_ratio: int,
    activation: str,
    dropout: float,
    bias: bool,
    causal: bool,
    note: str = "",
) -> Block:
    """TransformerBlock, nanoGPT's Block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""
    shape = (length, features)
    hidden = mlp_ratio * features
    c_attn = L.linear(features, 3 * features, bias, role="attn.c_attn")
    c_attn = replace(c_attn, out_shape=(length, 3 * features))
    attn_proj = replace(L.linear(features, features, bias, role="attn.c_proj"), out_shape=shape)
    c_fc = replace(L.linear(features, hidden, bias, role="mlp.c_fc"), out_shape=(length, hidden))
    mlp_proj = replace(L.linear(hidden, features, bias, role="mlp.c_proj"), out_shape=shape)
    attn_params = c_attn.params + attn_proj.params
    attn = [
        Layer("attn", "SelfAttention", (features, heads), shape, attn_params),
        c_attn,
        attn_proj,
        replace(L.dropout(dropout, shape), role="attn.resid_dropout"),
    ]
    mlp = [
        Layer("mlp", "MLP", (features, hidden), shape, c_fc.params + mlp_proj.params),
        c_fc,
        replace(L.activation(activation, (length, hidden)), role="mlp.act"),
        mlp_proj,
        replace(L.dropout(dropout, shape), role="mlp.dropout"),
    ]
    layers = [
        L.layer_norm(features, shape, bias, "ln_1"),
        *attn,
        L.layer_norm(features, shape, bias, "ln_2"),
        *mlp,
    ]
    args: tuple = (features, heads)
    if mlp_ratio != 4:
        args += (("mlp_ratio", mlp_ratio),)
    if dropout:
        args += (("dropout", dropout),)
    if not bias:
        args += (("bias", False),)
    if not causal:
        args += (("causal", False),)
    if activation != "gelu":
        args += (("act_layer", L.activation_layer(activation)),)
    return Block("TransformerBlock", where, shape, tuple(layers), args, note)


def recurrent_block(
    where: str,
    kind: str,
    length: int,
    in_features: int,
    hidden: int,
    layers: int,
    bidirectional: bool,
    dropout: float,
) -> Block:
    """RecurrentBlock: an nn.GRU or nn.LSTM over the sequence, returning every position's output."""
    out = (length, hidden * (2 if bidirectional else 1))
    rnn = L.recurrent(kind, in_features, hidden, layers, bidirectional, dropout, out)
    args: tuple = (
        in_features,
        hidden,
        ("rnn_layer", Code("nn.GRU" if kind == "gru" else "nn.LSTM")),
    )
    if layers != 1:
        args += (("num_layers", layers),)
    if bidirectional:
        args += (("bidirectional", True),)
    if dropout:
        args += (("dropout", dropout),)
    return Block("RecurrentBlock", where, (length, in_features), (rnn,), args)
