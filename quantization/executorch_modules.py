"""The modules a quantized ExecuTorch step is made of: the integer embedding lookup, the RG-LRU gates
as one linear per head, and the step with an untied head. Built by quantization/executorch.py (torchao's integers) and
quantization/executorch_given.py (a quantized checkpoint's integers).
"""

from __future__ import annotations

import torch
from torch import nn

from exporter.model.griffin import Griffin
from exporter.model.layers import RGLRU
from exporter.model.state import flatten_state, unflatten_state
from exporter.step.step import head_positions


class IntRowEmbedding(nn.Module):
    """Lookup in an integer table: ``table[ids] * scales[ids]`` per group of ``d / groups`` columns.

    ``qdata`` [v, d] int8 (int4 values unpacked), ``scales`` [v, groups] fp32; symmetric
    (zero point 0), as torchao's symmetric mapping. Runs on portable ExecuTorch kernels.
    """

    qdata: torch.Tensor
    scales: torch.Tensor

    def __init__(self, qdata: torch.Tensor, scales: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("qdata", qdata.to(torch.int8).contiguous())
        self.register_buffer("scales", scales.float().reshape(qdata.shape[0], -1).contiguous())

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [b, t] -> [b, t, d]
        rows = nn.functional.embedding(input_ids, self.qdata).to(torch.float32)  # [b, t, d]
        scales = nn.functional.embedding(input_ids, self.scales)  # [b, t, groups]
        b, t, d = rows.shape
        groups = scales.shape[-1]
        return (rows.reshape(b, t, groups, d // groups) * scales.unsqueeze(-1)).reshape(b, t, d)


class HeadLinears(nn.Module):
    """A block-diagonal gate as one ``nn.Linear`` per head: [b, t, l] -> [b, t, l].

    Head ``i`` reads and writes columns ``i * l/h`` to ``(i + 1) * l/h``; its weight is the
    parameter's block ``w[i]`` transposed (``[out, in]``, the layout of a quantized
    block-diagonal weight, quantization/qweights.py), its bias ``b[i]``. XNNPACK's quantized
    fully-connected kernels take linears, not the ``bmm`` the block-diagonal ``einsum`` lowers to.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        heads, width_in, width_out = weight.shape
        with torch.device("meta"):  # no throwaway initialisation
            self.heads = nn.ModuleList(nn.Linear(width_in, width_out) for _ in range(heads))
        for linear, w, b in zip(self.heads, weight.detach(), bias.detach(), strict=True):
            linear.weight = nn.Parameter(w.t().contiguous(), requires_grad=False)
            linear.bias = nn.Parameter(b.clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width = x.shape[-1] // len(self.heads)
        return torch.cat([h(x[..., i * width : (i + 1) * width]) for i, h in enumerate(self.heads)], dim=-1)


class HeadLinearRGLRU(RGLRU):
    """:class:`RGLRU` with its gates as :class:`HeadLinears` (``input_gate``, ``recurrent_gate``)."""

    input_gate: HeadLinears
    recurrent_gate: HeadLinears

    def gate_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.input_gate(x), self.recurrent_gate(x)


# The gate parameters an RG-LRU hands to its HeadLinears, and their new home: (weight, bias, module).
GATES = tuple((weight, bias, weight.removesuffix("_weight")) for weight, bias in RGLRU.GATE_PARAMS)


@torch.no_grad()
def split_gates(model: nn.Module) -> list[str]:
    """Every RG-LRU of ``model`` with its gates as one linear per head, in place (its block-diagonal
    parameters are freed). Returns the names of the new per-head linears, in model order."""
    names = []
    for name, module in list(model.named_modules()):
        if type(module) is not RGLRU:
            continue
        for weight, bias, new in GATES:
            setattr(module, new, HeadLinears(getattr(module, weight), getattr(module, bias)))
            delattr(module, weight)
            delattr(module, bias)
            names += [f"{name}.{new}.heads.{i}" for i in range(len(getattr(module, new).heads))]
        module.__class__ = HeadLinearRGLRU
    return names


def gate_linears(param: str, heads: int) -> list[str]:
    """The per-head linears :func:`split_gates` makes of gate parameter ``param`` (``...input_gate_weight``)."""
    owner, _, leaf = param.rpartition(".")
    new = {weight: module for weight, _, module in GATES}[leaf]
    return [f"{owner}.{new}.heads.{i}" for i in range(heads)]


class QuantizedStep(nn.Module):
    """The ExecuTorch step (exporter/targets/executorch.py ``ExecuTorchStep``) with an untied head."""

    def __init__(self, model: Griffin, last_logits: bool = False) -> None:
        super().__init__()
        self.model = model
        self.last_logits = last_logits
        with torch.device("meta"):  # no throwaway [v, d] initialisation
            self.lm_head = nn.Linear(model.config.width, model.config.vocab_size, bias=False)
        # The embedding's own storage, not a clone: torchao quantizes the head from it (new
        # integer tensors), and the fp32 table goes once the lookup becomes an IntRowEmbedding.
        self.lm_head.weight = nn.Parameter(model.embed_tokens.weight.detach(), requires_grad=False)

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, *state: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        model = self.model
        hidden, new_state = model.hidden(input_ids, position_ids, unflatten_state(model.config, list(state)))
        logits = self.lm_head(head_positions(hidden, self.last_logits))  # [b, t or 1, v]
        cap = model.config.logits_soft_cap  # same soft-cap as Griffin.logits
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return (logits, *flatten_state(new_state))
