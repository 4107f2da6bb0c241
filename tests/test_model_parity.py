"""Our explicit-state Griffin against the two oracles.

The official `recurrentgemma` torch model is the reference everywhere (RecurrentGemma
was trained with it); transformers agrees with it only below the window (it attends
to `window` keys instead of `window + 1`).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.config import GriffinConfig
from exporter.model.griffin import Griffin, positions
from exporter.model.state import AttentionLayerState, RecurrentLayerState
from tests.conftest import tiny_model
from tests.oracles import hf_model, official_model

TOL = 1e-5

CONFIGS = {
    "tiny": GriffinConfig(
        vocab_size=128, width=64, mlp_width=192, num_heads=4, num_kv_heads=1, lru_width=64,
        block_types=("recurrent", "recurrent", "attention") * 2, window=16,
    ),
    # lru_width != width, head_dim 16 from 3 heads, window 13 (not a power of two), odd vocab.
    "odd": GriffinConfig(
        vocab_size=97, width=48, mlp_width=100, num_heads=3, num_kv_heads=1, lru_width=72,
        block_types=("recurrent", "attention", "recurrent", "recurrent", "attention"), window=13,
    ),
    # attention first, 2 heads, tiny window 7, no soft-cap, no embedding scale.
    "attn-first": GriffinConfig(
        vocab_size=64, width=32, mlp_width=64, num_heads=2, num_kv_heads=1, lru_width=48,
        block_types=("attention", "recurrent", "attention", "recurrent"), window=7,
        logits_soft_cap=0.0, embed_scale_by_sqrt_width=False,
    ),
}  # fmt: skip


def _setup(name: str, batch: int = 2, factor: int = 3, seed: int = 0):
    cfg = CONFIGS[name]
    model = tiny_model(cfg, seed=seed + 1)
    ref = official_model(cfg, model.state_dict())
    length = factor * cfg.window + 5
    ids = torch.randint(0, cfg.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))
    return cfg, model, ref, ids


def _run_chunks(model: Griffin, ids: torch.Tensor, sizes: list[int], start: int = 0, state=None):
    b = ids.shape[0]
    state = model.init_state(b) if state is None else state
    outs, pos = [], start
    for n in sizes:
        logits, state = model(ids[:, pos - start : pos - start + n], positions(pos, n, b), state)
        outs.append(logits)
        pos += n
    return torch.cat(outs, dim=1), state


def _assert_state_matches(ours, official_cache, cfg: GriffinConfig) -> None:
    for i, (mine, theirs) in enumerate(zip(ours, official_cache.values(), strict=True)):
        if isinstance(mine, RecurrentLayerState):
            torch.testing.assert_close(mine.conv_state, theirs.conv1d_state, atol=TOL, rtol=0, msg=f"conv {i}")
            torch.testing.assert_close(mine.recurrent_state, theirs.rg_lru_state, atol=TOL, rtol=0, msg=f"lru {i}")
        else:
            assert isinstance(mine, AttentionLayerState)
            # official [b, w, 1, e] ring, slot = position % window: the same ring layout as ours [b, k, w, e]
            torch.testing.assert_close(mine.key, theirs.keys.permute(0, 2, 1, 3), atol=TOL, rtol=0, msg=f"key {i}")
            torch.testing.assert_close(mine.value, theirs.values.permute(0, 2, 1, 3), atol=TOL, rtol=0)


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_token_by_token_matches_official(name: str) -> None:
    cfg, model, ref, ids = _setup(name)
    b, n = ids.shape
    ref_logits, _ = ref(ids, positions(0, n, b))
    cache = ref.init_cache(b, torch.float32)
    state = model.init_state(b)
    for t in range(n):
        ours, state = model(ids[:, t : t + 1], positions(t, 1, b), state)
        theirs, cache = ref(ids[:, t : t + 1], positions(t, 1, b), cache)
        torch.testing.assert_close(ours, theirs, atol=TOL, rtol=0, msg=f"logits at {t}")
    torch.testing.assert_close(torch.cat([ref_logits], 1)[:, -1:], ours, atol=TOL, rtol=0)
    _assert_state_matches(state, cache, cfg)


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_chunks_unaligned_with_window_match_official(name: str) -> None:
    cfg, model, ref, ids = _setup(name)
    b, n = ids.shape
    ref_logits, ref_cache = ref(ids, positions(0, n, b))
    # chunk sizes that never align with the window, including a chunk longer than it
    sizes, left, k = [], n, 0
    pattern = [5, cfg.window + 3, 1, 2 * cfg.window - 1, 3]
    while left:
        sizes.append(min(pattern[k % len(pattern)], left))
        left -= sizes[-1]
        k += 1
    ours, state = _run_chunks(model, ids, sizes)
    torch.testing.assert_close(ours, ref_logits, atol=TOL, rtol=0)
    _assert_state_matches(state, ref_cache, cfg)


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_continue_from_official_mid_sequence_state(name: str) -> None:
    """Take the official cache after a prefix, hand it to our model, continue."""
    cfg, model, ref, ids = _setup(name)
    b, n = ids.shape
    ref_logits, _ = ref(ids, positions(0, n, b))
    cut = 2 * cfg.window + 3
    _, cache = ref(ids[:, :cut], positions(0, cut, b))
    state = []
    for kind, c in zip(cfg.block_types, cache.values(), strict=True):
        if kind == "recurrent":
            state.append(RecurrentLayerState(c.conv1d_state.clone(), c.rg_lru_state.clone()))
        else:
            state.append(AttentionLayerState(c.keys.permute(0, 2, 1, 3).clone(), c.values.permute(0, 2, 1, 3).clone()))
    ours, _ = _run_chunks(model, ids[:, cut:], [4, 1, n - cut - 5], start=cut, state=tuple(state))
    torch.testing.assert_close(ours, ref_logits[:, cut:], atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["tiny", "odd"])
@torch.no_grad()
def test_matches_transformers_below_window(name: str) -> None:
    cfg, model, _, ids = _setup(name)
    hf = hf_model(cfg, model.state_dict())
    w = cfg.window
    theirs = hf(ids[:, :w]).logits
    ours, _ = _run_chunks(model, ids[:, :w], [3, w - 3])
    torch.testing.assert_close(ours, theirs, atol=TOL, rtol=0)
    # beyond the window the two upstreams differ by design (window vs window + 1 keys)
    full = hf(ids).logits
    ours_full, _ = _run_chunks(model, ids, [ids.shape[1]])
    assert (full[:, w + 1 :] - ours_full[:, w + 1 :]).abs().max() > 1e-3


@torch.no_grad()
def test_grouped_kv_heads_match_transformers() -> None:
    """More than one KV head (not in the official code): transformers is the oracle."""
    cfg = CONFIGS["tiny"].with_(num_kv_heads=2)
    model = tiny_model(cfg, seed=3)
    hf = hf_model(cfg, model.state_dict())
    ids = torch.randint(0, cfg.vocab_size, (2, cfg.window))
    ours, _ = _run_chunks(model, ids, [5, 1, cfg.window - 6])
    torch.testing.assert_close(ours, hf(ids).logits, atol=TOL, rtol=0)


@torch.no_grad()
def test_position_zero_ignores_stale_state() -> None:
    """A sequence that starts at position 0 gives the same logits whatever state is passed in."""
    cfg, model, _, ids = _setup("tiny", batch=1)
    _, dirty = _run_chunks(model, ids, [ids.shape[1]])
    a, _ = _run_chunks(model, ids[:, :20], [7, 13], state=dirty)
    b, _ = _run_chunks(model, ids[:, :20], [7, 13])
    torch.testing.assert_close(a, b, atol=0, rtol=0)


@torch.no_grad()
def test_rows_at_different_positions_in_one_batch() -> None:
    cfg, model, _, ids = _setup("odd", batch=2)
    _, s0 = _run_chunks(model, ids[:1], [10])
    _, s1 = _run_chunks(model, ids[1:], [29])
    state = tuple(type(a)(*(torch.cat([x, y]) for x, y in zip(a, b, strict=True))) for a, b in zip(s0, s1, strict=True))
    pos = torch.tensor([[10, 11, 12], [29, 30, 31]])
    step_ids = torch.stack([ids[0, 10:13], ids[1, 29:32]])
    both, _ = model(step_ids, pos, state)
    one, _ = model(ids[:1, 10:13], pos[:1], s0)
    two, _ = model(ids[1:, 29:32], pos[1:], s1)
    torch.testing.assert_close(both, torch.cat([one, two]), atol=TOL, rtol=0)


@settings(max_examples=8, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=6))
@torch.no_grad()
def test_any_chunking_gives_the_same_logits(cuts: list[int]) -> None:
    cfg = CONFIGS["odd"]
    model = tiny_model(cfg, seed=5)
    n = 3 * cfg.window + 2
    ids = torch.randint(0, cfg.vocab_size, (1, n), generator=torch.Generator().manual_seed(1))
    sizes, left = [], n
    for c in cuts:
        if left == 0:
            break
        sizes.append(min(c, left))
        left -= sizes[-1]
    if left:
        sizes.append(left)
    whole, s_whole = _run_chunks(model, ids, [n])
    parts, s_parts = _run_chunks(model, ids, sizes)
    torch.testing.assert_close(parts, whole, atol=TOL, rtol=0)
    for a, b in zip(s_parts, s_whole, strict=True):
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, atol=TOL, rtol=0)
