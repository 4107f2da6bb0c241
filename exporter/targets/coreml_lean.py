"""Two whole-tensor numpy temporaries in coremltools 9.0, computed in bounded chunks instead.

Measured on the ``2b`` shape cut to 3 layers and a 32000 vocab (exporter/targets/coreml_memory.py),
both scale with the largest weight, the tied [vocab, width] embedding (655M values at 2B):

* ``FP16ComputePrecision.fp16_overflow`` (the ``common::add_fp16_cast`` pass, fp16
  compute) checks every fp32 const input with ``np.max(a[np.where(a < 1e38)])``
  where ``a = |w|``: an fp32 copy, a bool mask, two int64 index arrays and the
  selected values, ~25 bytes per weight value, ~16 GB for the 2B embedding.
* ``const_deduplication.find_constants`` (run within a function by the default
  pipeline and across functions by ``coremltools.utils.save_multifunction``)
  compares consts whose shape and first 100 values agree with ``np.allclose``,
  whose ``isclose`` makes several float temporaries of the full tensor; for the
  int8/int4 data of a quantized embedding they are float64 (8 bytes per value each).
  Decode and prefill share every weight, so every weight is compared once.

:func:`lean_coremltools` swaps in chunked equivalents (same answers, chunk-sized
temporaries) while it is active and restores the originals after. Both are
checked against the originals in tests/test_coreml.py. If a future coremltools
moves these functions, nothing is patched (a warning says so) and conversion
runs as before.
"""

from __future__ import annotations

import contextlib
import logging
import types
from collections.abc import Iterator
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CHUNK = 1 << 22  # values per chunk: 4M, i.e. 16 MB of fp32 (~100 MB of temporaries at worst)
FP16_MAX = 65504.0
INF_LIKE = 1e38  # coremltools: |w| >= 1e38 counts as infinity (e.g. -inf masks), which fp16 holds


def _flat_chunks(a: np.ndarray) -> Iterator[np.ndarray]:
    flat = np.ravel(a)  # a view of a contiguous array
    for i in range(0, flat.size, CHUNK):
        yield flat[i : i + CHUNK]


def exceeds_fp16(value: Any) -> bool:
    """True when some |value| is finite-like (< 1e38) and above the fp16 maximum.

    The same answer as coremltools 9.0's ``np.max(|v|[|v| < 1e38], initial=0) > 65504``
    (NaN is neither), with chunk-sized temporaries.
    """
    a = np.asarray(value)
    for chunk in _flat_chunks(a):
        mag = np.abs(chunk)
        if np.any((mag > FP16_MAX) & (mag < INF_LIKE)):
            return True
    return False


def chunked_allclose(a: Any, b: Any, rtol: float = 1e-5, atol: float = 1e-8, equal_nan: bool = False) -> bool:
    """``np.allclose`` evaluated chunk by chunk when both arrays have the same (large) shape."""
    x, y = np.asarray(a), np.asarray(b)
    if x.shape != y.shape or x.size <= CHUNK:
        return bool(np.allclose(x, y, rtol=rtol, atol=atol, equal_nan=equal_nan))
    return all(
        np.allclose(cx, cy, rtol=rtol, atol=atol, equal_nan=equal_nan)
        for cx, cy in zip(_flat_chunks(x), _flat_chunks(y), strict=True)
    )


def _fp16_overflow(op: Any) -> bool:
    """Drop-in for ``FP16ComputePrecision.fp16_overflow`` (coremltools 9.0) using :func:`exceeds_fp16`."""
    for inputs in op.inputs.values():
        for var in inputs if isinstance(inputs, (list, tuple)) else [inputs]:
            if (
                var.op is not None
                and var.op.op_type == "const"
                and var.is_tensor_or_scalar_of(dtype="fp32")
                and exceeds_fp16(var.op.val.val)
            ):
                return True
    return False


_LEAN_OVERFLOW = staticmethod(_fp16_overflow)  # coremltools 9.0 declares fp16_overflow a staticmethod


class _NumpyWithChunkedAllclose(types.ModuleType):
    """numpy, except ``allclose``: what ``const_deduplication`` sees as ``np`` while patched."""

    def __init__(self) -> None:
        super().__init__("numpy")
        self.allclose = chunked_allclose

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


@contextlib.contextmanager
def lean_coremltools() -> Iterator[None]:
    """Within the block, coremltools uses the chunked versions (see the module docstring)."""
    import importlib

    try:
        from coremltools.converters.mil.mil.passes.defs import quantization

        # the module, not the pass class of the same name that the package re-exports
        const_deduplication = importlib.import_module(
            "coremltools.converters.mil.mil.passes.defs.cleanup.const_deduplication"
        )
    except ImportError:  # pragma: no cover - coremltools layout changed
        log.warning("coreml: coremltools internals moved; converting without the chunked numpy checks")
        yield
        return
    cls = quantization.FP16ComputePrecision
    if cls.__dict__.get("fp16_overflow") is _LEAN_OVERFLOW:  # nested: already patched
        yield
        return
    if not hasattr(cls, "fp16_overflow") or getattr(const_deduplication, "np", None) is not np:
        log.warning("coreml: coremltools internals moved; converting without the chunked numpy checks")
        yield
        return
    old_overflow = cls.__dict__["fp16_overflow"]
    cls.fp16_overflow = _LEAN_OVERFLOW  # type: ignore[method-assign, assignment]
    const_deduplication.np = _NumpyWithChunkedAllclose()  # type: ignore[attr-defined]
    try:
        yield
    finally:
        setattr(cls, "fp16_overflow", old_overflow)  # noqa: B010  # the original descriptor, as it was
        const_deduplication.np = np  # type: ignore[attr-defined]
