"""The whole recurrent state of a Griffin, as typed values.

Per recurrent layer: the Conv1D state (the last c = conv_width-1 inputs of the
convolution, oldest first) and the RG-LRU state (always fp32). Per attention
layer: the key and value ring buffers, slot = position % window.

The state never grows with context: its size is fixed by the config.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from exporter.config import GriffinConfig
from exporter.errors import RgMobileError


class RecurrentLayerState(NamedTuple):
    conv_state: torch.Tensor  # [b, c, l]   model dtype
    recurrent_state: torch.Tensor  # [b, l]   fp32


class AttentionLayerState(NamedTuple):
    key: torch.Tensor  # [b, k, w, e]  ring buffer, slot = position % w
    value: torch.Tensor  # [b, k, w, e]


LayerState = RecurrentLayerState | AttentionLayerState
GriffinState = tuple[LayerState, ...]


def state_shapes(config: GriffinConfig, batch: int = 1) -> list[tuple[int, str, tuple[int, ...]]]:
    """(layer, field, shape) for every state tensor, in the one canonical order."""
    out: list[tuple[int, str, tuple[int, ...]]] = []
    for i, kind in enumerate(config.block_types):
        if kind == "recurrent":
            out.append((i, "conv_state", (batch, config.conv_width - 1, config.lru_width)))
            out.append((i, "recurrent_state", (batch, config.lru_width)))
        else:
            kv = (batch, config.num_kv_heads, config.window, config.head_dim)
            out.append((i, "key", kv))
            out.append((i, "value", kv))
    return out


def init_state(
    config: GriffinConfig, batch: int = 1, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> GriffinState:
    """The all-zero state of a fresh sequence."""
    layers: list[LayerState] = []
    for kind in config.block_types:
        if kind == "recurrent":
            layers.append(
                RecurrentLayerState(
                    conv_state=torch.zeros(batch, config.conv_width - 1, config.lru_width, dtype=dtype, device=device),
                    recurrent_state=torch.zeros(batch, config.lru_width, dtype=torch.float32, device=device),
                )
            )
        else:
            shape = (batch, config.num_kv_heads, config.window, config.head_dim)
            layers.append(
                AttentionLayerState(
                    key=torch.zeros(shape, dtype=dtype, device=device),
                    value=torch.zeros(shape, dtype=dtype, device=device),
                )
            )
    return tuple(layers)


def flatten_state(state: GriffinState) -> list[torch.Tensor]:
    """State tensors in canonical order (see :func:`state_shapes`)."""
    return [t for layer in state for t in layer]


def unflatten_state(config: GriffinConfig, tensors: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> GriffinState:
    """Inverse of :func:`flatten_state`."""
    if len(tensors) != 2 * config.num_layers:
        raise RgMobileError(f"state: expected {2 * config.num_layers} tensors, got {len(tensors)}")
    layers: list[LayerState] = []
    for i, kind in enumerate(config.block_types):
        a, b = tensors[2 * i], tensors[2 * i + 1]
        layers.append(RecurrentLayerState(a, b) if kind == "recurrent" else AttentionLayerState(a, b))
    return tuple(layers)


def state_nbytes(state: GriffinState) -> int:
    return sum(t.numel() * t.element_size() for t in flatten_state(state))
