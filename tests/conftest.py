"""Shared helpers: torch is the oracle for every shape the engine infers."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def torch_check_plan(plan) -> None:
    """Build every layer of the plan with torch on the meta device and compare.

    Each part is run from its recorded input shape; every layer's output shape
    and parameter count must equal the plan's static values.
    """
    torch = pytest.importorskip("torch")
    from torch import nn

    from scaffold.plan import Block

    batch = 2
    for part in plan.parts:
        x = torch.empty((batch, *part.in_shape), device="meta")
        for item in part.items:
            layers = item.layers if isinstance(item, Block) else (item,)
            for layer in layers:
                module = eval(layer.code, {"nn": nn}).to("meta")  # the exact code the template emits
                x = module(x)
                where = item.where if isinstance(item, Block) else part.name
                assert tuple(x.shape) == (batch, *layer.out_shape), f"{where} {layer.code}"
                got = sum(p.numel() for p in module.parameters())
                assert got == layer.params, f"{where} {layer.code}: {got} != {layer.params}"
        assert tuple(x.shape[1:]) == part.out_shape
