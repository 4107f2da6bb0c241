"""The modules a quantized ExecuTorch step is made of: the integer embedding lookup and the step with
an untied head. Built by quantization/executorch.py (torchao's integers) and
quantization/executorch_given.py (a quantized checkpoint's integers).
"""

from __future__ import annotations

import torch
from torch import nn

from exporter.model.griffin import Griffin
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
