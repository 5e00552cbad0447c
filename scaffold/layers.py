"""Layers: one torch layer each, as an operation with its arguments, its output shape and
its parameter count.

Shapes are per sample (no batch dimension). The formulas are torch's own:

* Conv / pooling:  out = floor((in + 2p - d(k-1) - 1) / s) + 1
* ConvTranspose:   out = (in - 1)s - 2p + d(k-1) + output_padding + 1

A :class:`Layer` holds data (``op="Conv2d"``, ``args=(1, 32, ("kernel_size", 3))``); the
template, ``scaffold show`` and the tests all format that same data with :func:`call`.
Nothing here imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Union

Shape = tuple[int, ...]


class Code(str):
    """An argument that is Python code, written as is (``nn.BatchNorm2d``), not quoted."""


Value = Union[int, float, bool, str, tuple, None, Code]
Arg = Union[Value, tuple[str, Value]]  # a positional value, or (keyword, value)

# Activation name -> (torch class, positional arguments).
ACTIVATIONS = {
    "relu": "ReLU",
    "leaky_relu": "LeakyReLU",
    "gelu": "GELU",
    "silu": "SiLU",
    "elu": "ELU",
    "tanh": "Tanh",
    "sigmoid": "Sigmoid",
    "softmax": "Softmax",
    "log_softmax": "LogSoftmax",
}
DEFAULT_SLOPE = 0.01  # torch's LeakyReLU default
# Modules the generated model.py defines itself, and a block's nn.Parameter.
LOCAL_CLASSES = (
    "Scale",
    "Gate",
    "SelfAttention",
    "MLP",
    "MeanPool",
    "LastPool",
    "ClsTokenPool",
    "Parameter",
)


def fmt_value(value: Value) -> str:
    if isinstance(value, Code):
        return str(value)
    if isinstance(value, tuple):
        return "(" + ", ".join(map(fmt_value, value)) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, str):
        return '"' + value + '"'
    return repr(value)


def fmt_args(args: tuple[Arg, ...], short: dict[str, str] | None = None) -> str:
    """Constructor arguments: positional values, then keyword=value pairs."""
    out = []
    for arg in args:
        if (
            isinstance(arg, tuple)
            and len(arg) == 2
            and isinstance(arg[0], str)
            and not isinstance(arg[0], Code)
        ):
            key = short.get(arg[0], arg[0]) if short else arg[0]
            out.append(f"{key}={fmt_value(arg[1])}")
        else:
            out.append(fmt_value(arg))
    return ", ".join(out)


def call(
    op: str, args: tuple[Arg, ...], prefix: str = "", short: dict[str, str] | None = None
) -> str:
    """``nn.Conv2d(1, 32, kernel_size=3)`` from ("Conv2d", (1, 32, ("kernel_size", 3)))."""
    return f"{prefix}{op}({fmt_args(args, short)})"


@dataclass(frozen=True)
class Layer:
    """One torch layer: its attribute name, torch class, arguments, output shape and size."""

    role: str  # attribute name inside its block: conv, norm, act, pool, up, drop, fc...
    op: str  # torch class name, e.g. Conv2d (or a class of the generated model: Scale)
    args: tuple[Arg, ...]
    out_shape: Shape
    params: int = 0
    is_block = False

    @property
    def torch_class(self) -> bool:
        """False for what the generated model defines itself (Scale, Gate, SequencePool, a
        Parameter)."""
        return self.op not in LOCAL_CLASSES

    @property
    def code(self) -> str:
        """The constructor call as the generated model writes it."""
        return call(self.op, self.args, prefix="nn." if self.torch_class else "")


def fmt_shape(shape: Shape, batch: str = "B") -> str:
    """(B, 32, 14, 14)"""
    return "(" + ", ".join([batch, *map(str, shape)]) + ")"


def fmt_dims(shape: Shape) -> str:
    """32 x 14 x 14"""
    return " x ".join(map(str, shape))


def arg(values: tuple[int, ...]) -> int | tuple[int, ...]:
    """A scalar when all values agree (torch broadcasts it), else a tuple."""
    return values[0] if len(set(values)) == 1 else tuple(values)


def conv_out(size: int, k: int, s: int, p: int, d: int = 1) -> int:
    """torch's output length of a convolution or pooling window (ceil_mode=False)."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def conv_transpose_out(size: int, k: int, s: int, p: int, d: int, output_padding: int) -> int:
    """torch's output length of a transposed convolution."""
    return (size - 1) * s - 2 * p + d * (k - 1) + output_padding + 1


