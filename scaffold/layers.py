"""Layers: one torch layer each, with its output shape and parameter count.

Shapes are per sample (no batch dimension). The formulas are torch's own:

* Conv / pooling:  out = floor((in + 2p - d(k-1) - 1) / s) + 1
* ConvTranspose:   out = (in - 1)s - 2p + d(k-1) + output_padding + 1

A :class:`Layer` knows how to write itself as a torch constructor call
(``nn.Conv2d(1, 32, kernel_size=3, stride=2, padding=1)``); that string is what
the template puts in the generated model. Nothing here imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Shape = tuple[int, ...]

ACTIVATION_CODE = {
    "relu": "nn.ReLU()",
    "leaky_relu": "nn.LeakyReLU(0.01)",
    "gelu": "nn.GELU()",
    "silu": "nn.SiLU()",
    "elu": "nn.ELU()",
    "tanh": "nn.Tanh()",
    "sigmoid": "nn.Sigmoid()",
    "softmax": "nn.Softmax(dim=1)",
    "log_softmax": "nn.LogSoftmax(dim=1)",
}


@dataclass(frozen=True)
class Layer:
    """One torch layer: the code that builds it, its output shape and parameter count."""

    role: str  # attribute name inside its block: conv, norm, act, pool, up, drop, linear...
    op: str  # torch class name, e.g. Conv2d
    code: str  # constructor call, e.g. "nn.Conv2d(1, 32, kernel_size=3)"
    out_shape: Shape
    params: int = 0
    is_block = False


def fmt_shape(shape: Shape, batch: str = "B") -> str:
    """(B, 32, 14, 14)"""
    return "(" + ", ".join([batch, *map(str, shape)]) + ")"


def fmt_dims(shape: Shape) -> str:
    """32 x 14 x 14"""
    return " x ".join(map(str, shape))


def _arg(values: tuple[int, ...]) -> str:
    """A scalar when all values agree (torch broadcasts it), else a tuple."""
    if len(set(values)) == 1:
        return str(values[0])
    return "(" + ", ".join(map(str, values)) + ")"


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


def linear(in_features: int, out_features: int, bias: bool) -> Layer:
    args = f"{in_features}, {out_features}" + ("" if bias else ", bias=False")
    params = in_features * out_features + (out_features if bias else 0)
    return Layer("linear", "Linear", f"nn.Linear({args})", (out_features,), params)


def _conv_args(
    in_channels: int,
    out_channels: int,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    bias: bool,
    output_padding: tuple[int, ...] = (),
) -> str:
    """Constructor arguments of a (transposed) convolution, leaving out torch's defaults."""
    args = [str(in_channels), str(out_channels), f"kernel_size={_arg(kernel)}"]
    if any(s != 1 for s in stride):
        args.append(f"stride={_arg(stride)}")
    if any(padding):
        args.append(f"padding={_arg(padding)}")
    if any(output_padding):
        args.append(f"output_padding={_arg(output_padding)}")
    if any(d != 1 for d in dilation):
        args.append(f"dilation={_arg(dilation)}")
    if not bias:
        args.append("bias=False")
    return ", ".join(args)


def conv(
    ndim: int,
    in_shape: Shape,
    out_channels: int,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    bias: bool,
) -> Layer:
    spatial = tuple(
        conv_out(n, k, s, p, d) for n, k, s, p, d in zip(in_shape[1:], kernel, stride, padding, dilation)
    )
    args = _conv_args(in_shape[0], out_channels, kernel, stride, padding, dilation, bias)
    params = out_channels * in_shape[0] * math.prod(kernel) + (out_channels if bias else 0)
    op = f"Conv{ndim}d"
    return Layer("conv", op, f"nn.{op}({args})", (out_channels, *spatial), params)


def conv_transpose(
    ndim: int,
    in_shape: Shape,
    out_channels: int,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    output_padding: tuple[int, ...],
    bias: bool,
) -> Layer:
    spatial = tuple(
        conv_transpose_out(n, k, s, p, d, op)
        for n, k, s, p, d, op in zip(in_shape[1:], kernel, stride, padding, dilation, output_padding)
    )
    args = _conv_args(in_shape[0], out_channels, kernel, stride, padding, dilation, bias, output_padding)
    params = in_shape[0] * out_channels * math.prod(kernel) + (out_channels if bias else 0)
    op = f"ConvTranspose{ndim}d"
    return Layer("conv", op, f"nn.{op}({args})", (out_channels, *spatial), params)


