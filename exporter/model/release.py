"""Free a model's weights once an exporter no longer needs them (peak memory of big exports).

:func:`release_weights` swaps every parameter and buffer for an empty tensor on the
``meta`` device of the same shape, dtype and ``requires_grad``: the module tree,
``model.config``, parameter/buffer names, shapes and dtypes stay readable (enough to
name, classify and size weights), but the model holds no data any more and is
unusable for computation afterwards (a forward pass fails on meta tensors).
Tied weights stay tied: a tensor shared by several modules gets one shared replacement.

The bytes are returned to the allocator only if nothing else references the old
tensors (an ``ExportedProgram``, a ``state_dict()``, a checkpoint object): drop those first.
"""

from __future__ import annotations

import gc

import torch
from torch import nn


def _meta_like(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(t.shape, dtype=t.dtype, device="meta")


def release_weights(model: nn.Module) -> int:
    """Replace every parameter and buffer of ``model`` by a meta tensor; the bytes freed.

    The count is over distinct tensors that held data (a tied weight counts once; meta
    tensors and ``None`` buffers count 0). Ends with ``gc.collect()``. The model is
    unusable for computation afterwards; its config, names and shapes remain.
    """
    replaced: dict[int, torch.Tensor] = {}  # id(old tensor) -> its meta replacement
    freed = 0

    def replacement(old: torch.Tensor, param: bool) -> torch.Tensor:
        nonlocal freed
        new = replaced.get(id(old))
        if new is None:
            if old.device.type != "meta":
                freed += old.numel() * old.element_size()
            meta = _meta_like(old)
            new = nn.Parameter(meta, requires_grad=old.requires_grad) if param else meta
            replaced[id(old)] = new
        return new

    with torch.no_grad():
        for module in model.modules():
            for name, p in list(module._parameters.items()):
                if p is not None:
                    module._parameters[name] = replacement(p, param=True)  # type: ignore[assignment]
            for name, b in list(module._buffers.items()):
                if b is not None:
                    module._buffers[name] = replacement(b, param=False)
    replaced.clear()
    gc.collect()
    return freed
