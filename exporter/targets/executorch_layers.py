"""The layer forms the ExecuTorch target traces: the same maths, in the ops XNNPACK delegates.

:func:`xnnpack_friendly` swaps these subclasses in for the model's own layers while the
target traces, and back on exit; the model itself (every other target's reference) has
one form. Each overrides only the steps its base class exposes for this
(exporter/model/layers.py):

* attention (:class:`XnnpackLocalAttention`): the KV ring is read once, as the left
  operand of a 3-D ``bmm`` (``matmul`` on 4-D operands traces to ``expand`` copies, and
  ``q @ ring^T`` to a transpose of the whole ring), and a step writes its t new rows
  with a ``scatter`` (t <= w). The default forms cost, per attention layer and step, a
  portable ``where`` over each whole ring in decode (broadcast element by element: ~6 ms
  per [1, 1, 2048, 256] ring on a 2-core machine, the largest cost of a decode step), in
  prefill a portable ``gather`` of each whole ring through an int64 index of its size
  (~9 ms a ring and 2 ms for the index: a third of a 2B prefill chunk of 32), an ``expand``
  copy of each ring and a delegated transpose of the key ring. The ring update is
  bit-identical; the scores are the same dot products.
* RMSNorm (:class:`XnnpackRMSNorm`): the mean over a ``[..., 1, d]`` view as a mean over
  the last two dims, the one form XNNPACK delegates (4-D global average pooling),
  instead of a portable ``mean`` splitting the delegate at every norm.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from exporter.model.layers import KV, LocalAttention, RMSNorm
from exporter.model.state import AttentionLayerState


class XnnpackRMSNorm(RMSNorm):
    def mean_square(self, x: torch.Tensor) -> torch.Tensor:  # [..., d] -> [..., 1]
        lead, d = x.shape[:-1], x.shape[-1]
        return torch.mean(torch.square(x).reshape(*lead, 1, d), dim=(-2, -1), keepdim=True).reshape(*lead, 1)


class XnnpackLocalAttention(LocalAttention):
    def scores(self, qg: torch.Tensor, old_key: torch.Tensor, kn: torch.Tensor) -> torch.Tensor:
        """As the base class, as ``bmm(ring, q^T)^T`` on 3-D views: [b*k, g*t, w + t]."""
        b, k, gt, e = qg.shape
        t, w = kn.shape[2], self.window
        q3 = qg.reshape(b * k, gt, e)
        ring_scores = torch.bmm(old_key.reshape(b * k, w, e), q3.transpose(1, 2)).transpose(1, 2)
        chunk_scores = torch.bmm(q3, kn.reshape(b * k, t, e).transpose(1, 2))
        return torch.cat([ring_scores, chunk_scores], dim=-1)

    def attend(self, probs: torch.Tensor, old_value: torch.Tensor, vn: torch.Tensor) -> torch.Tensor:
        """As the base class, on 3-D views: [b*k, g*t, e]."""
        b, k, gt, wt = probs.shape
        t, e, w = vn.shape[2], vn.shape[3], self.window
        p3 = probs.reshape(b * k, gt, wt)
        out = torch.bmm(p3[..., :w], old_value.reshape(b * k, w, e))
        return out + torch.bmm(p3[..., w:], vn.reshape(b * k, t, e))

    def chunk_write(self, start: torch.Tensor, state: AttentionLayerState, rings: KV, rows: KV) -> KV:
        """As the base class, writing the chunk's t rows with a ``scatter`` when each goes to a slot
        of its own (t <= w, t static); else the base class's gather."""
        if self.max_len is not None or rows[0].shape[2] > self.window:
            return super().chunk_write(start, state, rings, rows)
        return self._scatter_rows(start, state, rings, rows)

    def decode_write(self, start: torch.Tensor, state: AttentionLayerState, rings: KV, rows: KV) -> KV:
        """As the base class, writing the one new row with a ``scatter`` and copying the rest."""
        return self._scatter_rows(start, state, rings, rows)

    def _scatter_rows(self, start: torch.Tensor, state: AttentionLayerState, rings: KV, rows: KV) -> KV:
        """Row i of ``rows`` [b, k, t, e] into slot (start + i) % w of each ring (t <= w: distinct slots)."""
        (old_key, old_value), (kn, vn) = rings, rows
        b, k, t, e = kn.shape
        written = start if t == 1 else start + torch.arange(t, dtype=torch.int64, device=start.device).unsqueeze(0)
        idx = torch.remainder(written, self.window).reshape(b, 1, t, 1).expand(b, k, t, e)
        new_key = torch.scatter(old_key, 2, idx, kn).to(state.key.dtype)
        new_value = torch.scatter(old_value, 2, idx, vn).to(state.value.dtype)
        return new_key, new_value


# The model's layer class -> the form traced for XNNPACK.
VARIANTS: dict[type[nn.Module], type[nn.Module]] = {LocalAttention: XnnpackLocalAttention, RMSNorm: XnnpackRMSNorm}


@contextlib.contextmanager
def xnnpack_friendly(module: nn.Module) -> Iterator[None]:
    """Within the block, ``module``'s layers run in their XNNPACK forms (same maths, same
    parameters and submodules: only the class of each layer changes), restored on exit."""
    swapped = [(m, type(m)) for m in module.modules() if type(m) in VARIANTS]
    for m, cls in swapped:
        m.__class__ = VARIANTS[cls]
    try:
        yield
    finally:
        for m, cls in swapped:
            m.__class__ = cls
