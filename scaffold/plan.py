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
from scaffold.layers import Arg, Layer, Shape, call, fmt_dims, fmt_shape
from scaffold.spec import HeadSpec, TrainSpec

# Block classes the generated model.py defines (see the template), in definition order.
BLOCK_CLASSES = (
    "LinearBlock",
    "ResidualLinearBlock",
    "ConvBlock",
    "ResidualConvBlock",
    "UpBlock",
    "ResidualUpBlock",
    "TokenEmbedding",
    "TransformerBlock",
    "RecurrentBlock",
)
# Small modules of the generated model.py besides the blocks.
HELPER_CLASSES = ("Gate", "Scale", "SelfAttention", "MLP", "MeanPool", "LastPool", "ClsTokenPool")


@dataclass(frozen=True)
class Block:
    """A block of the generated model: its class, constructor arguments, and the layers
    that constructor builds (named as the class names them)."""

    cls: str  # one of BLOCK_CLASSES
    where: str  # spec location ("model.conv[1]"), or the module path of a derived block
    in_shape: Shape
    layers: tuple[Layer, ...]
    args: tuple[Arg, ...] = ()
    note: str = ""  # e.g. "mirrors model.conv[1]"
    out: Shape | None = None  # the output, where it is not the last layer's
    is_block = True

    @property
    def out_shape(self) -> Shape:
        return self.out if self.out is not None else self.layers[-1].out_shape

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers if "." not in layer.role)

    @property
    def code(self) -> str:
        return call(self.cls, self.args)

    def top_layers(self) -> tuple[Layer, ...]:
        """The block's direct children (a projection shortcut counts once)."""
        return tuple(layer for layer in self.layers if "." not in layer.role)


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
    container: str = "Sequential"  # or "ModuleList": items that forward passes one by one

    @property
    def is_dict(self) -> bool:
        return bool(self.keys)

    @property
    def out_shape(self) -> Shape:
        return self.items[-1].out_shape

    @property
    def params(self) -> int:
        return sum(item.params for item in self.items)

    def groups(self) -> list[tuple[Item, int, str]]:
        """Runs of identical items (one spec entry with `layers: 6`): (item, count, label)."""
        out: list[tuple[Item, int, str]] = []
        for item in self.items:
            label = item.where.split(" layer ")[0] if isinstance(item, Block) else ""
            if (
                out
                and isinstance(item, Block)
                and out[-1][0].code == item.code
                and out[-1][2] == label
            ):
                out[-1] = (out[-1][0], out[-1][1] + 1, label)
            else:
                out.append((item, 1, label))
        return out

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
    vocab: int | None = None  # sequence kinds
    shared_params: int = 0  # counted in two parts but one tensor (a tied output layer)
    warnings: tuple[SpecWarning, ...] = field(default=())

    @property
    def class_name(self) -> str:
        """CamelCase model class name from the project name (conv-vae -> ConvVae)."""
        name = "".join(word.capitalize() for word in self.project.replace("-", "_").split("_"))
        return name + "Model" if name in BLOCK_CLASSES + HELPER_CLASSES else name

    @property
    def ndim(self) -> int:
        """Spatial dimensions of the input (0 for vectors)."""
        return len(self.input_shape) - 1

    @property
    def params(self) -> int:
        return sum(part.params for part in self.parts) - self.shared_params

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
        return {layer.op for _, layer, _ in self.layers()}

    @property
    def uses_partial(self) -> bool:
        """Whether a block's act_layer is a functools.partial (a LeakyReLU slope, a dim)."""
        return any(
            isinstance(arg, tuple) and str(arg[1]).startswith("partial(")
            for _, _, item in self.items()
            if isinstance(item, Block)
            for arg in item.args
        )

    def block_kwargs(self, cls: str) -> set[str]:
        """The keyword arguments the model passes to a block class (its optional features)."""
        return {
            arg[0]
            for _, _, item in self.items()
            if isinstance(item, Block) and item.cls == cls
            for arg in item.args
            if isinstance(arg, tuple) and len(arg) == 2 and isinstance(arg[0], str)
        }

    @property
    def logits_output(self) -> bool:
        """A reconstruction model whose decoder ends in a sigmoid returns logits from forward
        (the loss is BCE-with-logits, safe under bf16); decode/reconstruct apply the sigmoid."""
        return self.kind in ("autoencoder", "vae") and self.output_activation == "sigmoid"

    def items(self) -> list[tuple[str, Part, Item]]:
        """(module path, part, item) for every item of every part, in forward order."""
        rows = []
        for part in self.parts:
            if not part.sequential:
                rows.append((part.name, part, part.items[0]))
                continue
            rows += [(f"{part.name}.{key}", part, item) for key, item in part.named_items()]
        return rows

    def layers(self) -> list[tuple[str, Layer, Item]]:
        """(module path, layer, the item it belongs to) for every torch layer of the model."""
        rows = []
        for path, _, item in self.items():
            if isinstance(item, Block):
                rows += [(f"{path}.{layer.role}", layer, item) for layer in item.layers]
            else:
                rows.append((path, item, item))
        return rows

    def module_shapes(self) -> list[tuple[str, Shape]]:
        """(module path in named_modules(), output shape) for every layer and block of the model.

        The paths follow the generated code: parts are attributes, sequential items are
        numbered (or keyed in a ModuleDict), layers inside a block are attributes named by role.
        """
        rows: list[tuple[str, Shape]] = []
        for path, _, item in self.items():
            if isinstance(item, Block):
                rows += [
                    (f"{path}.{layer.role}", layer.out_shape)
                    for layer in item.layers
                    if layer.op != "Parameter"
                ]
            rows.append((path, item.out_shape))
        return rows

    @property
    def num_layers(self) -> int:
        containers = ("Sequential", "Parameter", "SelfAttention", "MLP")
        return sum(1 for _, layer, _ in self.layers() if layer.op not in containers)

    def summary(self) -> str:
        """One line: what the model maps to what, and its size."""
        return (
            f"{self.project}: {self.kind}, {fmt_shape(self.input_shape)} -> "
            f"{fmt_shape(self.output_shape)}, {self.num_layers} layers, {self.params:,} parameters"
        )


