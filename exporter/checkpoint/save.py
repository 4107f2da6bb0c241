"""Write a model as a Hugging Face folder: config.json, safetensors (optionally sharded), tokenizer.model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from exporter.checkpoint.hf_config import config_to_hf
from exporter.checkpoint.weight_map import to_hf
from exporter.config import GriffinConfig
from exporter.fsio import atomic_dir


def save_hf_folder(
    config: GriffinConfig,
    state: dict[str, torch.Tensor],
    out_dir: Path,
    tokenizer: Path | None = None,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write ``out_dir`` atomically. ``state`` uses our names (see weight_map).

    ``dtype`` casts floating tensors (e.g. bfloat16 to ship smaller files);
    ``max_shard_bytes`` splits the weights into ``model-0000k-of-0000n.safetensors``
    with a ``model.safetensors.index.json``, as HF does for large models.
    """
    tensors = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
        for k, v in to_hf(state).items()
    }
    with atomic_dir(Path(out_dir)) as tmp:
        hf = config_to_hf(config)
        if dtype is not None:
            hf["torch_dtype"] = str(dtype).removeprefix("torch.")
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        if max_shard_bytes is None:
            save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        else:
            shards: list[dict[str, torch.Tensor]] = [{}]
            size = 0
            for name, t in tensors.items():
                nbytes = t.numel() * t.element_size()
                if shards[-1] and size + nbytes > max_shard_bytes:
                    shards.append({})
                    size = 0
                shards[-1][name] = t
                size += nbytes
            weight_map = {}
            for k, shard in enumerate(shards, 1):
                fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(tmp / fname), metadata={"format": "pt"})
                weight_map.update({name: fname for name in shard})
            total = sum(t.numel() * t.element_size() for t in tensors.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        if tokenizer is not None:
            shutil.copyfile(tokenizer, tmp / "tokenizer.model")
    return Path(out_dir)
