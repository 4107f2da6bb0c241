"""Griffin layers with explicit state: ``forward(x, positions, state) -> (y, new_state)``.

Semantics follow Google DeepMind's `recurrentgemma` (torch/modules.py, layers.py):
RMSNorm scales by (1 + w); RoPE rotates the first half of each head; the local
attention mask is ``k_pos <= q_pos <= k_pos + window`` (window cached keys plus
the query itself); the RG-LRU resets where position == 0 and keeps its state in
fp32. Parameter names and shapes follow Hugging Face's RecurrentGemma so that
an HF checkpoint loads by name (see exporter/checkpoint/weight_map.py).

Everything here is written for ``torch.export``: no Python branching on tensor
values, index arithmetic in int64 with non-negative operands of ``%`` (the
ExecuTorch runtime computes ``remainder`` of negatives with C semantics), and
``torch.logical_and`` instead of ``&`` (Core ML).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from exporter.config import GriffinConfig
from exporter.model.state import AttentionLayerState, RecurrentLayerState

# Same large negative the official code uses for masked attention logits.
_MASK_VALUE = -2.3819763e38
KV = tuple[torch.Tensor, torch.Tensor]  # (key, value): rings [b, k, w, e] or new rows [b, k, t, e]


def gelu(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.gelu(x, approximate="tanh")


class RMSNorm(nn.Module):
    """``x / rms(x) * (1 + w)``. A target may trace another form of :meth:`mean_square`
    (the same reduction; exporter/targets/executorch_layers.py)."""

    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(width))

    def mean_square(self, x: torch.Tensor) -> torch.Tensor:  # [..., d] -> [..., 1]
        return torch.mean(torch.square(x), dim=-1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., d] -> [..., d]
        return x * torch.rsqrt(self.mean_square(x) + self.eps) * (self.weight + 1.0)


class MLPBlock(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(width, hidden)
        self.up_proj = nn.Linear(width, hidden)
        self.down_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [b, t, d] -> [b, t, d]
        return self.down_proj(gelu(self.gate_proj(x)) * self.up_proj(x))


def block_diagonal(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x [b, t, l] through per-head blocks w [h, l/h, l/h] plus b [h, l/h]."""
    bsz, t, width = x.shape
    h = w.shape[0]
    xh = x.reshape(bsz, t, h, width // h)
    y = torch.einsum("bthi,hij->bthj", xh, w) + b
    return y.reshape(bsz, t, width)


class RGLRU(nn.Module):
    """Real-Gated Linear Recurrent Unit (Griffin paper, section 2.4)."""

    # The block-diagonal gates' parameters, (weight, bias) each: the names every stage that
    # treats the gates apart (quantization recipes, ExecuTorch's per-head linears) looks for.
    GATE_PARAMS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("input_gate_weight", "input_gate_bias"),
        ("recurrent_gate_weight", "recurrent_gate_bias"),
    )

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        bw = width // num_heads
        self.recurrent_param = nn.Parameter(torch.zeros(width))
        self.input_gate_weight = nn.Parameter(torch.zeros(num_heads, bw, bw))
        self.input_gate_bias = nn.Parameter(torch.zeros(num_heads, bw))
        self.recurrent_gate_weight = nn.Parameter(torch.zeros(num_heads, bw, bw))
        self.recurrent_gate_bias = nn.Parameter(torch.zeros(num_heads, bw))
        self.max_len: int | None = None  # see linear_scan; set by exporter.step.step.any_length
        self.padded_scan = False  # see linear_scan; set by exporter.step.step.any_length

    def gate_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The input and recurrence gates before their sigmoid: x [b, t, l] -> ([b, t, l], [b, t, l])."""
        return (
            block_diagonal(x, self.input_gate_weight, self.input_gate_bias),
            block_diagonal(x, self.recurrent_gate_weight, self.recurrent_gate_bias),
        )

    def forward(self, x: torch.Tensor, positions: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [b, t, l], positions [b, t], h0 [b, l] fp32 -> (y [b, t, l], h [b, l] fp32)."""
        x_logits, a_logits = self.gate_logits(x)
        gate_x, gate_a = torch.sigmoid(x_logits), torch.sigmoid(a_logits)
        log_a = -8.0 * gate_a * nn.functional.softplus(self.recurrent_param)
        # keep is 0.0 where a new sequence starts (position 0), else 1.0: there a = 0 and the
        # multiplier sqrt(1 - a^2) = 1 exactly, as selecting them would give (a multiply is cheaper)
        keep = (positions != 0).unsqueeze(-1).to(log_a.dtype)  # [b, t, 1]
        a = torch.exp(log_a) * keep
        multiplier = torch.sqrt(1.0 - torch.exp(2.0 * log_a) * keep)
        normalized = (x * gate_x * multiplier).float()
        a = a.float()
        h = linear_scan(a, normalized, h0, self.max_len, self.padded_scan)
        return h.to(x.dtype), h[:, -1]


