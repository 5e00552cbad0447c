"""`scaffold show --format svg|json`: the plan as a picture and as data, for every example.

The SVG is parsed as XML (every block's module path, shape and parameter count is in it) and
rendered to PNG by a real renderer (cairosvg); the JSON carries the plan's totals. Neither
imports torch. docs/conv-vae.svg, which the README shows, is what `show` draws today.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from conftest import EXAMPLES, ROOT, run_cli

from scaffold.builders import plan_from_file
from scaffold.draw import plan_data, render_svg
from scaffold.layers import fmt_shape
from scaffold.plan import Block

SVG = "{http://www.w3.org/2000/svg}"


def texts(svg: str) -> list[str]:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return [element.text or "" for element in root.iter(f"{SVG}text")]


@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_svg_names_every_block_with_its_shape_and_params(spec):
    plan = plan_from_file(spec)
    svg = render_svg(plan)
    lines = texts(svg)
    assert lines[0] == plan.summary()
    for path, _, item in plan.items():
        label = f"{path}  {item.cls if isinstance(item, Block) else item.op}"
        assert label in lines, (label, lines)
        params = f"{item.params:,} params" if item.params else "no params"
        assert f"{fmt_shape(item.out_shape)}   {params}" in lines, path
    boxes = ET.fromstring(svg).findall(f"{SVG}g")
    assert len(boxes) >= len(plan.items()) + 1  # and the input


def boxes_by_role(svg: str) -> dict[str, list[tuple[float, float]]]:
    """(x, y) of each box, by the part's role (the group's class)."""
    found: dict[str, list[tuple[float, float]]] = {}
    for group in ET.fromstring(svg).findall(f"{SVG}g"):
        rect = group.find(f"{SVG}rect")
        found.setdefault(group.get("class"), []).append(
            (float(rect.get("x")), float(rect.get("y")))
        )
    return found


def test_encoder_and_mirrored_decoder_side_by_side():
    svg = render_svg(plan_from_file(ROOT / "examples" / "conv-vae.yaml"))
    roles = boxes_by_role(svg)
    encoder, decoder = roles["encoder"], roles["decoder"]
    assert max(x for x, _ in encoder) < min(x for x, _ in decoder)  # left and right
    assert [y for _, y in encoder] == sorted(y for _, y in encoder)  # going down
    assert [y for _, y in decoder] == sorted((y for _, y in decoder), reverse=True)  # coming up
    assert sorted(y for _, y in encoder) == sorted(y for _, y in decoder)  # level, row by row
    assert len(roles["latent"]) == 3  # fc_mu, fc_logvar, fc_decode


def test_heads_are_branches():
    roles = boxes_by_role(render_svg(plan_from_file(ROOT / "examples" / "multitask-cnn.yaml")))
    heads = roles["head"]
    assert len(heads) == 2 and len({y for _, y in heads}) == 1 and len({x for x, _ in heads}) == 2
    assert min(y for _, y in heads) > max(y for _, y in roles["encoder"])


def test_svg_renders_to_a_png():
    cairosvg = pytest.importorskip("cairosvg")
    Image = pytest.importorskip("PIL.Image")
    for name in ("conv-vae", "multitask-cnn", "dcgan"):
        svg = render_svg(plan_from_file(ROOT / "examples" / f"{name}.yaml"))
        png = cairosvg.svg2png(bytestring=svg.encode())
        with Image.open(io.BytesIO(png)) as image:
            assert image.format == "PNG"
            width = float(ET.fromstring(svg).get("width"))
            assert image.width == round(width)
            colors = image.convert("RGB").getcolors(maxcolors=2**16)
            assert colors is None or len(colors) > 20  # text and boxes were drawn, not a blank page


def test_json_is_the_plan(tmp_path):
    plan = plan_from_file(ROOT / "examples" / "conv-vae.yaml")
    env = {**os.environ, "SCAFFOLD_HOME": str(tmp_path)}
    result = run_cli(
        "show", ROOT / "examples" / "conv-vae.yaml", "--format", "json", cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data == json.loads(json.dumps(plan_data(plan)))
    assert data["params"] == plan.params == sum(part["params"] for part in data["parts"])
    assert [part["name"] for part in data["parts"]] == [part.name for part in plan.parts]
    assert data["parts"][0]["items"][0]["path"] == "encoder.0"
    bad = run_cli(
        "show", ROOT / "examples" / "conv-vae.yaml", "--format", "png", cwd=tmp_path, env=env
    )
    assert bad.returncode == 2 and "must be one of table, svg, json" in bad.stderr


def test_show_svg_needs_no_torch(tmp_path):
    code = (
        "import sys; sys.argv = ['scaffold', 'show', sys.argv[1], '--format', 'svg']\n"
        "from scaffold.cli import app\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, file=sys.stderr)"
    )
    spec = ROOT / "examples" / "conv-vae.yaml"
    result = subprocess.run(
        [sys.executable, "-c", code, str(spec)], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.stderr.strip().splitlines()[-1] == "False", result.stderr
    assert (
        result.stdout == (ROOT / "docs" / "conv-vae.svg").read_text()
    )  # the README's picture is current
