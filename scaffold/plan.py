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
from scaffold.layers import Arg, Code, Layer, Shape, call, fmt_dims, fmt_shape
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

    def ops_like(self, *prefixes: str) -> list[str]:
        """The torch layer classes of the model whose names start with a prefix (Conv, BatchNorm)."""
        return sorted(op for op in self.layer_ops() if op.startswith(prefixes))

    def model_classes(self) -> list[str]:
        """The classes model.py defines, in definition order: a block's options (Gate, Scale)
        before it, a TransformerBlock's parts with it, the pools over time last."""
        blocks = self.block_classes()
        ops = self.layer_ops()
        out: list[str] = []
        if "LinearBlock" in blocks:
            out.append("Gate")
        if {"LinearBlock", "ResidualLinearBlock"} & set(blocks):
            out.append("Scale")
        out += blocks
        out += [op for op in ("MeanPool", "LastPool", "ClsTokenPool") if op in ops]
        return out

    @property
    def uses_partial(self) -> bool:
        """Whether a block's act_layer is a functools.partial (a LeakyReLU slope, a dim)."""
        return any(
            isinstance(arg, tuple) and str(arg[1]).startswith("partial(")
            for _, _, item in self.items()
            if isinstance(item, Block)
            for arg in item.args
        )

    @property
    def sizes(self) -> Sizes:
        """The constructor arguments (or config fields) of the generated model, and the
        arguments of its layers that read them."""
        return model_sizes(self)

    def block_kwargs(self, cls: str) -> set[str]:
        """The keyword arguments the model passes to a block class. Read by templates up to
        0.2.0 only: `scaffold update` renders a project's old template version with this plan
        to find the user's edits, so what old templates read stays here."""
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


# --------------------------------------------------------------------------- sizes as code


@dataclass(frozen=True)
class ModelArg:
    """A constructor argument (or config field) of the generated model: what a user changes."""

    name: str  # in_channels, num_classes, latent_dim; or a config field: n_embd, vocab_size
    annotation: str
    default: str  # code: a module constant (NUM_CLASSES) or a literal from the spec
    doc: str = ""


Subs = dict  # positional index (int) or keyword (str) -> code; "count": a ModuleList's length


def _is_keyword(arg: Arg) -> bool:
    return isinstance(arg, tuple) and len(arg) == 2 and isinstance(arg[0], str)


def _positional(item: Item, index: int):
    values = [arg for arg in item.args if not _is_keyword(arg)]
    return values[index] if index < len(values) else None


def symbolic_code(item: Item, subs: Subs | None = None) -> str:
    """The item's constructor call with some arguments written as code (``num_classes``,
    ``config.n_embd``): positional indices replaced, keywords replaced or appended."""
    if not subs:
        return item.code
    args = list(item.args)
    where = [i for i, arg in enumerate(args) if not _is_keyword(arg)]
    for key, code in subs.items():
        if key == "count":
            continue
        if isinstance(key, int):
            args[where[key]] = Code(code)
            continue
        for i, arg in enumerate(args):
            if _is_keyword(arg) and arg[0] == key:
                args[i] = (key, Code(code))
                break
        else:
            args.append((key, Code(code)))
    if isinstance(item, Block):
        return call(item.cls, tuple(args))
    return call(item.op, tuple(args), prefix="nn." if item.torch_class else "")


@dataclass(frozen=True)
class Sizes:
    """What the generated model takes from its caller, and where each value goes."""

    args: tuple[ModelArg, ...]  # constructor arguments (classic kinds) or config fields (lm/seq)
    subs: dict  # module path -> Subs

    def code(self, path: str, item: Item) -> str:
        return symbolic_code(item, self.subs.get(path))

    def count(self, path: str, count: int) -> str:
        return self.subs.get(path, {}).get("count", str(count))

    def names(self) -> list[str]:
        return [arg.name for arg in self.args]


_TAKES_INPUT = ("Linear", "Conv1d", "Conv2d", "Conv3d")
_GIVES_OUTPUT = _TAKES_INPUT + ("ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d")
_BLOCKS_WITH_SIZES = (
    "LinearBlock",
    "ResidualLinearBlock",
    "ConvBlock",
    "ResidualConvBlock",
    "UpBlock",
    "ResidualUpBlock",
)