def linear_scan(
    a: torch.Tensor, u: torch.Tensor, h0: torch.Tensor, max_len: int | None, padded: bool = False
) -> torch.Tensor:
    """Every h_i = a_i * h_(i-1) + u_i, from h_(-1) = h0: a, u [b, t, l], h0 [b, l] -> [b, t, l].

    ``max_len`` None: unrolled over t, which is static when traced (one program per t). An
    int: one graph for any t from 1 to ``max_len``, in one of two forms. ``padded``: a and u
    padded to ``max_len`` (with the identity, a = 1 and u = 0), unrolled over ``max_len``
    steps and cut back to t: the unrolled scan's sums exactly, at its cost for every t, so
    for a prefill graph (its t is mostly ``max_len``), not for decode (t = 1 would pay
    ``max_len`` steps). Otherwise a doubling (Hillis-Steele) scan of ceil(log2(max_len))
    steps, each composing every position with the one d before it: cheap at t = 1.
    In onnxruntime (2 threads, t = 128, width 2560) the unrolled scan took 0.77 ms, the
    doubling scan 4.2 ms and a blocked form of it 2.3 ms (measured 2026-12-07): t steps on
    one row each cost less than a few whole-chunk passes.
    """
    t = u.shape[1]
    if max_len is not None and padded:
        a = nn.functional.pad(a, (0, 0, 0, max_len - t), value=1.0)
        u = nn.functional.pad(u, (0, 0, 0, max_len - t))
        return linear_scan(a, u, h0, None)[:, :t]
    if max_len is None:
        # The rows come from one split of a and one of u (not a select per row and tensor), and
        # h keeps its length-1 axis: in an ExecuTorch program a select is a portable op between
        # two XNNPACK calls, 2 x t of them a layer (2,304 in a 2B prefill chunk of 64); a split
        # is one op per tensor, and the multiplies and adds of the scan stay together.
        if t == 1:
            return a * h0.unsqueeze(1) + u
        h, hs = h0.unsqueeze(1), []
        for a_i, u_i in zip(a.split(1, dim=1), u.split(1, dim=1), strict=True):
            h = a_i * h + u_i
            hs.append(h)
        return torch.cat(hs, dim=1)
    u = torch.cat([u[:, :1] + a[:, :1] * h0.unsqueeze(1), u[:, 1:]], dim=1)
    d = 1
    while d < max_len:
        # compose with the element d positions back (the identity, a = 1 and u = 0, before the start)
        u_back = nn.functional.pad(u, (0, 0, d, 0))[:, :t]
        if 2 * d < max_len:
            a_back = nn.functional.pad(a, (0, 0, d, 0), value=1.0)[:, :t]
            u, a = u + a * u_back, a * a_back
        else:  # the last step: its composed decays would serve no later step
            u = u + a * u_back
        d *= 2
    return u