def pool(ndim: int, in_shape: Shape, kind: str, kernel: tuple[int, ...], stride: tuple[int, ...],
         padding: tuple[int, ...]) -> Layer:
    spatial = tuple(conv_out(n, k, s, p) for n, k, s, p in zip(in_shape[1:], kernel, stride, padding))
    op = f"{'Max' if kind == 'max' else 'Avg'}Pool{ndim}d"
    args = [f"kernel_size={_arg(kernel)}"]
    if stride != kernel:
        args.append(f"stride={_arg(stride)}")
    if any(padding):
        args.append(f"padding={_arg(padding)}")
    return Layer("pool", op, f"nn.{op}({', '.join(args)})", (in_shape[0], *spatial))


def upsample(in_shape: Shape, size: tuple[int, ...]) -> Layer:
    """Undo a pooling layer: nearest-neighbour upsampling to the exact recorded size."""
    size_arg = f"({size[0]},)" if len(size) == 1 else "(" + ", ".join(map(str, size)) + ")"
    return Layer("up", "Upsample", f'nn.Upsample(size={size_arg}, mode="nearest")', (in_shape[0], *size))


def norm(kind: str, shape: Shape) -> Layer:
    """BatchNorm over channels (or features), or LayerNorm over features."""
    channels = shape[0]
    if kind == "layer":
        return Layer("norm", "LayerNorm", f"nn.LayerNorm({channels})", shape, 2 * channels)
    ndim = max(len(shape) - 1, 1)
    op = f"BatchNorm{ndim}d"
    return Layer("norm", op, f"nn.{op}({channels})", shape, 2 * channels)


def activation(name: str, shape: Shape) -> Layer:
    code = ACTIVATION_CODE[name]
    return Layer("act", code[3 : code.index("(")], code, shape)


def dropout(p: float, shape: Shape) -> Layer:
    return Layer("drop", "Dropout", f"nn.Dropout(p={p!r})", shape)


def flatten(in_shape: Shape) -> Layer:
    return Layer("flatten", "Flatten", "nn.Flatten()", (math.prod(in_shape),))


def unflatten(shape: Shape) -> Layer:
    return Layer("unflatten", "Unflatten", f"nn.Unflatten(1, ({', '.join(map(str, shape))}))", shape)


def scale(shape: Shape) -> Layer:
    """A learnable per-feature scale (an nn.Parameter of ones), defined in the generated model."""
    return Layer("scale", "Scale", f"Scale({shape[0]})", shape, shape[0])


def linear_shortcut(in_features: int, out_features: int) -> Layer:
    """Projection for a residual linear block whose width changes."""
    return Layer(
        "shortcut", "Linear", f"nn.Linear({in_features}, {out_features}, bias=False)", (out_features,),
        in_features * out_features,
    )


def conv_shortcut(ndim: int, in_shape: Shape, out_shape: Shape, stride: tuple[int, ...], with_norm: bool) -> Layer:
    """1x1 projection (torchvision's downsample) for a residual conv block that changes shape."""
    conv_layer = conv(ndim, in_shape, out_shape[0], (1,) * ndim, stride, (0,) * ndim, (1,) * ndim, bias=not with_norm)
    assert conv_layer.out_shape == out_shape, (conv_layer.out_shape, out_shape)
    return _sequential_shortcut(conv_layer, out_shape, with_norm)


def conv_transpose_shortcut(ndim: int, in_shape: Shape, out_shape: Shape, stride: tuple[int, ...], with_norm: bool) -> Layer:
    """1x1 transposed projection for a mirrored residual block, landing on out_shape exactly."""
    output_padding = tuple(want - conv_transpose_out(have, 1, s, 0, 1, 0) for want, have, s in zip(out_shape[1:], in_shape[1:], stride))
    layer = conv_transpose(ndim, in_shape, out_shape[0], (1,) * ndim, stride, (0,) * ndim, (1,) * ndim, output_padding, bias=not with_norm)
    assert layer.out_shape == out_shape, (layer.out_shape, out_shape)
    return _sequential_shortcut(layer, out_shape, with_norm)


def _sequential_shortcut(layer: Layer, out_shape: Shape, with_norm: bool) -> Layer:
    if not with_norm:
        return Layer("shortcut", layer.op, layer.code, out_shape, layer.params)
    bn = norm("batch", out_shape)
    return Layer("shortcut", "Sequential", f"nn.Sequential({layer.code}, {bn.code})", out_shape, layer.params + bn.params)