def _sized(item: Item, ops: tuple[str, ...] = _GIVES_OUTPUT) -> bool:
    """An item whose first two positional arguments are its input and output width."""
    return item.cls in _BLOCKS_WITH_SIZES if isinstance(item, Block) else item.op in ops


def _ends(part: Part) -> tuple[tuple[str, Item], tuple[str, Item]]:
    """(path, item) of the part's first and last item."""
    rows = [(part.name, part.items[0])] if not part.sequential else None
    if rows is None:
        rows = [(f"{part.name}.{key}", item) for key, item in part.named_items()]
    return rows[0], rows[-1]


def model_sizes(plan: Plan) -> Sizes:
    if plan.kind in ("lm", "seq"):
        return _sequence_sizes(plan)
    args: list[ModelArg] = []
    subs: dict = {}

    def put(path: str, key, code: str) -> None:
        subs.setdefault(path, {})[key] = code

    channels = plan.input_shape[0]
    name = "in_channels" if len(plan.input_shape) > 1 else "in_features"
    reader = {"gan": "discriminator", "vae": "encoder", "autoencoder": "encoder"}
    writer = {"gan": "generator", "vae": "decoder", "autoencoder": "decoder"}
    first = _ends(plan.part(reader[plan.kind]) if plan.kind in reader else plan.parts[0])[0]
    ok = _sized(first[1], _TAKES_INPUT) and _positional(first[1], 0) == channels
    if plan.kind in writer:
        last = _ends(plan.part(writer[plan.kind]))[1]
        ok = ok and _sized(last[1]) and _positional(last[1], 1) == channels
        if ok:
            put(last[0], 1, name)
    if ok:
        put(first[0], 0, name)
        what = "channels" if name == "in_channels" else "features"
        args.append(ModelArg(name, "int", "INPUT_SHAPE[0]", f"input {what}"))
    if plan.heads:
        for (path, _), head in zip(_ends_all(plan.part("heads")), plan.heads, strict=True):
            put(path, 1, f'HEADS["{head.name}"][0]')
    elif plan.has_part("head") and plan.kind in ("mlp", "cnn"):
        path, item = _ends(plan.part("head"))[1]
        out = "num_classes" if plan.task == "classification" else "num_outputs"
        if _sized(item) and _positional(item, 1) == plan.num_outputs:
            put(path, 1, out)
            args.append(ModelArg(out, "int", out.upper(), "outputs of the last layer"))
    if plan.latent:
        _latent_sizes(plan, put, args)
    if plan.kind in ("mlp", "cnn") and "ResidualConvBlock" in plan.block_classes():
        args.append(
            ModelArg(
                "zero_init_residual", "bool", "False", "zero the last norm of each residual branch"
            )
        )
    return Sizes(tuple(args), subs)


def _ends_all(part: Part) -> list[tuple[str, Item]]:
    return [(f"{part.name}.{key}", item) for key, item in part.named_items()]


def _latent_sizes(plan: Plan, put, args: list[ModelArg]) -> None:
    """latent_dim: where the code is made (fc_mu, fc_logvar, an encoder's last layer) and read."""
    latent = plan.latent
    found: list[tuple[str, int, str]] = []
    if plan.kind == "vae":
        for part in ("fc_mu", "fc_logvar"):
            path, item = _ends(plan.part(part))[1]
            found.append((path, 1, "latent_dim") if _positional(item, 1) == latent else None)
        path, item = _ends(plan.part("fc_decode"))[0]
        found.append((path, 0, "latent_dim") if _positional(item, 0) == latent else None)
    elif plan.kind == "autoencoder":
        path, item = _ends(plan.part("encoder"))[1]
        found.append(
            (path, 1, "latent_dim") if _sized(item) and _positional(item, 1) == latent else None
        )
        path, item = _ends(plan.part("decoder"))[0]
        found.append(
            (path, 0, "latent_dim") if _sized(item) and _positional(item, 0) == latent else None
        )
    elif plan.kind == "gan":
        rows = _ends_all(plan.part("generator"))
        path, item = rows[0]
        if not isinstance(item, Block) and item.op == "Unflatten" and len(rows) > 1:
            shape = _positional(item, 1)
            rest = ", ".join(map(str, shape[1:]))
            found.append((path, 1, f"(latent_dim, {rest})") if shape[0] == latent else None)
            path, item = rows[1]
        found.append(
            (path, 0, "latent_dim") if _sized(item) and _positional(item, 0) == latent else None
        )
    if found and all(found):
        for path, key, code in found:
            put(path, key, code)
        args.append(ModelArg("latent_dim", "int", "LATENT_DIM", "size of the latent code"))


