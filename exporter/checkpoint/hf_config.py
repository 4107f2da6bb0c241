"""Hugging Face ``config.json`` <-> :class:`GriffinConfig`.

HF quirks handled here (and only here): ``intermediate_size`` is twice the MLP
width; ``num_key_value_heads`` defaults to ``num_attention_heads`` (the real
RecurrentGemma configs set it to 1); ``block_types`` is a pattern cycled over
``num_hidden_layers``; RoPE covers ``partial_rotary_factor`` (0.5) of a head.
"""

from __future__ import annotations

from typing import Any

from exporter.config import BLOCK_TYPES, BlockType, GriffinConfig
from exporter.errors import RgMobileError

_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def _rope_theta(hf: dict[str, Any]) -> float:
    params = hf.get("rope_parameters") or {}
    return float(hf.get("rope_theta", params.get("rope_theta", 10000.0)))


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> GriffinConfig:
    """Read an HF RecurrentGemma config dict; anything unsupported is a clear error."""
    if hf.get("model_type", "recurrent_gemma") != "recurrent_gemma":
        raise RgMobileError(f"{source}: model_type is {hf.get('model_type')!r}, expected 'recurrent_gemma'")
    missing = [k for k in _REQUIRED if k not in hf]
    if missing:
        raise RgMobileError(f"{source}: missing field(s) {missing}")
    if hf["intermediate_size"] % 2:
        raise RgMobileError(f"{source}: intermediate_size {hf['intermediate_size']} must be even (HF halves it)")
    act = hf.get("hidden_activation", "gelu_pytorch_tanh")
    if act != "gelu_pytorch_tanh":
        raise RgMobileError(f"{source}: hidden_activation {act!r} is not supported (only gelu_pytorch_tanh)")
    if hf.get("tie_word_embeddings", True) is False:
        raise RgMobileError(f"{source}: tie_word_embeddings=false is not supported; RecurrentGemma ties the head")
    pattern = list(hf.get("block_types", ["recurrent", "recurrent", "attention"]))
    bad = [b for b in pattern if b not in BLOCK_TYPES]
    if bad or not pattern:
        raise RgMobileError(f"{source}: block_types {pattern} must be a non-empty list of {list(BLOCK_TYPES)}")
    n = int(hf["num_hidden_layers"])
    block_types: tuple[BlockType, ...] = tuple(pattern[i % len(pattern)] for i in range(n))
    heads = int(hf["num_attention_heads"])

    def ids(key: str, default: int) -> int:
        v = hf.get(key, default)
        if isinstance(v, list):
            v = v[0]
        return int(v) if v is not None else default

    return GriffinConfig(
        vocab_size=int(hf["vocab_size"]),
        width=int(hf["hidden_size"]),
        mlp_width=int(hf["intermediate_size"]) // 2,
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        lru_width=int(hf.get("lru_width") or hf["hidden_size"]),
        block_types=block_types,
        window=int(hf.get("attention_window_size", 2048)),
        conv_width=int(hf.get("conv1d_width", 4)),
        logits_soft_cap=float(hf.get("logits_soft_cap", 30.0) or 0.0),
        embed_scale_by_sqrt_width=bool(hf.get("embeddings_scale_by_sqrt_dim", True)),
        rope_theta=_rope_theta(hf),
        partial_rotary_factor=float(
            hf.get("partial_rotary_factor", (hf.get("rope_parameters") or {}).get("partial_rotary_factor", 0.5))
        ),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        attention_bias=bool(hf.get("attention_bias", False)),
        bos_id=ids("bos_token_id", 2),
        eos_id=ids("eos_token_id", 1),
        pad_id=ids("pad_token_id", 0),
        name=str(hf.get("_name_or_path") or hf.get("name") or "checkpoint"),
    )


def config_to_hf(config: GriffinConfig) -> dict[str, Any]:
    """An HF ``config.json`` that transformers' RecurrentGemmaConfig reads back to ``config``."""
    pattern = list(config.block_types)
    for period in range(1, len(pattern) + 1):
        cand = pattern[:period]
        if all(pattern[i] == cand[i % period] for i in range(len(pattern))):
            pattern = cand
            break
    return {
        "architectures": ["RecurrentGemmaForCausalLM"],
        "model_type": "recurrent_gemma",
        "name": config.name,
        "vocab_size": config.vocab_size,
        "hidden_size": config.width,
        "intermediate_size": 2 * config.mlp_width,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "lru_width": config.lru_width,
        "block_types": pattern,
        "attention_window_size": config.window,
        "conv1d_width": config.conv_width,
        "logits_soft_cap": config.logits_soft_cap,
        "embeddings_scale_by_sqrt_dim": config.embed_scale_by_sqrt_width,
        "rope_theta": config.rope_theta,
        "partial_rotary_factor": config.partial_rotary_factor,
        "rms_norm_eps": config.rms_norm_eps,
        "attention_bias": config.attention_bias,
        "hidden_activation": "gelu_pytorch_tanh",
        "bos_token_id": config.bos_id,
        "eos_token_id": config.eos_id,
        "pad_token_id": config.pad_id,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }
