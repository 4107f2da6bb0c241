"""The step with the KV ring buffers held as Core ML states (``--coreml-state internal``, iOS 18).

Core ML states (``ct.StateType``) are fp16 only, and coremltools converts a
torch.export'ed mutable buffer into one when it is written by slice
assignment (``buf[:] = x``; ``buf.copy_(x)`` fails to convert).

Only the attention KV ring buffers become states. The Conv1D and RG-LRU states
stay explicit fp32 inputs/outputs, because fp16 rounding of the RG-LRU state
accumulates: measured in PyTorch on a random ``small`` model (window 64), KV in
fp16 keeps the logits error flat (max abs 5.3e-4 over 1000 tokens), while also
rounding the RG-LRU/conv state to fp16 after every step makes it grow with
context length (2.2e-3 after 200 tokens, 5.6e-3 after 1000). The RG-LRU
state is fp32 upstream too.

``StatefulStep(model)(input_ids, position_ids, *explicit_state) -> (logits, *new_explicit_state)``
with ``explicit_state`` the conv/recurrent states in IOSpec order; the buffer
of the KV input ``past_key_values.{i}.key`` is named by its Core ML feature
name, ``past_key_values_{i}_key``, which becomes the Core ML state name.
"""

from __future__ import annotations

import torch
from torch import nn

from exporter.model.griffin import Griffin
from exporter.model.state import AttentionLayerState, RecurrentLayerState
from exporter.step.iospec import IOSpec, TensorSpec, build_iospec
from exporter.targets.coreml_rewrites import feature_name

INTERNAL_FIELDS = ("key", "value")  # IOSpec state fields held as Core ML states
STATE_DTYPE = torch.float16  # the only state dtype Core ML converts


def is_internal(spec: TensorSpec) -> bool:
    return spec.role == "state" and spec.field in INTERNAL_FIELDS


def explicit_state_inputs(io: IOSpec) -> list[TensorSpec]:
    return [s for s in io.state_inputs if not is_internal(s)]


def internal_state_inputs(io: IOSpec) -> list[TensorSpec]:
    return [s for s in io.state_inputs if is_internal(s)]


class StatefulStep(nn.Module):
    """The step with KV ring buffers as fp16 buffers (batch 1) updated in place."""

    def __init__(self, model: Griffin) -> None:
        super().__init__()
        self.model = model
        self.io = build_iospec(model.config)
        for s in internal_state_inputs(self.io):
            shape = s.concrete_shape(batch=1)
            self.register_buffer(feature_name(s.name), torch.zeros(shape, dtype=STATE_DTYPE))

    def buffer(self, layer: int, field: str) -> torch.Tensor:
        return self.get_buffer(feature_name(IOSpec.state_input_name(layer, field)))

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, *explicit: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """input_ids/position_ids [1, t], explicit conv [1, c, l] / recurrent [1, l] states -> logits, new states."""
        given = iter(explicit)
        state: list[RecurrentLayerState | AttentionLayerState] = []
        for i, kind in enumerate(self.model.config.block_types):
            if kind == "recurrent":
                state.append(RecurrentLayerState(next(given), next(given)))
            else:
                state.append(AttentionLayerState(self.buffer(i, "key").float(), self.buffer(i, "value").float()))
        logits, new_state = self.model(input_ids, position_ids, tuple(state))
        outputs = [logits]
        for i, layer_state in enumerate(new_state):
            if isinstance(layer_state, AttentionLayerState):
                # Slice assignment: the one in-place form coremltools turns into a state update.
                self.buffer(i, "key")[:] = layer_state.key.to(STATE_DTYPE)
                self.buffer(i, "value")[:] = layer_state.value.to(STATE_DTYPE)
            else:
                outputs.extend(layer_state)
        return tuple(outputs)


def example_inputs(model: Griffin, seq: int) -> tuple[torch.Tensor, ...]:
    """(input_ids, position_ids, *explicit zero states) for tracing a stateful step of ``seq`` tokens."""
    io = build_iospec(model.config)
    zeros = [torch.zeros(s.concrete_shape(batch=1)) for s in explicit_state_inputs(io)]
    return (torch.zeros(1, seq, dtype=torch.int64), torch.arange(seq, dtype=torch.int64).unsqueeze(0), *zeros)
