"""Quantized weights as data: the integers and scales of every quantized parameter of a model.

This is what a quantized checkpoint holds and what every format ships unchanged:

  :class:`QuantizedTensor`  one parameter: ``q`` (int8 storage of b-bit values) and ``scale``
                            (float32), in the "rows are output channels" orientation
                            quantization/tensor.py uses: a 2-D weight [out, in] keeps its layout;
                            a block-diagonal RG-LRU gate [h, in, out] (used as x @ w[h]) is held
                            per head transposed, q [h, out, in] and scale [h, out, groups].
  :data:`QuantizedWeights`  our parameter name -> :class:`QuantizedTensor`.

w ≈ q * scale per group of ``scheme.group_size`` consecutive inputs (per_group) or per output
row (per_channel, scale [out, 1]). :func:`quantize_weights` computes them by round-to-nearest
(quantization/tensor.py's maths); a calibrated recipe may choose other integers and scales in
the same layout, and every later stage takes them as given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from exporter.errors import RgMobileError
from exporter.model.griffin import Griffin
from quantization.recipe import Recipe, WeightScheme
from quantization.reference import weight_classes
from quantization.tensor import dequantize, qrange, quantize


@dataclass(frozen=True)
class QuantizedTensor:
    """Integers and scales of one parameter (see the module docstring for the layout)."""

    q: torch.Tensor
    scale: torch.Tensor
    scheme: WeightScheme
    block_diagonal: bool = False

    def __post_init__(self) -> None:
        lo, hi = qrange(self.scheme.bits)
        if self.q.dtype != torch.int8:
            raise RgMobileError(f"quantized weight: integers must be int8 storage, got {self.q.dtype}")
        if self.scale.dtype != torch.float32:
            raise RgMobileError(f"quantized weight: scales must be float32, got {self.scale.dtype}")
        if self.q.ndim != (3 if self.block_diagonal else 2) or self.scale.ndim != self.q.ndim:
            raise RgMobileError(f"quantized weight: bad ranks q {tuple(self.q.shape)}, scale {tuple(self.scale.shape)}")
        rows, cols = self.q.shape[-2:]
        groups = 1 if self.scheme.granularity == "per_channel" else cols // (self.scheme.group_size or cols)
        if tuple(self.scale.shape) != (*self.q.shape[:-1], groups):
            raise RgMobileError(
                f"quantized weight: scale {tuple(self.scale.shape)} does not fit q {tuple(self.q.shape)} "
                f"under {self.scheme.to_dict()}"
            )
        if self.q.numel() and (int(self.q.min()) < lo or int(self.q.max()) > hi):
            raise RgMobileError(f"quantized weight: integers outside [{lo}, {hi}] for {self.scheme.bits} bits")
        del rows

    def dequantize(self) -> torch.Tensor:
        """float32 weight in the parameter's own layout."""
        if not self.block_diagonal:
            return dequantize(self.q, self.scale, self.scheme)
        heads = [dequantize(self.q[h], self.scale[h], self.scheme).t() for h in range(self.q.shape[0])]
        return torch.stack(heads)


QuantizedWeights = dict[str, QuantizedTensor]


def quantize_tensor(w: torch.Tensor, scheme: WeightScheme, block_diagonal: bool = False) -> QuantizedTensor:
    """Round-to-nearest integers and scales of one parameter."""
    if not block_diagonal:
        q, s = quantize(w, scheme)
        return QuantizedTensor(q, s.float(), scheme)
    pairs = [quantize(w[h].t(), scheme) for h in range(w.shape[0])]
    q3 = torch.stack([p[0] for p in pairs])
    s3 = torch.stack([p[1] for p in pairs]).float()
    return QuantizedTensor(q3, s3, scheme, block_diagonal=True)


def schemes_by_param(model: Griffin, recipe: Recipe) -> dict[str, tuple[WeightScheme, bool]]:
    """Parameter name -> (scheme, block_diagonal) for every parameter the recipe quantizes."""
    classes = weight_classes(model)
    out: dict[str, tuple[WeightScheme, bool]] = {}
    by_class = (("linears", recipe.linears), ("embedding", recipe.embedding), ("rglru_gates", recipe.rglru_gates))
    for cls, scheme in by_class:
        if scheme is not None:
            for name in classes[cls]:
                out[name] = (scheme, cls == "rglru_gates")
    return out


@torch.no_grad()
def quantize_weights(model: Griffin, recipe: Recipe) -> QuantizedWeights:
    """Round-to-nearest :data:`QuantizedWeights` of ``model`` under ``recipe``."""
    params = dict(model.named_parameters())
    return {
        name: quantize_tensor(params[name].detach().float(), scheme, block_diagonal)
        for name, (scheme, block_diagonal) in schemes_by_param(model, recipe).items()
    }


@torch.no_grad()
def load_dequantized(model: Griffin, weights: Mapping[str, QuantizedTensor]) -> Griffin:
    """Write every quantized parameter's dequantized value into ``model`` (in place) and return it."""
    params = dict(model.named_parameters())
    for name, qt in weights.items():
        if name not in params:
            raise RgMobileError(f"quantized weight {name!r} is not a parameter of this model")
        p = params[name]
        w = qt.dequantize()
        if tuple(w.shape) != tuple(p.shape):
            raise RgMobileError(f"quantized weight {name}: shape {tuple(w.shape)} != parameter {tuple(p.shape)}")
        p.copy_(w.to(p.dtype))
    return model


@dataclass(frozen=True)
class GivenQuantization:
    """A recipe with the integers and scales it chose: what a quantized checkpoint carries.

    An export handed one ships exactly ``weights`` in every format instead of quantizing again.
    ``method``: how the integers were chosen ("rtn" round-to-nearest, or a calibrated method).
    """

    recipe: Recipe
    weights: QuantizedWeights
    method: str = "rtn"
