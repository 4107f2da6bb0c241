"""coremltools 9.0 internals patched during conversion: whole-tensor numpy temporaries
(chunked or skipped), and a pass that fails on consecutive state updates (left out).

What is patched, and why:

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
* ``backend.mil.helper._get_offset_by_writing_data`` (saving the weight blob)
  passes ``np.ascontiguousarray(val.flatten())`` to the blob writer: ``flatten``
  always copies, and the fp16 path copies again with ``tobytes`` before
  reinterpreting the bytes as uint16. Two full-size copies of the fp16 embedding
  (2 x 1.3 GB at 2B); one for the other dtypes.

:func:`lean_coremltools` swaps in equivalents (same answers or the same bytes
written, chunk-sized or no temporaries) while it is active and restores the
originals after. All are checked against the originals in tests/test_coreml.py.
If a future coremltools moves these functions, that one is not patched (a warning
says so) and conversion runs as before; on another coremltools version none is.

* ``common::canonicalize_inplace_pattern`` indexes a stale op list and fails (KeyError)
  when two state updates follow each other; it only moves updates next to their
  producers, so :func:`pass_pipeline` leaves it out for programs with Core ML states.

Guarded by tests/test_upstream.py (the pinned version and the patched attributes exist)
and tests/test_coreml.py (each patch gives the original's answers and bytes).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import types
from collections.abc import Iterator
from typing import Any

import numpy as np

from exporter.upstream import is_pinned

log = logging.getLogger(__name__)

VERSION = "9.0"  # the coremltools these patches are written for (pyproject.toml pins it)

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


# numpy (kind, itemsize) of a full-byte weight -> the coremltools 9.0 blob writer method its dtype uses
_BLOB_WRITERS = {
    ("f", 4): "write_float_data",
    ("f", 2): "write_fp16_data",  # the fp16 bits, as uint16
    ("u", 1): "write_uint8_data",
    ("i", 1): "write_int8_data",
    ("u", 2): "write_uint16_data",
    ("i", 2): "write_int16_data",
    ("i", 4): "write_int32_data",
    ("u", 4): "write_uint32_data",
}
_FULL_BYTE_MIL_DTYPES = ("fp16", "fp32", "int8", "uint8", "int16", "uint16", "int32", "uint32")


def _lean_offset_by_writing_data(original: Any, output_var: Any, blob_writer: Any) -> Any:
    """``helper._get_offset_by_writing_data`` (coremltools 9.0) without the whole-weight copies.

    Full-byte dtypes get the same array the original hands the writer, ``np.ravel`` instead
    of ``flatten`` (a view when the weight is C-contiguous, else the same C-order copy), and
    for fp16 a ``view(np.uint16)`` of it instead of ``frombuffer(tobytes())`` (the same bits).
    Sub-byte MIL dtypes (int4, uint1..uint6: bit packing), anything not a numpy array and
    dtypes the original rejects are left to ``original``.
    """
    from coremltools.converters.mil.mil import types

    val = output_var.val
    full_byte = tuple(getattr(types, name) for name in _FULL_BYTE_MIL_DTYPES)
    method = None
    if output_var.dtype in full_byte and isinstance(val, (np.ndarray, np.generic)):
        method = _BLOB_WRITERS.get((val.dtype.kind, val.dtype.itemsize))
    if method is None:
        return original(output_var, blob_writer)
    flat = np.ravel(val)  # C order, like flatten(); 1-D and contiguous
    if method == "write_fp16_data":
        flat = flat.view(np.uint16)
    return getattr(blob_writer, method)(np.ascontiguousarray(flat))


@contextlib.contextmanager
def _lean_weight_writer() -> Iterator[None]:
    """Within the block, coremltools writes weight blobs via :func:`_lean_offset_by_writing_data`."""
    try:
        from coremltools.converters.mil.backend.mil import helper
    except ImportError:  # pragma: no cover - coremltools layout changed
        helper = None
    current = getattr(helper, "_get_offset_by_writing_data", None)
    if isinstance(current, functools.partial) and current.func is _lean_offset_by_writing_data:
        yield  # nested: already patched
        return
    if current is None or not callable(current):
        log.warning("coreml: coremltools internals moved; writing weights with their full-size copies")
        yield
        return
    helper._get_offset_by_writing_data = functools.partial(_lean_offset_by_writing_data, current)
    try:
        yield
    finally:
        helper._get_offset_by_writing_data = current


@contextlib.contextmanager
def lean_coremltools() -> Iterator[None]:
    """Within the block, coremltools uses the lean versions (see the module docstring)."""
    import coremltools

    if not is_pinned("coremltools", coremltools.__version__, VERSION, "converting with whole-tensor temporaries"):
        yield
        return
    with _lean_weight_writer(), _chunked_numpy_checks():
        yield


def pass_pipeline(internal_state: bool) -> Any:
    """coremltools' default pass pipeline (a fresh one); with Core ML states (``internal_state``)
    without ``common::canonicalize_inplace_pattern`` (see the module docstring)."""
    import coremltools as ct

    p = ct.PassPipeline.DEFAULT
    if internal_state:
        p.remove_passes({"common::canonicalize_inplace_pattern"})
    return p


@contextlib.contextmanager
def _chunked_numpy_checks() -> Iterator[None]:
    """Within the block, the fp16 overflow check and const deduplication are chunked."""
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
