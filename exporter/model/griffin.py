"""The Griffin model (RecurrentGemma) with the whole state passed explicitly.

``Griffin.forward(input_ids [b, t], position_ids [b, t], state) -> (logits [b, t, v], state)``

``position_ids`` are absolute and contiguous within a step (row r covers
p0_r .. p0_r + t - 1). Position 0 starts a new sequence: whatever state is
passed in is then ignored, exactly as upstream resets at segment position 0.
Any t works (t = 1 decode, or prefill chunks of any length, across the window).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from exporter.config import GriffinConfig
from exporter.model.layers import LocalAttention, MLPBlock, RecurrentBlock, RMSNorm
from exporter.model.state import GriffinState, LayerState, init_state


class ResidualBlock(nn.Module):
    def __init__(self, config: GriffinConfig, kind: str) -> None:
        super().__init__()
        self.temporal_pre_norm = RMSNorm(config.width, config.rms_norm_eps)
        self.temporal_block: nn.Module = RecurrentBlock(config) if kind == "recurrent" else LocalAttention(config)
        self.channel_pre_norm = RMSNorm(config.width, config.rms_norm_eps)
        self.mlp_block = MLPBlock(config.width, config.mlp_width)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, state: LayerState) -> tuple[torch.Tensor, LayerState]:
        y, new_state = self.temporal_block(self.temporal_pre_norm(x), positions, state)
        residual = y + x
        return self.mlp_block(self.channel_pre_norm(residual)) + residual, new_state


class Griffin(nn.Module):
    """RecurrentGemma / Griffin language model; the head is tied to the embedding."""

    def __init__(self, config: GriffinConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.width)
        self.layers = nn.ModuleList(ResidualBlock(config, kind) for kind in config.block_types)
        self.final_norm = RMSNorm(config.width, config.rms_norm_eps)
        self.embed_scale = config.embed_scale

    def init_state(self, batch: int = 1) -> GriffinState:
        dtype = self.embed_tokens.weight.dtype
        return init_state(self.config, batch, dtype=dtype, device=self.embed_tokens.weight.device)

    def hidden(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, state: GriffinState
    ) -> tuple[torch.Tensor, GriffinState]:
        """Final-normed hidden states [b, t, d] and the new state."""
        x = self.embed_tokens(input_ids) * self.embed_scale
        new_state = []
        for layer, layer_state in zip(self.layers, state, strict=True):
            x, s = layer(x, position_ids, layer_state)
            new_state.append(s)
        return self.final_norm(x), tuple(new_state)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Tied head plus soft-cap: [b, t, d] -> [b, t, v]."""
        logits = torch.matmul(hidden, self.embed_tokens.weight.t())
        cap = self.config.logits_soft_cap
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, state: GriffinState
    ) -> tuple[torch.Tensor, GriffinState]:
        hidden, new_state = self.hidden(input_ids, position_ids, state)
        return self.logits(hidden), new_state


def positions(start: int, length: int, batch: int = 1) -> torch.Tensor:
    """position_ids [b, t] for a step starting at absolute position ``start``."""
    return torch.arange(start, start + length, dtype=torch.int64).unsqueeze(0).expand(batch, length).contiguous()


def random_init_(model: Griffin, seed: int = 0, nonzero_biases: bool = True) -> Griffin:
    """Fill every parameter with random values (upstream-like scales).

    ``nonzero_biases`` also randomises biases and norm weights, which upstream
    initialises to zero; zeros hide bugs in tests.
    """
    gen = torch.Generator().manual_seed(seed)
    cfg = model.config
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("recurrent_param"):
                # Upstream: a = sigmoid-like ring in [0.9, 0.999], stored through softplus^-1.
                rad = torch.empty(p.shape).uniform_(0.9**2 + 1e-8, 0.999**2 + 1e-8, generator=gen).log() * 0.5
                p.copy_((-rad).exp().sub(1.0).log())  # softplus(p) = -rad
            elif p.ndim == 1 or name.endswith("_bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * (0.1 if nonzero_biases else 0.0))
            elif name.endswith("embed_tokens.weight"):
                p.copy_(torch.randn(p.shape, generator=gen) * math.sqrt(1.0 / cfg.width))
            elif "conv_1d" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * math.sqrt(0.01 / cfg.conv_width))
            else:
                fan_in = p.shape[-1] if p.ndim == 2 else p.shape[-2]
                p.copy_(torch.randn(p.shape, generator=gen) * math.sqrt(1.0 / fan_in))
    return model
