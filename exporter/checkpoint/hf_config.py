"""Hugging Face ``config.json`` <-> :class:`GriffinConfig`.

HF quirks handled here (and only here): ``intermediate_size`` is twice the MLP
width; ``num_key_value_heads`` defaults to ``num_attention_heads`` (the real
RecurrentGemma configs set it to 1); ``block_types`` is a pattern cycled over
``num_hidden_layers``; RoPE covers ``partial_rotary_factor`` (0.5) of a head.
"""

from __future__ import annotations

import math
from typing import Any

from exporter.config import BLOCK_TYPES, MAX_LAYERS, BlockType, GriffinConfig
from exporter.errors import RgMobileError

_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


class _Fields:
    """Typed reads of one HF config dict: a wrong JSON type or range is an error naming the key."""

    def __init__(self, hf: dict[str, Any], source: str) -> None:
        self.hf, self.source = hf, source

    def fail(self, key: str, want: str, value: Any) -> RgMobileError:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        return RgMobileError(f"{self.source}: {key} must be {want}, got {shown}")

    def integer(self, key: str, default: int | None = None, lo: int = 1, hi: int = 1 << 21) -> int:
        v = self.hf.get(key, default)
        if v is None and default is not None:
            v = default
        if isinstance(v, float) and v.is_integer():
            v = int(v)  # 2048.0 is an integer
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise self.fail(key, f"an integer in {lo}..{hi:,}", v)
        return v

    def number(self, key: str, value: Any) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise self.fail(key, "a finite number", value)
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        v = self.hf.get(key, default)
        if not isinstance(v, bool):
            raise self.fail(key, "true or false", v)
        return v

    def token_id(self, key: str, default: int) -> int:
        v = self.hf.get(key, default)
        if isinstance(v, list) and v:
            v = v[0]  # transformers allows a list of EOS ids; the first is the one we stop on
        if v is None:
            return default
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise self.fail(key, "a non-negative integer token id (or a list of them)", v)
        return v


def _rope(f: _Fields, key: str, default: float) -> float:
    params = f.hf.get("rope_parameters") or {}
    if not isinstance(params, dict):
        raise f.fail("rope_parameters", "an object", params)
    value = f.hf.get(key, params.get(key, default))
    return f.number(key, value)


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> GriffinConfig:
    """Read an HF RecurrentGemma config dict; anything unsupported or mistyped is a clear error."""
    if hf.get("model_type", "recurrent_gemma") != "recurrent_gemma":
        raise RgMobileError(f"{source}: model_type is {hf.get('model_type')!r}, expected 'recurrent_gemma'")
    missing = [k for k in _REQUIRED if k not in hf]
    if missing:
        raise RgMobileError(f"{source}: missing field(s) {missing}")
    f = _Fields(hf, source)
    intermediate = f.integer("intermediate_size", hi=1 << 19)
    if intermediate % 2:
        raise RgMobileError(f"{source}: intermediate_size {intermediate} must be even (HF halves it)")
    act = hf.get("hidden_activation", "gelu_pytorch_tanh")
    if act != "gelu_pytorch_tanh":
        raise RgMobileError(f"{source}: hidden_activation {act!r} is not supported (only gelu_pytorch_tanh)")
    if hf.get("tie_word_embeddings", True) is False:
        raise RgMobileError(f"{source}: tie_word_embeddings=false is not supported; RecurrentGemma ties the head")
    pattern = hf.get("block_types", ["recurrent", "recurrent", "attention"])
    if not isinstance(pattern, list) or not pattern or any(b not in BLOCK_TYPES for b in pattern):
        raise f.fail("block_types", f"a non-empty list of {list(BLOCK_TYPES)}", pattern)
    n = f.integer("num_hidden_layers", hi=MAX_LAYERS)  # checked before the layer list is built
    block_types: tuple[BlockType, ...] = tuple(pattern[i % len(pattern)] for i in range(n))
    heads = f.integer("num_attention_heads", hi=1024)
    width = f.integer("hidden_size", hi=1 << 16)
    name = hf.get("_name_or_path") or hf.get("name") or "checkpoint"
    soft_cap = hf.get("logits_soft_cap", 30.0)
    return GriffinConfig(
        vocab_size=f.integer("vocab_size"),
        width=width,
        mlp_width=intermediate // 2,
        num_heads=heads,
        num_kv_heads=f.integer("num_key_value_heads", heads, hi=1024),
        lru_width=f.integer("lru_width", width, hi=1 << 16),
        block_types=block_types,
        window=f.integer("attention_window_size", 2048, hi=1 << 20),
        conv_width=f.integer("conv1d_width", 4, hi=64),
        logits_soft_cap=0.0 if soft_cap is None else f.number("logits_soft_cap", soft_cap),
        embed_scale_by_sqrt_width=f.flag("embeddings_scale_by_sqrt_dim", True),
        rope_theta=_rope(f, "rope_theta", 10000.0),
        partial_rotary_factor=_rope(f, "partial_rotary_factor", 0.5),
        rms_norm_eps=f.number("rms_norm_eps", hf.get("rms_norm_eps", 1e-6)),
        attention_bias=f.flag("attention_bias", False),
        bos_id=f.token_id("bos_token_id", 2),
        eos_id=f.token_id("eos_token_id", 1),
        pad_id=f.token_id("pad_token_id", 0),
        name=name if isinstance(name, str) else "checkpoint",
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
