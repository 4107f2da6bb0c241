"""The quantized eager reference: our Griffin with every weight round-tripped through a recipe.

Artifacts quantized by a format's own tools are compared against the fp32
reference (quality) and, where the format computes with the same integer
weights, against this model (correctness of the lowering).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from exporter.model.griffin import Griffin
from exporter.model.layers import RGLRU
from quantization.recipe import Recipe
from quantization.tensor import fake_quantize, fake_quantize_block_diagonal


def weight_classes(model: Griffin) -> dict[str, list[str]]:
    """Parameter names by recipe class: linears, embedding, rglru_gates."""
    out: dict[str, list[str]] = {"linears": [], "embedding": ["embed_tokens.weight"], "rglru_gates": []}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            out["linears"].append(f"{name}.weight")
    for name, _ in model.named_parameters():
        if name.endswith(tuple(weight for weight, _ in RGLRU.GATE_PARAMS)):
            out["rglru_gates"].append(name)
    return out


@torch.no_grad()
def fake_quantized(model: Griffin, recipe: Recipe) -> Griffin:
    """A copy of ``model`` whose weights are dequantize(quantize(w)) under ``recipe``."""
    q = copy.deepcopy(model).eval()
    params = dict(q.named_parameters())
    classes = weight_classes(q)
    for cls, scheme in (("linears", recipe.linears), ("embedding", recipe.embedding)):
        if scheme is not None:
            for name in classes[cls]:
                params[name].copy_(fake_quantize(params[name], scheme))
    if recipe.rglru_gates is not None:
        for name in classes["rglru_gates"]:
            params[name].copy_(fake_quantize_block_diagonal(params[name], recipe.rglru_gates))
    return q
