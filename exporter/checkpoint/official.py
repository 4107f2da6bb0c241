"""Read the official Google DeepMind ``recurrentgemma`` PyTorch state dict (``.pt``).

The file is a bare state dict without a config, so the shape fields are read off
the tensors (upstream names, see ``recurrentgemma/torch/modules.py``); the rest
are RecurrentGemma's published values, which a Hugging Face ``config.json``
placed next to the ``.pt`` overrides. The file is opened with
``torch.load(weights_only=True)``: a checkpoint is data, and a pickle that wants
to import code is refused rather than run.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from exporter.checkpoint.hf import CONFIG_NAME, read_hf_config
from exporter.checkpoint.weight_map import from_official
from exporter.config import BlockType, GriffinConfig
from exporter.errors import RgMobileError
from exporter.fsio import first_line

log = logging.getLogger(__name__)

Tensor = torch.Tensor

# Not inferable from the tensors: RecurrentGemma-2B/9B values (HF config defaults agree).
DEFAULT_WINDOW = 2048

_BLOCK = re.compile(r"^blocks\.(\d+)\.(recurrent_block|attention_block)\.")
_ANY_BLOCK = re.compile(r"^blocks\.(\d+)\.")

# Our field -> the HF config.json key(s) a user would look for in the sidecar.
_HF_KEYS = {
    "vocab_size": "vocab_size",
    "width": "hidden_size",
    "mlp_width": "intermediate_size / 2",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "lru_width": "lru_width",
    "conv_width": "conv1d_width",
    "block_types": "block_types",
}


def read_official_state(path: Path, dtype: torch.dtype | None = torch.float32, mmap: bool = False) -> dict[str, Tensor]:
    """The ``.pt`` state dict (official names), floating tensors cast to ``dtype`` (None: as stored).

    ``mmap``: the tensors stay in the file until read (the streamed export reads one at a time).
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):
            raise RgMobileError(
                f"{path}: the file needs Python code to load (it pickles objects, not just tensors); "
                "refusing to unpickle it: save a plain state dict of tensors instead"
            ) from None
        raise RgMobileError(f"{path}: corrupt or not a PyTorch checkpoint (cannot unpickle its data)") from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        # Truncated zips surface as RuntimeError (miniz), OSError (EINVAL on a short read)
        # or EOFError (empty file), depending on where the file was cut.
        raise RgMobileError(f"{path}: corrupt or truncated PyTorch checkpoint ({first_line(exc)})") from None
    if not isinstance(obj, Mapping):
        raise RgMobileError(f"{path}: not a dict of tensors (got {type(obj).__name__}); expected a state dict")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad or not obj:
        example = f" (e.g. {bad[0]!r}: {type(obj[bad[0]]).__name__})" if bad else " (it is empty)"
        raise RgMobileError(f"{path}: not a dict of tensors{example}; expected a state dict")
    out: dict[str, Tensor] = {}
    for name, t in obj.items():
        if not t.is_floating_point():
            raise RgMobileError(f"{path}: tensor {name} has dtype {t.dtype}; model weights must be floating point")
        out[name] = t if dtype is None else t.to(dtype)
    return out


def _shape(state: Mapping[str, Tensor], name: str, ndim: int, source: str) -> tuple[int, ...]:
    if name not in state:
        raise RgMobileError(f"{source}: not an official recurrentgemma state dict: missing tensor {name}")
    shape = tuple(state[name].shape)
    if len(shape) != ndim:
        raise RgMobileError(f"{source}: tensor {name} has shape {shape}, expected {ndim} dimensions")
    return shape