def _sequence_sizes(plan: Plan) -> Sizes:
    """lm and seq: a config dataclass in nanoGPT's style; every layer reads its sizes from it."""
    subs: dict = {}

    def put(path: str, key, code: str) -> None:
        subs.setdefault(path, {})[key] = code

    embed = plan.part("embed").items[0]
    vocab, width, context = (_positional(embed, i) for i in range(3))
    dropout = dict(a for a in embed.args if _is_keyword(a)).get("dropout", 0.0)
    fields = [
        ModelArg("vocab_size", "int", "VOCAB_SIZE", "token ids are 0 .. vocab_size - 1"),
        ModelArg("context", "int", "CONTEXT", "the longest sequence the model reads"),
    ]
    put("embed", 0, "config.vocab_size")
    put("embed", 1, "config.n_embd")
    if context is not None:  # learned positions: one per place in the context
        put("embed", 2, "config.context")
    put("embed", "dropout", "config.dropout")
    blocks = plan.part("h").items if plan.has_part("h") else ()
    groups = plan.part("h").groups() if blocks else []
    transformer = len(groups) == 1 and groups[0][0].cls == "TransformerBlock"
    stream = width  # the width every later layer reads, while the blocks keep it
    if transformer:
        block, count, _ = groups[0]
        kw = dict(a for a in block.args if _is_keyword(a))
        fields += [
            ModelArg("n_layer", "int", str(count), "transformer blocks"),
            ModelArg("n_head", "int", str(_positional(block, 1)), "attention heads per block"),
        ]
        put("h.0", 0, "config.n_embd")
        put("h.0", 1, "config.n_head")
        put("h", "count", "config.n_layer")
        if kw.get("dropout", 0.0) == dropout:
            put("h.0", "dropout", "config.dropout")
        put("h.0", "bias", "config.bias")
    elif blocks:
        if _positional(blocks[0], 0) == width:
            put("h.0", 0, "config.n_embd")
        if any(block.out_shape[-1] != width for block in blocks):
            stream = None
    fields.append(ModelArg("n_embd", "int", str(width), "the width of each token's vector"))
    fields.append(ModelArg("dropout", "float", repr(float(dropout)), "dropout probability"))
    if transformer:
        fields.append(
            ModelArg("bias", "bool", str(kw.get("bias", True)), "biases in Linears and LayerNorms")
        )
    if plan.has_part("ln_f"):
        if stream is not None:
            put("ln_f", 0, "config.n_embd")
        norm = dict(a for a in plan.part("ln_f").items[0].args if _is_keyword(a))
        if transformer and norm.get("bias", True) == kw.get("bias", True):
            put("ln_f", "bias", "config.bias")  # else its own bias, as the spec says
    if plan.kind == "lm":
        head = plan.part("lm_head").items[0]
        put("lm_head", 1, "config.vocab_size")
        if stream is not None and _positional(head, 0) == width:
            put("lm_head", 0, "config.n_embd")
    else:
        out = "num_classes" if plan.task == "classification" else "num_outputs"
        path, head = _ends(plan.part("head"))[1]
        if _sized(head) and _positional(head, 1) == plan.num_outputs:
            put(path, 1, f"config.{out}")
            fields.append(ModelArg(out, "int", out.upper(), "outputs of the last layer"))
        reader = _ends(plan.part("trunk"))[0] if plan.has_part("trunk") else (path, head)
        if stream is not None and _positional(reader[1], 0) == width:
            put(reader[0], 0, "config.n_embd")
    return Sizes(tuple(fields), subs)
