"""The traceable step: flat tensors in, flat tensors out, in IOSpec order.

``StepModule(model)(input_ids, position_ids, *state) -> (logits, *new_state)``
is what every target exports. :func:`export_step` runs ``torch.export`` for a
fixed number of tokens per step (t = 1 for decode, t = chunk for prefill); the
RG-LRU scan is unrolled over t, so each t is its own program. Inside
:func:`any_length` the same module traces one graph for every t from 1 to a
bound instead (a doubling scan, a gather for the ring write): the ONNX target's
``--one-program``.

``last_logits``: the head (the 256k-vocab matmul, a quarter of a 2B model's
prefill work) runs for the step's last position only; logits are [b, 1, v].
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from exporter.model.griffin import Griffin, positions
from exporter.model.layers import RGLRU, LocalAttention
from exporter.model.state import flatten_state, unflatten_state


def head_positions(hidden: torch.Tensor, last_logits: bool) -> torch.Tensor:
    """The hidden states [b, t, d] the head runs on: all, or the last position's [b, 1, d]."""
    return hidden[:, -1:] if last_logits else hidden


@contextmanager
def any_length(model: Griffin, max_len: int, padded_scan: bool = False) -> Iterator[None]:
    """Within this block ``model`` computes any step length t from 1 to ``max_len`` with one
    graph (``layers.linear_scan``, and the ring written by gather at t = 1 as well).
    ``padded_scan``: the scan unrolled over ``max_len`` steps (a prefill graph's form)."""
    if max_len < 1:
        raise ValueError(f"max_len must be positive, not {max_len}")
    layers = [m for m in model.modules() if isinstance(m, RGLRU | LocalAttention)]
    for m in layers:
        m.max_len = max_len
        if isinstance(m, RGLRU):
            m.padded_scan = padded_scan
    try:
        yield
    finally:
        for m in layers:
            m.max_len = None
            if isinstance(m, RGLRU):
                m.padded_scan = False


class StepModule(nn.Module):
    def __init__(self, model: Griffin, last_logits: bool = False) -> None:
        super().__init__()
        self.model = model
        self.last_logits = last_logits

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, *state: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        model = self.model
        hidden, new_state = model.hidden(input_ids, position_ids, unflatten_state(model.config, list(state)))
        return (model.logits(head_positions(hidden, self.last_logits)), *flatten_state(new_state))


def example_inputs(model: Griffin, seq: int, batch: int = 1, start: int = 0) -> tuple[torch.Tensor, ...]:
    """Example (input_ids, position_ids, *zero state) for tracing a step of ``seq`` tokens."""
    ids = torch.zeros(batch, seq, dtype=torch.int64)
    return (ids, positions(start, seq, batch), *flatten_state(model.init_state(batch)))


def export_step(model: Griffin, seq: int, batch: int = 1, last_logits: bool = False) -> torch.export.ExportedProgram:
    """``torch.export`` of the step for ``seq`` tokens at a time (static shapes)."""
    step = StepModule(model.eval(), last_logits).eval()
    with torch.no_grad():
        return torch.export.export(step, example_inputs(model, seq, batch), strict=False)
