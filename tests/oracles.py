"""The two independent implementations our model is checked against.

* Google DeepMind's ``recurrentgemma`` (torch): its package ``__init__`` imports
  the JAX side (flax), which we do not install, so its torch modules are loaded
  with the package's ``__init__`` bypassed.
* Hugging Face ``transformers``' ``RecurrentGemmaForCausalLM``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import torch

from exporter.checkpoint.weight_map import to_hf, to_official
from exporter.config import GriffinConfig


def official_module():
    """``recurrentgemma.torch`` without executing ``recurrentgemma/__init__.py``."""
    if "recurrentgemma.torch" in sys.modules:
        return sys.modules["recurrentgemma.torch"]
    spec = importlib.util.find_spec("recurrentgemma")
    assert spec is not None and spec.submodule_search_locations, "recurrentgemma is not installed"
    pkg = types.ModuleType("recurrentgemma")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["recurrentgemma"] = pkg
    return importlib.import_module("recurrentgemma.torch")


def official_model(config: GriffinConfig, ours_state: dict[str, torch.Tensor]):
    """An official Griffin holding the same weights as our model."""
    rg = official_module()
    assert config.num_kv_heads == 1, "the official model is multi-query only"
    assert config.conv_width == 4 and config.partial_rotary_factor == 0.5 and config.rope_theta == 10000.0
    cfg = rg.GriffinConfig(
        vocab_size=config.vocab_size,
        width=config.width,
        mlp_expanded_width=config.mlp_width,
        num_heads=config.num_heads,
        block_types=tuple(
            rg.TemporalBlockType.RECURRENT if b == "recurrent" else rg.TemporalBlockType.ATTENTION
            for b in config.block_types
        ),
        embeddings_scale_by_sqrt_dim=config.embed_scale_by_sqrt_width,
        attention_window_size=config.window,
        logits_soft_cap=config.logits_soft_cap,
        lru_width=config.lru_width,
    )
    model = rg.Griffin(cfg, gradient_checkpointing=False)
    model.load_state_dict(to_official(ours_state), strict=True)
    return model.eval()


def hf_config_dict(config: GriffinConfig) -> dict:
    return dict(
        vocab_size=config.vocab_size,
        hidden_size=config.width,
        intermediate_size=2 * config.mlp_width,  # HF halves it
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        lru_width=config.lru_width,
        attention_window_size=config.window,
        conv1d_width=config.conv_width,
        logits_soft_cap=config.logits_soft_cap,
        rms_norm_eps=config.rms_norm_eps,
        block_types=list(config.block_types[:3]),
        partial_rotary_factor=config.partial_rotary_factor,
        rope_theta=config.rope_theta,
        attention_bias=config.attention_bias,
        bos_token_id=config.bos_id,
        eos_token_id=config.eos_id,
        pad_token_id=config.pad_id,
        tie_word_embeddings=True,
    )


def hf_model(config: GriffinConfig, ours_state: dict[str, torch.Tensor]):
    from transformers import RecurrentGemmaConfig, RecurrentGemmaForCausalLM

    cfg = RecurrentGemmaConfig(**hf_config_dict(config))
    model = RecurrentGemmaForCausalLM(cfg)
    sd = to_hf(ours_state)
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert all(m == "lm_head.weight" for m in missing), missing
    model.tie_weights()
    return model.eval()
