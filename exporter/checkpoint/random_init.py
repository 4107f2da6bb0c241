"""Random weights at any preset shape, one tensor at a time (for benchmarks of the true 2B shape).

``random_model(config, seed, dtype)`` builds the :class:`Griffin` skeleton on
the meta device (no memory) and then materialises each parameter directly in
``dtype`` and fills it in place (``normal_`` with upstream-like scales, the
same rules as :func:`exporter.model.griffin.random_init_`). No full-size fp32
temporary ever exists, so the peak RSS stays near the final model size: about
5.4 GB for the 2B shape in bfloat16, 10.7 GB in float32 (measured).

Each tensor has its own generator seeded from (seed, parameter name), so the
weights do not depend on the order of initialisation: ``random_model(c, 3)``
is the same model in every process, which lets ``bench`` and the tests rebuild
exactly the weights a ``--random-init`` artifact was exported from.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time

import torch
from torch import nn

from exporter.config import GriffinConfig
from exporter.errors import RgMobileError
from exporter.model.griffin import Griffin

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise RgMobileError(f"unknown dtype {name!r}; valid: {sorted(DTYPES)}") from None


def _generator(seed: int, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _fill_(name: str, t: torch.Tensor, config: GriffinConfig, gen: torch.Generator, nonzero_biases: bool) -> None:
    """Fill ``t`` (parameter ``name``) in place; the scales of ``random_init_``."""
    if name.endswith("recurrent_param"):
        # a = exp(-softplus(p)) uniform in [0.9, 0.999] (upstream's ring init), stored through softplus^-1.
        rad = torch.empty(t.shape).uniform_(0.9**2 + 1e-8, 0.999**2 + 1e-8, generator=gen).log() * 0.5
        t.copy_((-rad).exp().sub(1.0).log())
    elif t.ndim == 1 or name.endswith("_bias"):
        if nonzero_biases:
            t.normal_(0.0, 0.1, generator=gen)
        else:
            t.zero_()
    elif name.endswith("embed_tokens.weight"):
        t.normal_(0.0, math.sqrt(1.0 / config.width), generator=gen)
    elif "conv_1d" in name:
        t.normal_(0.0, math.sqrt(0.01 / config.conv_width), generator=gen)
    else:
        fan_in = t.shape[-1] if t.ndim == 2 else t.shape[-2]
        t.normal_(0.0, math.sqrt(1.0 / fan_in), generator=gen)


def random_tensor(
    config: GriffinConfig, seed: int, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
    nonzero_biases: bool = True,
) -> torch.Tensor:  # fmt: skip
    """Parameter ``name`` (of shape ``shape``) of ``random_model(config, seed)``, on its own: the same
    values, because each parameter has its own generator (the streamed ONNX export reads them so)."""
    t = torch.empty(shape, dtype=dtype)
    with torch.no_grad():
        _fill_(name, t, config, _generator(seed, name), nonzero_biases)
    return t


def random_model(
    config: GriffinConfig, seed: int = 0, dtype: torch.dtype = torch.float32, nonzero_biases: bool = True
) -> Griffin:
    """A :class:`Griffin` with random weights in ``dtype``, materialised one parameter at a time."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise RgMobileError(f"random init: dtype {dtype!r} is not a floating-point torch dtype")
    config.check_memory(dtype_bytes=torch.empty((), dtype=dtype).element_size(), what=f"random {config.name}")
    t0 = time.perf_counter()
    model = meta_model(config)
    modules = dict(model.named_modules())
    for name, p in list(model.named_parameters()):
        owner, _, leaf = name.rpartition(".")
        t = random_tensor(config, seed, name, tuple(p.shape), dtype, nonzero_biases)
        setattr(modules[owner], leaf, nn.Parameter(t, requires_grad=False))
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    log.info(
        "random %s model (seed %d, %s): %.2f GB of weights in %.1fs",
        config.name, seed, dtype, nbytes / 1e9, time.perf_counter() - t0,
    )  # fmt: skip
    return model.eval()


def meta_model(config: GriffinConfig) -> Griffin:
    """The :class:`Griffin` skeleton on the meta device: shapes and names, no memory."""
    with torch.device("meta"):
        return Griffin(config).eval()


def random_config(name: str) -> GriffinConfig:
    """A preset name ("2b") or a ``.json`` file holding ``GriffinConfig.to_dict()`` (any other shape,
    e.g. the 2B width with 3 layers to calibrate export memory before a full 2B run)."""
    if name.endswith(".json"):
        from pathlib import Path

        from exporter.fsio import read_json  # missing, unreadable, invalid or non-object JSON

        try:
            data = read_json(Path(name))
        except RgMobileError as exc:
            raise RgMobileError(f"--random-init: {exc}") from None
        return GriffinConfig.from_dict(data)
    from exporter.config import preset

    return preset(name)


def source_label(preset_name: str, seed: int) -> str:
    """How a random-init export names its source (ONNX metadata, logs)."""
    return f"random_init:{preset_name}:seed={seed}"
