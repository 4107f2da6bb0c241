"""A checkpoint opened without loading its weights: the streamed export reads one tensor at a time.

``open_streamed(path)`` reads what :func:`exporter.checkpoint.loader.load_checkpoint` reads
(config, tokenizer, every tensor's name and shape) and runs the same checks (one clear error
for a missing, unexpected or mis-shaped tensor, a tokenizer of another vocab, an untied
head), but leaves the weights in the files: a Hugging Face folder's safetensors are read
tensor by tensor through their headers, an official ``.pt`` is memory-mapped. ``read(name)``
then gives one of our parameters in float32, converted as the full loader converts it
(exporter/checkpoint/weight_map.py). A 9B checkpoint (17 GB in bfloat16, 34 GB in float32)
can so be exported on a machine that could not hold it.

A quantized checkpoint (``rgmobile quantize``) is not opened here: its integers are few and
are loaded as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from exporter.checkpoint.hf import CONFIG_NAME, hf_tensor_files, read_hf_config
from exporter.checkpoint.loader import CheckpointKind, check_tokenizer, checkpoint_kind
from exporter.checkpoint.weight_map import HF_IGNORED, HF_PREFIX, check_state_dict, from_official, official_tensor
from exporter.config import GriffinConfig
from exporter.errors import RgMobileError

log = logging.getLogger(__name__)

_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


@dataclass(frozen=True)
class StreamedCheckpoint:
    """A checked checkpoint whose weights are still in its files.

    Fields:
      config: the model's config.
      tokenizer_path: its SentencePiece model (checked against the vocab).
      source: the checkpoint path.
      kind: "hf" or "official".
      read: our parameter name -> its values in float32, read from the file now.
    """

    config: GriffinConfig
    tokenizer_path: Path
    source: Path
    kind: CheckpointKind
    read: Callable[[str], torch.Tensor]


def open_streamed(path: Path, tokenizer: Path | None = None) -> StreamedCheckpoint:
    """Open an HF folder or an official ``.pt`` for the streamed export (checks as ``load_checkpoint``)."""
    path = Path(path)
    kind, default_tok = checkpoint_kind(path)
    if kind == "hf":
        from exporter.checkpoint.quantized import is_quantized_folder

        if is_quantized_folder(path):
            raise RgMobileError(
                f"{path}: a quantized checkpoint is exported from memory (its integers are small); "
                "drop --stream-weights"
            )
        config, read = _open_hf(path)
    else:
        config, read = _open_official(path)
    tok = Path(tokenizer) if tokenizer is not None else default_tok
    check_tokenizer(tok, config)
    log.info("opened %s checkpoint %s for streaming: %d layers, width %d", kind, path, config.num_layers, config.width)
    return StreamedCheckpoint(config=config, tokenizer_path=tok, source=path, kind=kind, read=read)


def _open_hf(folder: Path) -> tuple[GriffinConfig, Callable[[str], torch.Tensor]]:
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise RgMobileError(f"{folder}: no {CONFIG_NAME}; a Hugging Face checkpoint folder needs one")
    config = read_hf_config(config_path)
    files = hf_tensor_files(folder)
    handles: dict[Path, object] = {}

    def handle(file: Path):  # noqa: ANN202 - safetensors' handle type is private
        if file not in handles:
            handles[file] = safe_open(str(file), framework="pt", device="cpu")
        return handles[file]

    ours: dict[str, str] = {}  # our name -> HF name
    shapes: dict[str, torch.Tensor] = {}
    for name, file in files.items():
        meta = handle(file).get_slice(name)
        if meta.get_dtype() not in _FLOAT_DTYPES:
            raise RgMobileError(
                f"{file}: tensor {name} has dtype {meta.get_dtype()}; model weights must be floating point"
            )
        if name in HF_IGNORED:
            continue
        mine = name.removeprefix(HF_PREFIX)
        ours[mine] = name
        shapes[mine] = torch.empty(tuple(meta.get_shape()), device="meta")
    check_state_dict(config, shapes, str(folder))

    def read(name: str) -> torch.Tensor:
        hf = ours[name]
        return handle(files[hf]).get_tensor(hf).float()

    head = next((h for h in HF_IGNORED if h in files), None)
    if head is not None and not torch.equal(handle(files[head]).get_tensor(head), read("embed_tokens.weight")):
        raise RgMobileError(
            "checkpoint: lm_head.weight differs from the embedding; RecurrentGemma ties them "
            "(an untied head is not supported)"
        )
    return config, read


def _open_official(path: Path) -> tuple[GriffinConfig, Callable[[str], torch.Tensor]]:
    from exporter.checkpoint.official import official_config, read_official_state

    raw = read_official_state(path, dtype=None, mmap=True)  # memory-mapped, as stored
    config = official_config(raw, path)
    shapes = from_official({k: torch.empty(v.shape, device="meta") for k, v in raw.items()})
    check_state_dict(config, shapes, str(path))

    def read(name: str) -> torch.Tensor:
        return official_tensor(raw, name).float().contiguous()

    return config, read
