"""exporter/model/release.py: a released model keeps its config, names and shapes, not its data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from exporter.model.release import release_weights
from exporter.model.state import init_state
from tests.conftest import tiny_model


def test_release_frees_every_weight_and_keeps_the_shapes() -> None:
    model = tiny_model()
    config = model.config
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    want = sum(t.numel() * t.element_size() for t in tensors.values())
    before = {n: (p.shape, p.dtype, p.requires_grad) for n, p in model.named_parameters()}
    buffers = {n: (b.shape, b.dtype) for n, b in model.named_buffers()}
    assert want > 0

    assert release_weights(model) == want
    assert model.config is config and model.config == config
    assert {n: (p.shape, p.dtype, p.requires_grad) for n, p in model.named_parameters()} == before
    assert {n: (b.shape, b.dtype) for n, b in model.named_buffers()} == buffers
    assert all(p.is_meta for p in model.parameters()) and all(b.is_meta for b in model.buffers())
    assert all(isinstance(p, nn.Parameter) for p in model.parameters())
    assert release_weights(model) == 0  # nothing left to free
    tokens = torch.zeros(1, 1, dtype=torch.long)
    with pytest.raises((NotImplementedError, RuntimeError)):  # unusable for computation
        model(tokens, tokens, init_state(config))


def test_tied_weights_count_once_and_stay_tied() -> None:
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = nn.Sequential(emb, head)
    model.register_buffer("scale", torch.ones(3, dtype=torch.float16))
    assert release_weights(model) == 10 * 4 * 4 + 3 * 2
    assert emb.weight is head.weight and emb.weight.is_meta
    assert model.scale.is_meta and model.scale.dtype == torch.float16