def infer_shape_fields(state: Mapping[str, Tensor], source: str) -> dict[str, Any]:
    """The GriffinConfig fields that the official tensors determine."""
    vocab, width = _shape(state, "embedder.input_embedding", 2, source)
    mlp_width = _shape(state, "blocks.0.mlp_block.ffw_up.w", 3, source)[2]

    kinds: dict[int, set[str]] = {}
    for name in state:
        m = _ANY_BLOCK.match(name)
        if m:
            kinds.setdefault(int(m.group(1)), set())
            k = _BLOCK.match(name)
            if k:
                kinds[int(k.group(1))].add(k.group(2))
    n = max(kinds) + 1 if kinds else 0
    block_types: list[BlockType] = []
    for i in range(n):
        found = kinds.get(i, set())
        if len(found) != 1:
            what = "both recurrent_block and attention_block" if found else "no recurrent_block or attention_block"
            raise RgMobileError(f"{source}: layer {i} has {what} tensors; cannot tell its kind")
        block_types.append("recurrent" if "recurrent_block" in found else "attention")
    if not block_types:
        raise RgMobileError(f"{source}: not an official recurrentgemma state dict: no blocks.N.* tensors")

    fields: dict[str, Any] = {"vocab_size": vocab, "width": width, "mlp_width": mlp_width,
                              "block_types": tuple(block_types)}  # fmt: skip
    if "recurrent" in block_types:
        r = f"blocks.{block_types.index('recurrent')}.recurrent_block."
        fields["lru_width"] = _shape(state, r + "linear_x.weight", 2, source)[0]
        fields["conv_width"] = _shape(state, r + "conv_1d.w", 2, source)[0]
        fields["num_heads"] = _shape(state, r + "rg_lru.a_gate.w", 3, source)[0]
    if "attention" in block_types:
        a = f"blocks.{block_types.index('attention')}.attention_block."
        q_rows = _shape(state, a + "proj_q.weight", 2, source)[0]
        k_rows = _shape(state, a + "proj_k.weight", 2, source)[0]
        if "num_heads" in fields:
            head_dim = width // fields["num_heads"]
            if head_dim:  # else GriffinConfig reports width < num_heads
                fields["num_kv_heads"] = max(k_rows // head_dim, 1)
        elif k_rows and q_rows % k_rows == 0:
            # Upstream attention is multi-query: k has one head of head_dim rows.
            fields["num_heads"], fields["num_kv_heads"] = q_rows // k_rows, 1
        else:
            raise RgMobileError(f"{source}: {a}proj_q rows {q_rows} are not a multiple of proj_k rows {k_rows}")
    return fields


def _check_sidecar(sidecar: GriffinConfig, fields: Mapping[str, Any], sidecar_path: Path, source: Path) -> None:
    """A sidecar config that contradicts the tensors is an error naming the field."""
    for key, value in fields.items():
        said = getattr(sidecar, key)
        if said == value:
            continue
        if key == "block_types" and len(said) != len(value):
            raise RgMobileError(
                f"{sidecar_path}: num_hidden_layers is {len(said)} but {source.name} has {len(value)} layers"
            )
        raise RgMobileError(
            f"{sidecar_path}: {key} ({_HF_KEYS[key]}) is {list(said) if key == 'block_types' else said} "
            f"but the tensors in {source.name} give {list(value) if key == 'block_types' else value}"
        )


def load_official(path: Path, dtype: torch.dtype = torch.float32) -> tuple[GriffinConfig, dict[str, Tensor]]:
    """(config, state dict with our names) from an official ``.pt``; not yet strictly checked."""
    raw = read_official_state(path, dtype)
    return official_config(raw, path), from_official(raw)


def official_config(raw: Mapping[str, Tensor], path: Path) -> GriffinConfig:
    """The config of an official state dict: a ``config.json`` beside it (checked against the
    tensors), or inferred from the tensors with RecurrentGemma's defaults for the rest."""
    fields = infer_shape_fields(raw, str(path))
    sidecar_path = path.parent / CONFIG_NAME
    if sidecar_path.is_file():
        config = read_hf_config(sidecar_path)
        _check_sidecar(config, fields, sidecar_path, path)
        log.info("%s: config from sidecar %s", path, sidecar_path)
    else:
        fields = {"lru_width": fields["width"], "num_kv_heads": 1, **fields}
        config = GriffinConfig(**fields, window=DEFAULT_WINDOW, name=path.stem)
        log.info("%s: config inferred from tensors; window=%d and other defaults are RecurrentGemma's "
                 "(put a config.json next to the file to override)", path, DEFAULT_WINDOW)  # fmt: skip
    return config
