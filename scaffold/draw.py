"""Draw: the plan as a picture (SVG) and as data (JSON), for ``scaffold show --format``.

Both read the plan only (no torch): every block with its module path, class, output shape and
parameter count. The picture lays the parts out as the model runs: one column for a classifier
or regressor, with multi-task heads as branches side by side; an encoder going down on the
left and its mirrored decoder coming back up on the right, the latent layers between them; a
GAN's generator beside its discriminator.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from scaffold.layers import call, fmt_shape
from scaffold.plan import SHORT_KEYWORDS, Block, Item, Plan

# ---------------------------------------------------------------------------- JSON


def plan_data(plan: Plan) -> dict:
    """The plan as plain data: the model's totals, then each part with its items."""
    frozen = sum(part.params for part in plan.parts if part.name in plan.train.freeze)
    parts = []
    for part in plan.parts:
        names = part.named_items() if part.sequential else [("", part.items[0])]
        items = []
        for key, item in names:
            path = f"{part.name}.{key}" if key else part.name
            items.append(_item_data(path, item))
        parts.append(
            {
                "name": part.name,
                "container": "ModuleDict" if part.is_dict else part.container,
                "in_shape": list(part.in_shape),
                "out_shape": list(part.out_shape),
                "params": part.params,
                "items": items,
            }
        )
    return {
        "project": plan.project,
        "class_name": plan.class_name,
        "kind": plan.kind,
        "task": plan.task,
        "input_shape": list(plan.input_shape),
        "output_shape": list(plan.output_shape),
        "latent": plan.latent,
        "params": plan.params,
        "trainable": plan.params - frozen,
        "frozen": frozen,
        "heads": [
            {"name": h.name, "task": h.task, "outputs": h.features, "weight": h.weight}
            for h in plan.heads
        ],
        "parts": parts,
    }


def _item_data(path: str, item: Item) -> dict:
    if isinstance(item, Block):
        return {
            "path": path,
            "type": item.cls,
            "spec": item.where,
            "note": item.note,
            "code": item.code,
            "out_shape": list(item.out_shape),
            "params": item.params,
            "layers": [
                {
                    "path": f"{path}.{layer.role}",
                    "type": layer.op,
                    "out_shape": list(layer.out_shape),
                    "params": layer.params,
                }
                for layer in item.layers
                if layer.op != "Sequential"
            ],
        }
    return {
        "path": path,
        "type": item.op,
        "code": call(item.op, item.args, short=SHORT_KEYWORDS),
        "out_shape": list(item.out_shape),
        "params": item.params,
    }


# ---------------------------------------------------------------------------- SVG

BOX_H = 50
ROW = BOX_H + 26  # vertical distance between rows
COLUMN_GAP = 90
MARGIN = 20
TITLE_H = 46
CHAR_W = 6.8  # an estimate of a 12px sans-serif character's width, to size the boxes
FILL = {
    "io": "#f3f4f6",
    "encoder": "#dbeafe",
    "latent": "#fde68a",
    "decoder": "#dcfce7",
    "head": "#fce7f3",
}


@dataclass
class Node:
    lines: tuple[str, ...]  # the first is drawn bold
    column: int
    row: int
    role: str
    x: float = 0.0
    y: float = 0.0
    w: float = 0.0


@dataclass
class Layout:
    nodes: list[Node] = field(default_factory=list)
    edges: list[tuple[Node, Node, str]] = field(default_factory=list)  # (from, to, label)

    def add(self, lines: tuple[str, ...], column: int, row: int, role: str) -> Node:
        node = Node(lines, column, row, role)
        self.nodes.append(node)
        return node

    def chain(self, nodes: list[Node]) -> None:
        for a, b in zip(nodes, nodes[1:]):
            self.edges.append((a, b, ""))


def _params(n: int) -> str:
    return f"{n:,} params" if n else "no params"


def _lines(path: str, item: Item) -> tuple[str, ...]:
    if isinstance(item, Block):
        detail = item.note or item.where
        return (
            f"{path}  {item.cls}",
            f"{fmt_shape(item.out_shape)}   {_params(item.params)}",
            detail,
        )
    code = call(item.op, item.args, short=SHORT_KEYWORDS)
    return (f"{path}  {item.op}", f"{fmt_shape(item.out_shape)}   {_params(item.params)}", code)