def conv_arithmetic(size: int, k: int, s: int, p: int, d: int) -> str:
    """The formula with numbers filled in, for error messages."""
    return f"floor(({size} + 2*{p} - {d}*({k}-1) - 1) / {s}) + 1 = {conv_out(size, k, s, p, d)}"


# --------------------------------------------------------------------------- constructors


def _kw(name: str, value: Any, default: Any) -> tuple[tuple[str, Any], ...]:
    """A keyword argument, left out when it equals torch's default."""
    return () if value == default else ((name, value),)


def linear(in_features: int, out_features: int, bias: bool, role: str = "fc") -> Layer:
    params = in_features * out_features + (out_features if bias else 0)
    args = (in_features, out_features, *_kw("bias", bias, True))
    return Layer(role, "Linear", args, (out_features,), params)


@dataclass(frozen=True)
class ConvGeometry:
    """Kernel, stride, padding and dilation of a conv, one value per spatial dimension."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]

    def out(self, spatial: Shape) -> Shape:
        return tuple(
            conv_out(n, k, s, p, d)
            for n, k, s, p, d in zip(spatial, self.kernel, self.stride, self.padding, self.dilation)
        )

    def transpose_out(self, spatial: Shape, output_padding: tuple[int, ...]) -> Shape:
        return tuple(
            conv_transpose_out(n, k, s, p, d, o)
            for n, k, s, p, d, o in zip(
                spatial, self.kernel, self.stride, self.padding, self.dilation, output_padding
            )
        )

    def block_args(self, output_padding: tuple[int, ...] = ()) -> tuple[Arg, ...]:
        """A block's geometry arguments: the kernel size positional, as in torchvision."""
        kernel, *rest = self.kwargs(output_padding)
        return (kernel[1], *rest)

    def kwargs(self, output_padding: tuple[int, ...] = ()) -> tuple[tuple[str, Any], ...]:
        """Keyword arguments that differ from torch's defaults (kernel_size is always given)."""
        ones = (1,) * len(self.kernel)
        return (
            ("kernel_size", arg(self.kernel)),
            *_kw("stride", arg(self.stride), arg(ones)),
            *_kw("padding", arg(self.padding), 0),
            *(_kw("output_padding", arg(output_padding), 0) if output_padding else ()),
            *_kw("dilation", arg(self.dilation), arg(ones)),
        )


def conv(
    ndim: int, in_shape: Shape, out_channels: int, g: ConvGeometry, bias: bool, role: str = "conv"
) -> Layer:
    spatial = g.out(in_shape[1:])
    params = out_channels * in_shape[0] * math.prod(g.kernel) + (out_channels if bias else 0)
    args = (in_shape[0], out_channels, *g.kwargs(), *_kw("bias", bias, True))
    return Layer(role, f"Conv{ndim}d", args, (out_channels, *spatial), params)


def conv_transpose(
    ndim: int,
    in_shape: Shape,
    out_channels: int,
    g: ConvGeometry,
    output_padding: tuple[int, ...],
    bias: bool,
    role: str = "conv",
) -> Layer:
    spatial = g.transpose_out(in_shape[1:], output_padding)
    params = in_shape[0] * out_channels * math.prod(g.kernel) + (out_channels if bias else 0)
    args = (in_shape[0], out_channels, *g.kwargs(output_padding), *_kw("bias", bias, True))
    return Layer(role, f"ConvTranspose{ndim}d", args, (out_channels, *spatial), params)


