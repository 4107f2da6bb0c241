"""Pure tensor maths of weight quantization (no formats, no modules).

Symmetric integers: q = clamp(round(w / scale), -2^(b-1), 2^(b-1) - 1), w ≈ q * scale,
with one scale per output row (per_channel) or per group of ``group_size``
consecutive input columns (per_group). For a 3-D block-diagonal weight
[h, in, out] the "rows" are the output columns of each head.
"""

from __future__ import annotations

import torch

from exporter.errors import RgMobileError
from quantization.recipe import WeightScheme


def qrange(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def quantize(w: torch.Tensor, scheme: WeightScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """w [out, in] -> (q int8 [out, in], scale fp32 [out, 1] or [out, in / group])."""
    if w.ndim != 2:
        raise RgMobileError(f"quantize: expected a 2-D weight, got {tuple(w.shape)}")
    lo, hi = qrange(scheme.bits)
    w = w.float()
    if scheme.granularity == "per_channel":
        amax = w.abs().amax(dim=1, keepdim=True)
        scale = (amax / hi).clamp(min=1e-12)
        q = torch.clamp(torch.round(w / scale), lo, hi).to(torch.int8)
        return q, scale
    gs = scheme.group_size
    assert gs is not None
    out_f, in_f = w.shape
    if in_f % gs:
        raise RgMobileError(f"quantize: input width {in_f} is not a multiple of group size {gs}")
    wg = w.reshape(out_f, in_f // gs, gs)
    scale = (wg.abs().amax(dim=2, keepdim=True) / hi).clamp(min=1e-12)
    q = torch.clamp(torch.round(wg / scale), lo, hi).to(torch.int8)
    return q.reshape(out_f, in_f), scale.reshape(out_f, in_f // gs)


def dequantize(q: torch.Tensor, scale: torch.Tensor, scheme: WeightScheme) -> torch.Tensor:
    if scheme.granularity == "per_channel":
        return q.float() * scale
    out_f, in_f = q.shape
    gs = in_f // scale.shape[1]
    return (q.float().reshape(out_f, -1, gs) * scale.unsqueeze(-1)).reshape(out_f, in_f)


def fake_quantize(w: torch.Tensor, scheme: WeightScheme) -> torch.Tensor:
    """Round-trip w through the scheme (same dtype and shape as w)."""
    return dequantize(*quantize(w, scheme), scheme).to(w.dtype)


def fake_quantize_block_diagonal(w: torch.Tensor, scheme: WeightScheme) -> torch.Tensor:
    """w [h, in, out] used as x @ w[h]: quantize each head's [out, in] transpose."""
    heads = [fake_quantize(w[h].t(), scheme).t() for h in range(w.shape[0])]
    return torch.stack(heads).to(w.dtype)


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB."""
    ref = reference.double()
    noise = (ref - approx.double()).pow(2).sum()
    if noise == 0:
        return float("inf")
    return float(10 * torch.log10(ref.pow(2).sum() / noise))