def _part_nodes(layout: Layout, plan: Plan, name: str, column: int, rows: list[int], role: str):
    part = plan.part(name)
    named = part.named_items() if part.sequential else [("", part.items[0])]
    nodes = []
    for (key, item), row in zip(named, rows):
        path = f"{name}.{key}" if key else name
        nodes.append(layout.add(_lines(path, item), column, row, role))
    return nodes


def _count(plan: Plan, name: str) -> int:
    part = plan.part(name)
    return len(part.items) if part.sequential else 1


def layout_plan(plan: Plan) -> Layout:
    """Place every item of the plan on a grid of columns and rows, and connect them."""
    layout = Layout()
    inp = ("input", fmt_shape(plan.input_shape))
    if plan.kind in ("autoencoder", "vae"):
        n_enc, n_dec = _count(plan, "encoder"), _count(plan, "decoder")
        base = max(n_enc, n_dec)
        top = layout.add(inp, 0, 0, "io")
        enc = _part_nodes(layout, plan, "encoder", 0, list(range(1, n_enc + 1)), "encoder")
        layout.chain([top, *enc])
        right = 2 if plan.kind == "vae" else 1
        dec = _part_nodes(
            layout, plan, "decoder", right, [base - j for j in range(n_dec)], "decoder"
        )
        out_lines = ("output (reconstruction)", fmt_shape(plan.output_shape))
        if plan.logits_output:
            out_lines += ("logits; sigmoid in reconstruct()",)
        out = layout.add(out_lines, right, base - n_dec, "io")
        layout.chain([*dec, out])
        if plan.kind == "vae":
            mu = _part_nodes(layout, plan, "fc_mu", 0, [base + 1], "latent")[0]
            logvar = _part_nodes(layout, plan, "fc_logvar", 1, [base + 1], "latent")[0]
            decode = _part_nodes(layout, plan, "fc_decode", 2, [base + 1], "latent")[0]
            layout.edges += [(enc[-1], mu, ""), (enc[-1], logvar, "")]
            layout.edges += [(logvar, decode, "sample z"), (decode, dec[0], "")]
        else:
            layout.edges.append(
                (enc[-1], dec[0], f"code {fmt_shape(plan.part('encoder').out_shape)}")
            )
        return layout
    if plan.kind == "gan":
        n_gen = _count(plan, "generator")
        z = layout.add(("latent z", f"(B, {plan.latent})"), 0, 0, "io")
        gen = _part_nodes(layout, plan, "generator", 0, list(range(1, n_gen + 1)), "encoder")
        layout.chain([z, *gen])
        # the discriminator starts level with the generator's output, which it also reads
        real = layout.add(("real x", fmt_shape(plan.input_shape)), 1, n_gen - 1, "io")
        n_dis = _count(plan, "discriminator")
        rows = list(range(n_gen, n_gen + n_dis))
        dis = _part_nodes(layout, plan, "discriminator", 1, rows, "decoder")
        layout.chain([real, *dis])
        layout.edges.append((gen[-1], dis[0], "generated x"))
        return layout
    nodes = [layout.add(inp, 0, 0, "io")]
    row = 1
    branches: list[Node] = []
    for part in plan.parts:
        if part.is_dict:
            for column, (key, item) in enumerate(part.named_items()):
                branches.append(layout.add(_lines(f"{part.name}.{key}", item), column, row, "head"))
            continue
        role = "head" if part.name == "head" else "encoder"
        count = _count(plan, part.name)
        nodes += _part_nodes(layout, plan, part.name, 0, list(range(row, row + count)), role)
        row += count
    layout.chain(nodes)
    layout.edges += [(nodes[-1], branch, "") for branch in branches]
    if not branches:
        what = "logits" if plan.task == "classification" else "output"
        if plan.vocab:
            what = "logits per token" if plan.kind == "lm" else what
        out = layout.add((what, fmt_shape(plan.output_shape)), 0, row, "io")
        layout.edges.append((nodes[-1], out, ""))
    return layout


