"""Quantized checkpoints whose integers no format's own quantizer would choose.

A format that quantized again (round to nearest, its own scale rule) instead of shipping the
checkpoint's integers would pass a test built on round-to-nearest integers by luck. Here every
group's integers are moved off round-to-nearest (about two thirds of them by one step, inside the
range) and every scale is stretched by a random factor, so only an artifact that stores
exactly the given integers and scales reads back equal.
"""

from __future__ import annotations

from pathlib import Path

import torch

from exporter.checkpoint.quantized import QuantizationConfig, write_quantized_checkpoint
from exporter.model.griffin import Griffin
from quantization.qweights import GivenQuantization, QuantizedTensor, QuantizedWeights, quantize_weights
from quantization.recipe import Recipe
from quantization.tensor import qrange


def perturbed(qt: QuantizedTensor, gen: torch.Generator) -> QuantizedTensor:
    """``qt`` with integers nudged by ±1 (kept in range) and scales scaled by 0.8…1.25."""
    lo, hi = qrange(qt.scheme.bits)
    step = torch.randint(-1, 2, qt.q.shape, generator=gen, dtype=torch.int16)
    q = (qt.q.to(torch.int16) + step).clamp(lo, hi).to(torch.int8)
    stretch = 0.8 + 0.45 * torch.rand(qt.scale.shape, generator=gen)
    return QuantizedTensor(q, (qt.scale * stretch).float(), qt.scheme, qt.block_diagonal)


def perturbed_weights(model: Griffin, recipe: Recipe, seed: int = 0) -> QuantizedWeights:
    """Round-to-nearest weights of ``model`` under ``recipe``, every tensor :func:`perturbed`."""
    gen = torch.Generator().manual_seed(seed)
    return {name: perturbed(qt, gen) for name, qt in quantize_weights(model, recipe).items()}


def perturbed_given(model: Griffin, recipe: Recipe, seed: int = 0) -> GivenQuantization:
    return GivenQuantization(recipe, perturbed_weights(model, recipe, seed), method="rtn")


def write_perturbed_checkpoint(out: Path, model: Griffin, recipe: Recipe, tokenizer: Path, seed: int = 0) -> Path:
    """A quantized checkpoint folder (as ``rgmobile quantize`` writes) holding perturbed integers."""
    weights = perturbed_weights(model, recipe, seed)
    write_quantized_checkpoint(out, model, QuantizationConfig(recipe), weights, tokenizer)
    return out