class RecurrentBlock(nn.Module):
    def __init__(self, config: GriffinConfig) -> None:
        super().__init__()
        d, l = config.width, config.lru_width
        self.conv_width = config.conv_width
        self.linear_y = nn.Linear(d, l)
        self.linear_x = nn.Linear(d, l)
        self.linear_out = nn.Linear(l, d)
        # Hugging Face layout [l, 1, K]: weight[:, 0, K-1] multiplies the current input.
        self.conv_1d = nn.Conv1d(l, l, kernel_size=config.conv_width, groups=l, padding=config.conv_width - 1)
        self.rg_lru = RGLRU(l, config.num_heads)

    def conv(
        self, x: torch.Tensor, positions: torch.Tensor, conv_state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal depthwise Conv1D continuing from ``conv_state`` [b, c, l]."""
        c = self.conv_width - 1
        t = x.shape[1]
        # Row j of the state holds position p0 - c + j; rows before position 0 are zeroed,
        # so a sequence starting at position 0 never sees stale state.
        row_pos = positions[:, :1] - c + torch.arange(c, dtype=torch.int64, device=x.device).unsqueeze(0)
        valid = (row_pos >= 0).unsqueeze(-1).to(x.dtype)  # [b, c, 1]
        ext = torch.cat([conv_state.to(x.dtype) * valid, x], dim=1)  # [b, c + t, l]
        w = self.conv_1d.weight[:, 0, :]  # [l, K]
        bias = self.conv_1d.bias
        assert bias is not None  # built with bias=True
        out = bias
        for k in range(self.conv_width):
            out = out + ext[:, k : k + t] * w[:, k]
        new_state = ext[:, t : t + c]
        return out, new_state

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, state: RecurrentLayerState
    ) -> tuple[torch.Tensor, RecurrentLayerState]:
        y = gelu(self.linear_y(x))
        xb, conv_state = self.conv(self.linear_x(x), positions, state.conv_state)
        xb, rnn_state = self.rg_lru(xb, positions, state.recurrent_state)
        out = self.linear_out(xb * y)
        return out, RecurrentLayerState(conv_state.to(state.conv_state.dtype), rnn_state)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, rotary_dim: int, theta: float) -> torch.Tensor:
    """x [b, n, t, e], positions [b, t]: rotate-half RoPE on the first ``rotary_dim`` dims."""
    x_rope, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
    half = rotary_dim // 2
    freq = torch.arange(half, dtype=torch.float32, device=x.device)
    inv_freq = 1.0 / (theta ** (2.0 * freq / rotary_dim))
    angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq  # [b, t, half]
    sin = torch.sin(angles).unsqueeze(1).to(x.dtype)  # [b, 1, t, half]
    cos = torch.cos(angles).unsqueeze(1).to(x.dtype)
    first, second = x_rope[..., :half], x_rope[..., half:]
    return torch.cat([first * cos - second * sin, second * cos + first * sin, x_pass], dim=-1)


def ring_positions(start: torch.Tensor, window: int) -> torch.Tensor:
    """Position held by each ring slot just before ``start``; negative = empty.

    start [b, 1] int64 (first position of the step) -> [b, w] int64. Slot s holds
    the latest position p < start with p % w == s. The operand of ``%`` is kept
    non-negative (start - 1 + w - s >= 0) for the ExecuTorch runtime.
    """
    slots = torch.arange(window, dtype=torch.int64, device=start.device).unsqueeze(0)
    last = start - 1
    return last - torch.remainder(last + window - slots, window)


class LocalAttention(nn.Module):
    """Multi-query local attention over a KV ring buffer of ``window`` slots.

    :meth:`scores`, :meth:`attend`, :meth:`chunk_write` and :meth:`decode_write` are the steps a target may
    trace in another form of the same maths (exporter/targets/executorch_layers.py).
    """

    def __init__(self, config: GriffinConfig) -> None:
        super().__init__()
        d, h, k, e = config.width, config.num_heads, config.num_kv_heads, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = h, k, e
        self.window = config.window
        self.rotary_dim = config.rotary_dim
        self.theta = config.rope_theta
        self.q_proj = nn.Linear(d, h * e, bias=config.attention_bias)
        self.k_proj = nn.Linear(d, k * e, bias=config.attention_bias)
        self.v_proj = nn.Linear(d, k * e, bias=config.attention_bias)
        self.o_proj = nn.Linear(h * e, d, bias=True)
        # None: traced per static t (t = 1 writes its one slot by a select). An int: one graph
        # for any t up to it (exporter.step.step.any_length), which writes the ring by gather.
        self.max_len: int | None = None

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, state: AttentionLayerState
    ) -> tuple[torch.Tensor, AttentionLayerState]:
        b, t, _ = x.shape
        h, k, e, w = self.num_heads, self.num_kv_heads, self.head_dim, self.window
        q = self.q_proj(x).reshape(b, t, h, e).transpose(1, 2)  # [b, h, t, e]
        kn = self.k_proj(x).reshape(b, t, k, e).transpose(1, 2)  # [b, k, t, e]
        vn = self.v_proj(x).reshape(b, t, k, e).transpose(1, 2)
        q = apply_rope(q, positions, self.rotary_dim, self.theta)
        kn = apply_rope(kn, positions, self.rotary_dim, self.theta)

        start = positions[:, :1]  # [b, 1]
        old_key, old_value = state.key.to(x.dtype), state.value.to(x.dtype)
        k_pos = torch.cat([ring_positions(start, w), positions], dim=1)  # [b, w + t]

        q_pos = positions.unsqueeze(-1)  # [b, t, 1]
        kp = k_pos.unsqueeze(1)  # [b, 1, w + t]
        mask = torch.logical_and(torch.logical_and(kp >= 0, kp <= q_pos), q_pos <= kp + w)  # [b, t, w + t]

        # Scores against the ring and against this chunk separately, concatenated as scores
        # (t x (w + t) values per head) rather than concatenating the keys/values (w x e each).
        g = h // k
        qg = q.reshape(b, k, g * t, e)
        scores = self.scores(qg, old_key, kn).reshape(b, k, g, t, w + t) * (e**-0.5)
        # masked by adding the mask value (0 where allowed): the same scores as selecting it, since
        # any score is below half its spacing there; the select is built once per layer on the small
        # [b, 1, 1, t, w + t] mask instead of on every head's scores
        scores = scores + torch.where(mask, 0.0, _MASK_VALUE).unsqueeze(1).unsqueeze(1)
        probs = torch.softmax(scores.float(), dim=-1).to(x.dtype).reshape(b, k, g * t, w + t)
        out = self.attend(probs, old_value, vn)
        out = out.reshape(b, h, t, e).transpose(1, 2).reshape(b, t, h * e)

        # New ring: slot s takes the latest position <= start + t - 1 with p % w == s,
        # from this chunk when that position is in it, else the old slot.
        if self.max_len is None and t == 1:  # decode: one slot changes
            new_key, new_value = self.decode_write(start, state, (old_key, old_value), (kn, vn))
        else:
            new_key, new_value = self.chunk_write(start, state, (old_key, old_value), (kn, vn))
        return self.o_proj(out), AttentionLayerState(new_key, new_value)

    def scores(self, qg: torch.Tensor, old_key: torch.Tensor, kn: torch.Tensor) -> torch.Tensor:
        """Queries qg [b, k, g*t, e] against the ring old_key [b, k, w, e] and the chunk's keys
        kn [b, k, t, e] -> scores [b, k, g*t, w + t] (any shape of that many values, in that order)."""
        ring_scores = torch.matmul(qg, old_key.transpose(2, 3))
        return torch.cat([ring_scores, torch.matmul(qg, kn.transpose(2, 3))], dim=-1)

    def attend(self, probs: torch.Tensor, old_value: torch.Tensor, vn: torch.Tensor) -> torch.Tensor:
        """probs [b, k, g*t, w + t] over the ring old_value [b, k, w, e] and the chunk's values
        vn [b, k, t, e] -> [b, k, g*t, e] (any shape of that many values, in that order)."""
        w = self.window
        return torch.matmul(probs[..., :w], old_value) + torch.matmul(probs[..., w:], vn)

    def chunk_write(self, start: torch.Tensor, state: AttentionLayerState, rings: KV, rows: KV) -> KV:
        """The (key, value) rings [b, k, w, e] after a step of t positions from ``start`` [b, 1]
        (any t, also more than w) writes its (key, value) ``rows`` [b, k, t, e], in the dtypes of ``state``.

        Slot s takes the latest position <= start + t - 1 with p % w == s: from the chunk when that
        position is in it, else the old slot; one gather from [ring, chunk] (t may be dynamic).
        """
        (old_key, old_value), (kn, vn) = rings, rows
        b, k, t, e = kn.shape
        w = self.window
        slots = torch.arange(w, dtype=torch.int64, device=start.device).unsqueeze(0)
        last = start + (t - 1)
        newest = last - torch.remainder(last + w - slots, w)  # [b, w]
        src = torch.where(newest >= start, newest - start + w, slots)  # index into [ring, chunk]
        idx = src.reshape(b, 1, w, 1).expand(b, k, w, e)
        new_key = torch.gather(torch.cat([old_key, kn], dim=2), 2, idx).to(state.key.dtype)
        new_value = torch.gather(torch.cat([old_value, vn], dim=2), 2, idx).to(state.value.dtype)
        return new_key, new_value

    def decode_write(self, start: torch.Tensor, state: AttentionLayerState, rings: KV, rows: KV) -> KV:
        """The (key, value) rings [b, k, w, e] after a decode step (t = 1) at ``start`` [b, 1]
        writes its (key, value) ``rows`` [b, k, 1, e] into slot start % w, in the dtypes of ``state``.

        A select, no index tensor of the ring's size.
        """
        (old_key, old_value), (kn, vn) = rings, rows
        b, w = start.shape[0], self.window
        slots = torch.arange(w, dtype=torch.int64, device=start.device).unsqueeze(0)
        take = (slots == torch.remainder(start, w)).reshape(b, 1, w, 1)
        new_key = torch.where(take, kn, old_key).to(state.key.dtype)
        new_value = torch.where(take, vn, old_value).to(state.value.dtype)
        return new_key, new_value
