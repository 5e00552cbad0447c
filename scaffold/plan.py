"""Plan: the validated network, block by block, with every shape inferred.

The plan is the single source of truth: ``scaffold show`` prints it, the
Copier template renders it into ``model.py`` and the generated tests, and the
shape comments in generated code come from it. Nothing downstream recomputes a
shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from scaffold.errors import SpecWarning
from scaffold.layers import Layer, Shape, fmt_dims, fmt_shape
from scaffold.spec import HeadSpec, TrainSpec

# Block classes the generated model.py defines (see the template).
BLOCK_CLASSES = (
    "LinearBlock",
    "GatedLinearBlock",
    "ResidualLinearBlock",
    "ConvBlock",
    "ResidualConvBlock",
    "UpBlock",
    "ResidualUpBlock",
)


@dataclass(frozen=True)
class Block:
    """A reusable block: a main layer plus optional norm / activation / pool / dropout."""

    cls: str  # one of BLOCK_CLASSES
    where: str  # spec location, e.g. "model.conv[1]", or "decoder[0]" for a mirrored block
    in_shape: Shape
    layers: tuple[Layer, ...]
    note: str = ""  # e.g. "mirrors model.conv[1]"
    is_block = True

    @property
    def out_shape(self) -> Shape:
        return self.layers[-1].out_shape

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)


Item = Union[Block, Layer]


@dataclass(frozen=True)
class Part:
    """An attribute of the generated model: an nn.Sequential of items, or one layer."""

    name: str  # attribute name, e.g. "encoder", "fc_mu"
    doc: str
    in_shape: Shape
    items: tuple[Item, ...]
    sequential: bool = True
    keys: tuple[str, ...] = ()  # names of the items when the part is an nn.ModuleDict

    @property
    def is_dict(self) -> bool:
        return bool(self.keys)

    @property
    def out_shape(self) -> Shape:
        return self.items[-1].out_shape

    @property
    def params(self) -> int:
        return sum(item.params for item in self.items)

    def named_items(self) -> list[tuple[str, Item]]:
        """(name in named_modules() under this part, item): indices, or keys of a ModuleDict."""
        names = self.keys or [str(i) for i in range(len(self.items))]
        return list(zip(names, self.items))


@dataclass(frozen=True)
class Plan:
    project: str
    kind: str
    task: str
    input_shape: Shape
    output_shape: Shape  # of the model's main output (logits, reconstruction)
    parts: tuple[Part, ...]
    train: TrainSpec
    latent: int | None = None
    output_activation: str = "none"
    heads: tuple[HeadSpec, ...] = ()  # multi-task outputs (task "multitask")
    warnings: tuple[SpecWarning, ...] = field(default=())

    @property
    def class_name(self) -> str:
        """CamelCase model class name from the project name (conv-vae -> ConvVae)."""
        name = "".join(word.capitalize() for word in self.project.replace("-", "_").split("_"))
        return name + "Model" if name in BLOCK_CLASSES + ("Scale",) else name

    @property
    def ndim(self) -> int:
        """Spatial dimensions of the input (0 for vectors)."""
        return len(self.input_shape) - 1

    @property
    def params(self) -> int:
        return sum(part.params for part in self.parts)

    @property
    def num_outputs(self) -> int:
        return self.output_shape[0]

    def part(self, name: str) -> Part:
        for part in self.parts:
            if part.name == name:
                return part
        raise KeyError(name)

    def has_part(self, name: str) -> bool:
        return any(part.name == name for part in self.parts)

    def block_classes(self) -> list[str]:
        """The block classes the model uses, in definition order."""
        used = {item.cls for part in self.parts for item in part.items if isinstance(item, Block)}
        return [cls for cls in BLOCK_CLASSES if cls in used]

    def layer_ops(self) -> set[str]:
        ops = set()
        for part in self.parts:
            for item in part.items:
                for layer in item.layers if isinstance(item, Block) else (item,):
                    ops.add(layer.op)
        return ops

    def module_shapes(self) -> list[tuple[str, Shape]]:
        """(module path in named_modules(), output shape) for every layer of the model.

        The paths follow the generated code: parts are attributes, sequential
        items are numbered, layers inside a block are attributes named by role.
        """
        rows: list[tuple[str, Shape]] = []
        for part in self.parts:
            if not part.sequential:
                rows.append((part.name, part.out_shape))
                continue
            for i, item in part.named_items():
                if isinstance(item, Block):
                    for layer in item.layers:
                        path = f"{part.name}.{i}.{layer.role}"
                        rows.append((path, layer.out_shape))
                        if layer.op == "Sequential":  # a projection shortcut: conv, then norm
                            rows += [(f"{path}.0", layer.out_shape), (f"{path}.1", layer.out_shape)]
                    rows.append((f"{part.name}.{i}", item.out_shape))
                else:
                    rows.append((f"{part.name}.{i}", item.out_shape))
        return rows

    @property
    def num_layers(self) -> int:
        return sum(len(item.layers) if isinstance(item, Block) else 1 for part in self.parts for item in part.items)

    def summary(self) -> str:
        """One line: what the model maps to what, and its size."""
        return (
            f"{self.project}: {self.kind}, {fmt_shape(self.input_shape)} -> {fmt_shape(self.output_shape)}, "
            f"{self.num_layers} layers, {self.params:,} parameters"
        )


def format_table(plan: Plan, width: int = 100) -> str:
    """The `scaffold show` table: index, block, layer, output shape, params; totals."""
    rows: list[tuple[str, str, str, str, str]] = []
    index = 0
    rows.append(("", "input", "", fmt_shape(plan.input_shape), ""))
    for part in plan.parts:
        for item in part.items:
            layers = item.layers if isinstance(item, Block) else (item,)
            where = item.where if isinstance(item, Block) else part.name
            if not part.sequential:
                where = part.name
            for j, layer in enumerate(layers):
                rows.append(
                    (
                        str(index),
                        where if j == 0 else "",
                        _short(layer.code),
                        fmt_shape(layer.out_shape),
                        f"{layer.params:,}" if layer.params else "-",
                    )
                )
                index += 1
    header = ("#", "block", "layer", "output shape", "params")
    fixed = [max(len(r[i]) for r in rows + [header]) for i in range(5)]
    # the layer column absorbs what is left of the width
    room = width - (fixed[0] + fixed[1] + fixed[3] + fixed[4] + 8)
    fixed[2] = max(12, min(fixed[2], room))
    lines = [_row(header, fixed), _row(tuple("-" * w for w in fixed), fixed)]
    lines += [_row((r[0], r[1], _clip(r[2], fixed[2]), r[3], r[4]), fixed) for r in rows]
    lines.append(_row(tuple("-" * w for w in fixed), fixed))
    lines.append(f"total: {plan.params:,} parameters ({plan.params * 4 / 2**20:.2f} MiB as float32)")
    lines.append(f"input {fmt_dims(plan.input_shape)} -> output {fmt_dims(plan.output_shape)}")
    return "\n".join(line.rstrip() for line in lines)


_ABBREVIATIONS = (
    ("output_padding=", "op="),
    ("kernel_size=", "k="),
    ("stride=", "s="),
    ("padding=", "p="),
    ("dilation=", "d="),
    (', mode="nearest"', ""),
)


def _short(code: str) -> str:
    """nn.Conv2d(1, 32, kernel_size=3, stride=2) -> Conv2d(1, 32, k=3, s=2)"""
    code = code[3:] if code.startswith("nn.") else code
    for long, short in _ABBREVIATIONS:
        code = code.replace(long, short)
    return code


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _row(cells: tuple[str, ...], widths: list[int]) -> str:
    idx, block, layer, shape, params = cells
    return f"{idx:>{widths[0]}}  {block:<{widths[1]}}  {layer:<{widths[2]}}  {shape:<{widths[3]}}  {params:>{widths[4]}}"
