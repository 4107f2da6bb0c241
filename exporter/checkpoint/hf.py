"""Read a Hugging Face RecurrentGemma folder: config.json and safetensors weights.

Only safetensors are read (never ``pytorch_model.bin``): safetensors cannot run
code, pickles can. The layout follows transformers' own loader
(``modeling_utils.load_state_dict`` / ``get_checkpoint_shard_files``): a single
``model.safetensors`` wins; otherwise ``model.safetensors.index.json`` names the
shards, and every shard it names must exist and hold the tensors it lists.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Container, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from exporter.checkpoint.hf_config import config_from_hf
from exporter.checkpoint.weight_map import from_hf
from exporter.config import GriffinConfig
from exporter.errors import RgMobileError
from exporter.fsio import first_line, read_json

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
SINGLE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"

Tensor = torch.Tensor


def read_hf_config(path: Path) -> GriffinConfig:
    """A :class:`GriffinConfig` from an HF ``config.json`` file."""
    return config_from_hf(read_json(path), source=str(path))


@contextlib.contextmanager
def open_safetensors(path: Path) -> Iterator[Any]:
    """``safe_open(path)``; a missing, corrupt or unreadable file is one clear error."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            yield f
    except FileNotFoundError:
        raise RgMobileError(f"{path}: weights file not found") from None
    except SafetensorError as exc:
        raise RgMobileError(
            f"{path}: corrupt or truncated safetensors file ({first_line(exc)}); re-download or re-export it"
        ) from None
    except OSError as exc:
        raise RgMobileError(f"{path}: cannot read ({first_line(exc)})") from None


def read_raw_safetensors(path: Path) -> dict[str, Tensor]:
    """Every tensor of one safetensors file as stored (any dtype); unreadable files are one clear error."""
    with open_safetensors(path) as f:
        return {name: f.get_tensor(name) for name in f.keys()}


def read_safetensors(path: Path, dtype: torch.dtype) -> dict[str, Tensor]:
    """Every tensor of one safetensors file, cast to ``dtype`` (floating tensors only)."""
    out = read_raw_safetensors(path)
    for name, t in out.items():
        if not t.is_floating_point():
            raise RgMobileError(f"{path}: tensor {name} has dtype {t.dtype}; model weights must be floating point")
        out[name] = t.to(dtype)
    return out


def _shard_index(folder: Path) -> tuple[dict[str, str], list[str]]:
    """(tensor name -> shard file name, the shard files) of a sharded folder, every shard present."""
    index_path = folder / INDEX_NAME
    weight_map = read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise RgMobileError(f"{index_path}: no 'weight_map' object naming tensors and their shard files")
    for fname in weight_map.values():
        if not isinstance(fname, str) or Path(fname).name != fname:
            raise RgMobileError(f"{index_path}: shard name {fname!r} must be a plain file name in the folder")
    shards = sorted(set(weight_map.values()))
    missing = [f for f in shards if not (folder / f).is_file()]
    if missing:
        raise RgMobileError(
            f"{index_path}: lists {len(missing)} shard(s) missing from the folder (e.g. {', '.join(missing[:3])})"
        )
    return weight_map, shards


def _check_shard(folder: Path, fname: str, names: list[str], weight_map: dict[str, str], seen: Container[str]) -> None:
    """The tensors ``names`` found in shard ``fname`` against the index (``seen``: names of earlier shards)."""
    listed = [n for n, f in weight_map.items() if f == fname]
    found = set(names)
    absent = [n for n in listed if n not in found]
    if absent:
        raise RgMobileError(
            f"{folder / fname}: {len(absent)} tensor(s) that {INDEX_NAME} places in this shard are absent "
            f"from it (e.g. {', '.join(absent[:3])})"
        )
    dup = [n for n in names if n in seen]
    if dup:
        raise RgMobileError(f"{folder / fname}: tensor(s) also stored in another shard (e.g. {dup[0]})")
    extra = [n for n in names if weight_map.get(n) != fname]
    if extra:
        log.warning("%s holds %d tensor(s) its index does not list (e.g. %s)", fname, len(extra), extra[0])


def _read_sharded(folder: Path, dtype: torch.dtype) -> dict[str, Tensor]:
    weight_map, shards = _shard_index(folder)
    state: dict[str, Tensor] = {}
    for fname in shards:
        tensors = read_safetensors(folder / fname, dtype)
        _check_shard(folder, fname, list(tensors), weight_map, state)
        state.update(tensors)
    log.info("read %d tensors from %d shards in %s", len(state), len(shards), folder)
    return state


def read_hf_weights(folder: Path, dtype: torch.dtype) -> dict[str, Tensor]:
    """All tensors of an HF folder, HF names, cast to ``dtype``."""
    if _layout(folder) == "single":
        return read_safetensors(folder / SINGLE_NAME, dtype)
    return _read_sharded(folder, dtype)


def _layout(folder: Path) -> str:
    """ "single" (``model.safetensors``, which wins, as in transformers) or "sharded"; else a clear error."""
    if (folder / SINGLE_NAME).is_file():
        if (folder / INDEX_NAME).is_file():
            log.warning("%s has both %s and %s; reading %s (as transformers does)", folder, SINGLE_NAME,
                        INDEX_NAME, SINGLE_NAME)  # fmt: skip
        return "single"
    if (folder / INDEX_NAME).is_file():
        return "sharded"
    pickled = [p.name for p in folder.glob("pytorch_model*.bin")]
    hint = f"; found {pickled[0]}, which is a pickle and is not read: convert it to safetensors" if pickled else ""
    raise RgMobileError(f"{folder}: missing weights file: no {SINGLE_NAME} or {INDEX_NAME}{hint}")


def hf_tensor_files(folder: Path) -> dict[str, Path]:
    """Every tensor of an HF folder (HF names) -> the safetensors file that holds it, from the files'
    headers only (the streamed export then reads one tensor at a time); the checks of the full read."""
    if _layout(folder) == "single":
        return dict.fromkeys(_tensor_names(folder / SINGLE_NAME), folder / SINGLE_NAME)
    weight_map, shards = _shard_index(folder)
    out: dict[str, Path] = {}
    for fname in shards:
        names = _tensor_names(folder / fname)
        _check_shard(folder, fname, names, weight_map, out)
        out.update(dict.fromkeys(names, folder / fname))
    return out


def _tensor_names(path: Path) -> list[str]:
    with open_safetensors(path) as f:
        return list(f.keys())


def load_hf_folder(folder: Path, dtype: torch.dtype = torch.float32) -> tuple[GriffinConfig, dict[str, Tensor]]:
    """(config, state dict with our names) from an HF folder; not yet checked against each other."""
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise RgMobileError(f"{folder}: no {CONFIG_NAME}; a Hugging Face checkpoint folder needs one")
    config = read_hf_config(config_path)
    config.check_memory(dtype_bytes=torch.empty((), dtype=dtype).element_size(), what=str(config_path))
    state = from_hf(read_hf_weights(folder, dtype))
    return config, state