def pool(
    ndim: int,
    in_shape: Shape,
    kind: str,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
) -> Layer:
    spatial = tuple(
        conv_out(n, k, s, p) for n, k, s, p in zip(in_shape[1:], kernel, stride, padding)
    )
    op = f"{'Max' if kind == 'max' else 'Avg'}Pool{ndim}d"
    args = (
        arg(kernel),
        *(() if stride == kernel else (("stride", arg(stride)),)),
        *_kw("padding", arg(padding), 0),
    )
    return Layer("pool", op, args, (in_shape[0], *spatial))


def upsample(in_shape: Shape, size: tuple[int, ...]) -> Layer:
    """Undo a pooling layer: nearest-neighbour upsampling to the exact recorded size."""
    return Layer("up", "Upsample", (("size", tuple(size)),), (in_shape[0], *size))


def norm_op(kind: str, ndim: int) -> str:
    """The torch class of a norm over channels (BatchNorm{n}d) or features (LayerNorm)."""
    return "LayerNorm" if kind == "layer" else f"BatchNorm{max(ndim, 1)}d"


def norm(kind: str, shape: Shape, role: str = "norm") -> Layer:
    """BatchNorm over channels (or features), or LayerNorm over features."""
    return Layer(role, norm_op(kind, len(shape) - 1), (shape[0],), shape, 2 * shape[0])


def activation(name: str, shape: Shape, slope: float = DEFAULT_SLOPE) -> Layer:
    return Layer("act", ACTIVATIONS[name], activation_args(name, slope), shape)


def activation_args(name: str, slope: float = DEFAULT_SLOPE) -> tuple[Arg, ...]:
    if name == "leaky_relu" and slope != DEFAULT_SLOPE:
        return (slope,)
    if name in ("softmax", "log_softmax"):
        return (("dim", 1),)
    return ()


def activation_layer(name: str, slope: float = DEFAULT_SLOPE) -> Code:
    """What a block's ``act_layer=`` argument is: a class, or a partial with its arguments."""
    args = activation_args(name, slope)
    op = ACTIVATIONS[name]
    return Code(f"partial(nn.{op}, {fmt_args(args)})" if args else f"nn.{op}")


def dropout(p: float, shape: Shape) -> Layer:
    return Layer("drop", "Dropout", (p,), shape)


def flatten(in_shape: Shape) -> Layer:
    return Layer("flatten", "Flatten", (), (math.prod(in_shape),))


def unflatten(shape: Shape) -> Layer:
    return Layer("unflatten", "Unflatten", (1, tuple(shape)), shape)


def scale(shape: Shape) -> Layer:
    """A learnable per-feature scale (an nn.Parameter of ones), defined in the generated model."""
    return Layer("scale", "Scale", (shape[0],), shape, shape[0])


def embedding(num: int, features: int, shape: Shape, role: str) -> Layer:
    """nn.Embedding(num, features): a table of num vectors; shape is what the model sees."""
    return Layer(role, "Embedding", (num, features), shape, num * features)


def layer_norm(features: int, shape: Shape, bias: bool, role: str) -> Layer:
    args = (features, *_kw("bias", bias, True))
    return Layer(role, "LayerNorm", args, shape, features * (2 if bias else 1))


def recurrent(
    kind: str,
    in_features: int,
    hidden: int,
    layers: int,
    bidirectional: bool,
    dropout: float,
    shape: Shape,
) -> Layer:
    """nn.GRU / nn.LSTM with batch_first; its output (B, T, hidden * directions)."""
    gates = 3 if kind == "gru" else 4
    directions = 2 if bidirectional else 1
    params = 0
    for layer in range(layers):
        width = in_features if layer == 0 else hidden * directions
        params += directions * gates * (hidden * width + hidden * hidden + 2 * hidden)
    args = (
        in_features,
        hidden,
        *_kw("num_layers", layers, 1),
        ("batch_first", True),
        *_kw("dropout", dropout, 0.0),
        *_kw("bidirectional", bidirectional, False),
    )
    return Layer("rnn", "GRU" if kind == "gru" else "LSTM", args, shape, params)


def parameter(role: str, shape: Shape, params: int) -> Layer:
    """An nn.Parameter of a block (a class token): counted, but not a module."""
    return Layer(role, "Parameter", (), shape, params)