# Shorter keyword names for the `show` table.
SHORT_KEYWORDS = {
    "kernel_size": "k",
    "stride": "s",
    "padding": "p",
    "output_padding": "op",
    "dilation": "d",
}


def format_table(plan: Plan, width: int = 100) -> str:
    """The `scaffold show` table: module path, layer, output shape, params; totals.

    Rows are named by module path (`features.0.conv`), the names of model.py, state dicts,
    `--freeze` and fine-tuning; a block's row says which spec entry made it."""
    rows: list[tuple[str, str, str, str]] = [("input", "", fmt_shape(plan.input_shape), "")]
    for path, _, item in plan.items():
        if isinstance(item, Block):
            what = f"{item.cls} ({item.note or item.where})"
            rows.append((path, what, fmt_shape(item.out_shape), _count(item.params)))
            for layer in item.layers:
                if layer.op == "Sequential":
                    continue
                shown = call(layer.op, layer.args, short=SHORT_KEYWORDS)
                rows.append(
                    (
                        f"  {path}.{layer.role}",
                        shown,
                        fmt_shape(layer.out_shape),
                        _count(layer.params),
                    )
                )
        else:
            shown = call(item.op, item.args, short=SHORT_KEYWORDS)
            rows.append((path, shown, fmt_shape(item.out_shape), _count(item.params)))
    header = ("module", "layer", "output shape", "params")
    fixed = [max(len(r[i]) for r in rows + [header]) for i in range(4)]
    room = width - (fixed[0] + fixed[2] + fixed[3] + 6)  # the layer column gets the rest
    fixed[1] = max(12, min(fixed[1], room))
    rule = tuple("-" * w for w in fixed)
    lines = [_row(header, fixed), _row(rule, fixed)]
    lines += [_row((r[0], _clip(r[1], fixed[1]), r[2], r[3]), fixed) for r in rows]
    lines.append(_row(rule, fixed))
    frozen = sum(part.params for part in plan.parts if part.name in plan.train.freeze)
    lines.append(
        f"total: {plan.params:,} parameters ({plan.params * 4 / 2**20:.2f} MiB as float32): "
        f"{plan.params - frozen:,} trainable, {frozen:,} frozen"
    )
    lines.append(f"input {fmt_dims(plan.input_shape)} -> output {fmt_dims(plan.output_shape)}")
    return "\n".join(line.rstrip() for line in lines)


def _count(params: int) -> str:
    return f"{params:,}" if params else "-"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _row(cells: tuple[str, ...], widths: list[int]) -> str:
    path, layer, shape, params = cells
    return f"{path:<{widths[0]}}  {layer:<{widths[1]}}  {shape:<{widths[2]}}  {params:>{widths[3]}}"
