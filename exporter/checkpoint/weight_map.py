"""The one weight map: source checkpoint names -> our parameter names.

Our names are Hugging Face's without the ``model.`` prefix, so an HF checkpoint
maps by name. The official `recurrentgemma` PyTorch state dict maps through the
table below (official name, our name, how the tensor is transformed).

Every loader ends in :func:`check_state_dict`, which names missing, unexpected
and mis-shaped tensors in one clear error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch

from exporter.config import GriffinConfig
from exporter.errors import RgMobileError

Tensor = torch.Tensor


def expected_shapes(config: GriffinConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter of :class:`exporter.model.griffin.Griffin`, with its shape."""
    d, f, l, e = config.width, config.mlp_width, config.lru_width, config.head_dim
    h, k, bw, kw = config.num_heads, config.num_kv_heads, config.lru_width // config.num_heads, config.conv_width
    out: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (config.vocab_size, d), "final_norm.weight": (d,)}
    for i, kind in enumerate(config.block_types):
        p = f"layers.{i}."
        out[p + "temporal_pre_norm.weight"] = (d,)
        out[p + "channel_pre_norm.weight"] = (d,)
        out[p + "mlp_block.gate_proj.weight"] = (f, d)
        out[p + "mlp_block.gate_proj.bias"] = (f,)
        out[p + "mlp_block.up_proj.weight"] = (f, d)
        out[p + "mlp_block.up_proj.bias"] = (f,)
        out[p + "mlp_block.down_proj.weight"] = (d, f)
        out[p + "mlp_block.down_proj.bias"] = (d,)
        t = p + "temporal_block."
        if kind == "recurrent":
            for name, shape in (("linear_x", (l, d)), ("linear_y", (l, d)), ("linear_out", (d, l))):
                out[t + name + ".weight"] = shape
                out[t + name + ".bias"] = (shape[0],)
            out[t + "conv_1d.weight"] = (l, 1, kw)
            out[t + "conv_1d.bias"] = (l,)
            out[t + "rg_lru.recurrent_param"] = (l,)
            out[t + "rg_lru.input_gate_weight"] = (h, bw, bw)
            out[t + "rg_lru.input_gate_bias"] = (h, bw)
            out[t + "rg_lru.recurrent_gate_weight"] = (h, bw, bw)
            out[t + "rg_lru.recurrent_gate_bias"] = (h, bw)
        else:
            out[t + "q_proj.weight"] = (h * e, d)
            out[t + "k_proj.weight"] = (k * e, d)
            out[t + "v_proj.weight"] = (k * e, d)
            if config.attention_bias:
                out[t + "q_proj.bias"] = (h * e,)
                out[t + "k_proj.bias"] = (k * e,)
                out[t + "v_proj.bias"] = (k * e,)
            out[t + "o_proj.weight"] = (d, h * e)
            out[t + "o_proj.bias"] = (d,)
    return out