def _place(layout: Layout, title_w: float) -> tuple[float, float]:
    """Give every node its position and width; return the picture's width and height."""
    columns = sorted({node.column for node in layout.nodes})
    widths = {}
    for column in columns:
        longest = max(len(line) for n in layout.nodes if n.column == column for line in n.lines)
        widths[column] = max(200.0, longest * CHAR_W + 24)
    # heads sit side by side under one column: give them the same width
    x = MARGIN
    lefts = {}
    for column in columns:
        lefts[column] = x
        x += widths[column] + COLUMN_GAP
    width = max(x - COLUMN_GAP + MARGIN, title_w + 2 * MARGIN)
    for node in layout.nodes:
        node.w = widths[node.column]
        node.x = lefts[node.column]
        node.y = TITLE_H + MARGIN + node.row * ROW
    height = max(node.y for node in layout.nodes) + BOX_H + MARGIN
    return width, height


def _anchor(node: Node, towards: Node) -> tuple[float, float]:
    """Where an edge from node towards another leaves node's box: the middle of a side."""
    cx, cy = node.x + node.w / 2, node.y + BOX_H / 2
    tx, ty = towards.x + towards.w / 2, towards.y + BOX_H / 2
    if abs(ty - cy) >= BOX_H:  # mostly vertical
        return cx, node.y + (BOX_H if ty > cy else 0)
    return node.x + (node.w if tx > cx else 0), cy


def render_svg(plan: Plan) -> str:
    """The plan drawn as an SVG document (a string)."""
    layout = layout_plan(plan)
    title = plan.summary()
    width, height = _place(layout, len(title) * CHAR_W * 1.25)  # 14px bold
    svg = ET.Element(
        "svg",
        {
            "xmlns": "http://www.w3.org/2000/svg",
            "width": f"{width:.0f}",
            "height": f"{height:.0f}",
            "viewBox": f"0 0 {width:.0f} {height:.0f}",
            "font-family": "DejaVu Sans, Helvetica, Arial, sans-serif",
            "font-size": "12",
        },
    )
    ET.SubElement(svg, "title").text = title
    defs = ET.SubElement(svg, "defs")
    marker = ET.SubElement(
        defs,
        "marker",
        {
            "id": "arrow",
            "viewBox": "0 0 10 10",
            "refX": "10",
            "refY": "5",
            "markerWidth": "7",
            "markerHeight": "7",
            "orient": "auto-start-reverse",
        },
    )
    ET.SubElement(marker, "path", {"d": "M 0 0 L 10 5 L 0 10 z", "fill": "#374151"})
    ET.SubElement(svg, "rect", {"width": "100%", "height": "100%", "fill": "white"})
    heading = ET.SubElement(
        svg, "text", {"x": str(MARGIN), "y": "28", "font-size": "14", "font-weight": "bold"}
    )
    heading.text = title
    for a, b, label in layout.edges:
        x1, y1 = _anchor(a, b)
        x2, y2 = _anchor(b, a)
        ET.SubElement(
            svg,
            "line",
            {
                "x1": f"{x1:.1f}",
                "y1": f"{y1:.1f}",
                "x2": f"{x2:.1f}",
                "y2": f"{y2:.1f}",
                "stroke": "#374151",
                "stroke-width": "1.3",
                "marker-end": "url(#arrow)",
            },
        )
        if label:
            text = ET.SubElement(
                svg,
                "text",
                {
                    "x": f"{(x1 + x2) / 2:.1f}",
                    "y": f"{(y1 + y2) / 2 - 5:.1f}",
                    "text-anchor": "middle",
                    "font-size": "11",
                    "font-style": "italic",
                    "fill": "#4b5563",
                },
            )
            text.text = label
    for node in layout.nodes:
        group = ET.SubElement(svg, "g", {"class": node.role})
        ET.SubElement(
            group,
            "rect",
            {
                "x": f"{node.x:.1f}",
                "y": f"{node.y:.1f}",
                "width": f"{node.w:.1f}",
                "height": str(BOX_H),
                "rx": "6",
                "fill": FILL[node.role],
                "stroke": "#6b7280",
            },
        )
        for i, line in enumerate(node.lines):
            attrs = {"x": f"{node.x + 10:.1f}", "y": f"{node.y + 16 + i * 14:.1f}"}
            if i == 0:
                attrs["font-weight"] = "bold"
            else:
                attrs["fill"] = "#374151" if i == 1 else "#6b7280"
                if i == 2:
                    attrs["font-size"] = "10"
            ET.SubElement(group, "text", attrs).text = line
    ET.indent(svg)
    return ET.tostring(svg, encoding="unicode") + "\n"
