"""The identity of a model: what a saved state (``*.rgstate``) must match (docs/bundle.md).

``compute_identity(model, precision)`` gives the manifest's ``identity`` object:

- ``config_sha256``: sha256 of the config as canonical JSON
  (``json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"))``).
- ``weights_sha256``: sha256 over the model's ``state_dict()`` in sorted name order; for each
  tensor, its name as UTF-8 bytes, then its values as contiguous float32 little-endian bytes
  (after ``.float()``). The same for a checkpoint and every artifact exported from it, since it
  is computed from the float weights the exporter starts from, not from the artifact's files.
- ``precision``: the artifact's precision (``"fp32"`` for a checkpoint run by the PyTorch reference).

Apps compare these strings; they never recompute them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from exporter.config import GriffinConfig
    from exporter.model.griffin import Griffin

IDENTITY_KEYS = ("config_sha256", "weights_sha256", "precision")


def config_sha256(config: GriffinConfig) -> str:
    """sha256 of the canonical JSON of ``config.to_dict()``."""
    text = json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def weights_sha256(model: torch.nn.Module, tensor: Callable[[str], torch.Tensor] | None = None) -> str:
    """sha256 over ``state_dict()`` in sorted name order: name bytes, then float32 little-endian values.

    ``tensor(name)``, if given, supplies each value instead of the model (a skeleton on the meta
    device whose weights are read or made one at a time: the streamed export).
    """
    h = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        value = state[name] if tensor is None else tensor(name)
        array: Any = value.detach().float().contiguous().cpu().numpy().astype("<f4", copy=False)
        h.update(name.encode("utf-8"))
        h.update(memoryview(array).cast("B"))  # no copy of the bytes
        del array, value
    return h.hexdigest()


def compute_identity(
    model: Griffin, precision: str, tensor: Callable[[str], torch.Tensor] | None = None
) -> dict[str, str]:
    """The manifest's ``identity`` object for ``model`` at ``precision`` (``tensor``: see weights_sha256)."""
    return {
        "config_sha256": config_sha256(model.config),
        "weights_sha256": weights_sha256(model, tensor),
        "precision": precision,
    }