def check_state_dict(config: GriffinConfig, state: Mapping[str, Tensor], source: str) -> None:
    """Raise one clear error for missing, unexpected or mis-shaped tensors."""
    want = expected_shapes(config)
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    wrong = [
        f"{n}: file {tuple(state[n].shape)} != config {want[n]}"
        for n in sorted(set(want) & set(state))
        if tuple(state[n].shape) != want[n]
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        problems.append(f"{len(wrong)} mis-shaped (e.g. {'; '.join(wrong[:2])})")
    if problems:
        raise RgMobileError(
            f"{source}: weights do not match the config ({config.num_layers} layers, width {config.width}): "
            + "; ".join(problems)
        )


# --- Hugging Face ---------------------------------------------------------------
HF_PREFIX = "model."
HF_IGNORED = ("lm_head.weight",)  # tied to the embedding; some exports store it anyway


def from_hf(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """HF names -> ours: drop ``model.``; a stored tied head must equal the embedding."""
    out: dict[str, Tensor] = {}
    for name, tensor in state.items():
        if name in HF_IGNORED:
            continue
        out[name[len(HF_PREFIX) :] if name.startswith(HF_PREFIX) else name] = tensor
    head = state.get("lm_head.weight")
    emb = out.get("embed_tokens.weight")
    if head is not None and emb is not None and not torch.equal(head, emb):
        raise RgMobileError(
            "checkpoint: lm_head.weight differs from the embedding; RecurrentGemma ties them "
            "(an untied head is not supported)"
        )
    return out


def to_hf(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {HF_PREFIX + name: tensor for name, tensor in state.items()}


# --- official recurrentgemma (torch) ---------------------------------------------
# (official name pattern, our name pattern); {i} is the layer index.
_RENAMES: tuple[tuple[str, str], ...] = (
    ("embedder.input_embedding", "embed_tokens.weight"),
    ("final_norm.scale", "final_norm.weight"),
    ("blocks.{i}.temporal_pre_norm.scale", "layers.{i}.temporal_pre_norm.weight"),
    ("blocks.{i}.channel_pre_norm.scale", "layers.{i}.channel_pre_norm.weight"),
    ("blocks.{i}.mlp_block.ffw_down.weight", "layers.{i}.mlp_block.down_proj.weight"),
    ("blocks.{i}.mlp_block.ffw_down.bias", "layers.{i}.mlp_block.down_proj.bias"),
    ("blocks.{i}.recurrent_block.linear_x.weight", "layers.{i}.temporal_block.linear_x.weight"),
    ("blocks.{i}.recurrent_block.linear_x.bias", "layers.{i}.temporal_block.linear_x.bias"),
    ("blocks.{i}.recurrent_block.linear_y.weight", "layers.{i}.temporal_block.linear_y.weight"),
    ("blocks.{i}.recurrent_block.linear_y.bias", "layers.{i}.temporal_block.linear_y.bias"),
    ("blocks.{i}.recurrent_block.linear_out.weight", "layers.{i}.temporal_block.linear_out.weight"),
    ("blocks.{i}.recurrent_block.linear_out.bias", "layers.{i}.temporal_block.linear_out.bias"),
    ("blocks.{i}.recurrent_block.conv_1d.b", "layers.{i}.temporal_block.conv_1d.bias"),
    ("blocks.{i}.recurrent_block.rg_lru.a_param", "layers.{i}.temporal_block.rg_lru.recurrent_param"),
    ("blocks.{i}.recurrent_block.rg_lru.input_gate.w", "layers.{i}.temporal_block.rg_lru.input_gate_weight"),
    ("blocks.{i}.recurrent_block.rg_lru.input_gate.b", "layers.{i}.temporal_block.rg_lru.input_gate_bias"),
    ("blocks.{i}.recurrent_block.rg_lru.a_gate.w", "layers.{i}.temporal_block.rg_lru.recurrent_gate_weight"),
    ("blocks.{i}.recurrent_block.rg_lru.a_gate.b", "layers.{i}.temporal_block.rg_lru.recurrent_gate_bias"),
    ("blocks.{i}.attention_block.proj_q.weight", "layers.{i}.temporal_block.q_proj.weight"),
    ("blocks.{i}.attention_block.proj_k.weight", "layers.{i}.temporal_block.k_proj.weight"),
    ("blocks.{i}.attention_block.proj_v.weight", "layers.{i}.temporal_block.v_proj.weight"),
    ("blocks.{i}.attention_block.proj_final.weight", "layers.{i}.temporal_block.o_proj.weight"),
    ("blocks.{i}.attention_block.proj_final.bias", "layers.{i}.temporal_block.o_proj.bias"),
)
# Tensors whose layout differs: conv [K, l] <-> [l, 1, K]; the MLP up-projection is one
# einsum weight w [2, d, f] and bias b [2, 1, 1, f] upstream, two Linears here.
_CONV_OFFICIAL = "blocks.{i}.recurrent_block.conv_1d.w"
_FFW_UP_W = "blocks.{i}.mlp_block.ffw_up.w"
_FFW_UP_B = "blocks.{i}.mlp_block.ffw_up.b"


def _pattern(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(\d+)") + "$")


_OFFICIAL_TO_OURS: tuple[tuple[re.Pattern[str], str], ...] = tuple((_pattern(a), b) for a, b in _RENAMES)
_OURS_TO_OFFICIAL: tuple[tuple[re.Pattern[str], str], ...] = tuple((_pattern(b), a) for a, b in _RENAMES)


def _rename(name: str, table: tuple[tuple[re.Pattern[str], str], ...]) -> str | None:
    for pattern, template in table:
        m = pattern.match(name)
        if m:
            return template.replace("{i}", m.group(1)) if m.groups() else template
    return None


def _layer(name: str) -> str:
    return name.split(".")[1]


def from_official(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official `recurrentgemma` torch names and layouts -> ours.

    Names the table does not know are kept as they are, so that
    :func:`check_state_dict` reports them as unexpected.
    """
    out: dict[str, Tensor] = {}

    def conv(name: str, w: Tensor) -> None:
        if w.ndim != 2:
            raise RgMobileError(f"checkpoint: {name} should be [conv_width, lru_width], got {tuple(w.shape)}")
        out[f"layers.{_layer(name)}.temporal_block.conv_1d.weight"] = w.t().unsqueeze(1).contiguous()

    def ffw_w(name: str, w: Tensor) -> None:
        if w.ndim != 3 or w.shape[0] != 2:
            raise RgMobileError(f"checkpoint: {name} should be [2, width, mlp_width], got {tuple(w.shape)}")
        i = _layer(name)
        out[f"layers.{i}.mlp_block.gate_proj.weight"] = w[0].t().contiguous()
        out[f"layers.{i}.mlp_block.up_proj.weight"] = w[1].t().contiguous()

    def ffw_b(name: str, b: Tensor) -> None:
        if b.ndim < 2 or b.shape[0] != 2:
            raise RgMobileError(f"checkpoint: {name} should be [2, 1, 1, mlp_width], got {tuple(b.shape)}")
        i = _layer(name)
        out[f"layers.{i}.mlp_block.gate_proj.bias"] = b[0].reshape(-1).contiguous()
        out[f"layers.{i}.mlp_block.up_proj.bias"] = b[1].reshape(-1).contiguous()

    special: list[tuple[re.Pattern[str], Callable[[str, Tensor], None]]] = [
        (_pattern(_CONV_OFFICIAL), conv),
        (_pattern(_FFW_UP_W), ffw_w),
        (_pattern(_FFW_UP_B), ffw_b),
    ]
    for name, tensor in state.items():
        for pattern, handler in special:
            if pattern.match(name):
                handler(name, tensor)
                break
        else:
            ours = _rename(name, _OFFICIAL_TO_OURS)
            out[ours if ours is not None else name] = tensor
    return out


def official_tensor(state: Mapping[str, Tensor], name: str) -> Tensor:
    """Our parameter ``name`` from an official state dict, that tensor only (the layouts of
    :func:`from_official`); the streamed export reads a memory-mapped file so."""
    i = _layer(name) if name.startswith("layers.") else ""
    if name.endswith("temporal_block.conv_1d.weight"):
        return state[_CONV_OFFICIAL.format(i=i)].t().unsqueeze(1)
    for k, proj in enumerate(("gate_proj", "up_proj")):
        if name.endswith(f"mlp_block.{proj}.weight"):
            return state[_FFW_UP_W.format(i=i)][k].t()
        if name.endswith(f"mlp_block.{proj}.bias"):
            return state[_FFW_UP_B.format(i=i)][k].reshape(-1)
    official = _rename(name, _OURS_TO_OFFICIAL)
    if official is None:
        raise RgMobileError(f"checkpoint: {name} has no official recurrentgemma name")
    return state[official]


def to_official(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Ours -> official `recurrentgemma` torch names and layouts."""
    out: dict[str, Tensor] = {}
    for name, tensor in state.items():
        if name.endswith("temporal_block.conv_1d.weight"):
            out[f"blocks.{_layer(name)}.recurrent_block.conv_1d.w"] = tensor[:, 0, :].t().contiguous()
        elif name.endswith("mlp_block.gate_proj.weight"):
            i = _layer(name)
            up = state[f"layers.{i}.mlp_block.up_proj.weight"]
            out[f"blocks.{i}.mlp_block.ffw_up.w"] = torch.stack([tensor.t(), up.t()]).contiguous()
        elif name.endswith("mlp_block.gate_proj.bias"):
            i = _layer(name)
            up = state[f"layers.{i}.mlp_block.up_proj.bias"]
            out[f"blocks.{i}.mlp_block.ffw_up.b"] = torch.stack([tensor, up]).reshape(2, 1, 1, -1).contiguous()
        elif ".mlp_block.up_proj." in name:
            continue  # stored with gate_proj above
        else:
            official = _rename(name, _OURS_TO_OFFICIAL)
            if official is None:
                raise RgMobileError(f"checkpoint: {name} has no official recurrentgemma name")
            out[official] = tensor
    return out
