"""Where the ONNX quantizer keeps its integers and how it reads fp32 weights (quantization/onnx.py).

:class:`SpillStore` writes each quantized weight once to a spill file that every graph of
one export points at; :func:`read_rows` / :func:`digest` read initializers (inline or external
data) a chunk of rows at a time, so no weight is ever loaded whole.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from exporter.errors import RgMobileError
from exporter.model.griffin import Griffin
from exporter.targets.onnx_external import external_span
from quantization.onnx_mlas import CHUNK_BYTES, Columns, quantize_blocks


@dataclass(frozen=True)
class QuantizedWeight:
    """Where one quantized B [K, N] lives in the spill file: packed integers and fp32 scales (offset, length)."""

    k: int
    n: int
    bits: int
    block: int
    packed: tuple[int, int]
    scales: tuple[int, int]

    @property
    def k_blocks(self) -> int:
        return -(-self.k // self.block)


class SpillStore:
    """Quantized weights of one export, shared by its graphs (decode, prefill).

    Each weight is quantized once (keyed by its fp32 bytes, bits and block), its integers
    and scales appended to ``path``, and the graphs' initializers point at those bytes as
    external data with an absolute location: the ONNX target then regroups every graph's
    tensors into the artifact's ``weights.bin`` (or inlines them with ``--external-data
    never``). Nothing quantized is held in memory, and no weight is ever loaded whole
    (memory-mapped reads, quantized in chunks along N: quantization/onnx_mlas.py).
    """

    def __init__(self, path: Path, model: Griffin) -> None:
        self.path = Path(path)
        self._file = open(self.path, "wb")  # noqa: SIM115  # closed by close()
        self._done: dict[tuple[str, int, int], QuantizedWeight] = {}
        self._arrays: dict[str, tuple[int, int]] = {}
        self._model = model
        self._param_hashes: dict[str, str] | None = None

    def close(self) -> None:
        self._file.close()

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

    def param_hashes(self) -> dict[str, str]:
        """sha256 of every 2-D parameter transposed (as MatMul's B) -> parameter name; computed once."""
        if self._param_hashes is None:
            self._param_hashes = {}
            for name, p in self._model.named_parameters():
                # a streamed export's skeleton has no values; its weights are named when written
                if p.ndim == 2 and name != "embed_tokens.weight" and not p.is_meta:
                    digest = hashlib.sha256(p.detach().float().t().contiguous().numpy().tobytes()).hexdigest()
                    self._param_hashes[digest] = name
        return self._param_hashes

    def _append(self, array: np.ndarray) -> tuple[int, int]:
        self._file.write(b"\0" * (-self._file.tell() % _ALIGN))
        offset = self._file.tell()
        self._file.write(np.ascontiguousarray(array).tobytes())
        return offset, array.nbytes

    def quantize(self, columns: Columns, k: int, n: int, bits: int, block: int, key: str) -> QuantizedWeight:
        """Quantize B [K, N] (read through ``columns``) unless a weight with the same ``key`` was."""
        if (key, bits, block) not in self._done:
            packed, scales = quantize_blocks(columns, k, n, bits, block)
            return self.put(packed, scales, k, bits, block, key)
        return self._done[(key, bits, block)]

    def put(self, packed: np.ndarray, scales: np.ndarray, k: int, bits: int, block: int, key: str) -> QuantizedWeight:
        """Store integers chosen elsewhere (already in MatMulNBits' layout) unless ``key`` was stored."""
        if (key, bits, block) not in self._done:
            n, k_blocks = scales.shape
            if packed.shape != (n, k_blocks, block * bits // 8) or packed.dtype != np.uint8:
                raise RgMobileError(
                    f"onnx quantization: {key}: packed {packed.shape} does not fit scales {scales.shape}"
                )
            spans = self._append(packed), self._append(np.ascontiguousarray(scales, np.float32))
            self._done[(key, bits, block)] = QuantizedWeight(k, n, bits, block, *spans)
        return self._done[(key, bits, block)]

    def put_array(self, array: np.ndarray, key: str) -> tuple[int, int]:
        """Store any array (e.g. the int8 prefill weights, quantization/onnx_prefill8.py) unless ``key`` was
        stored; returns its span."""
        if key not in self._arrays:
            self._arrays[key] = self._append(array)
        return self._arrays[key]

    def read(self, span: tuple[int, int], dtype: type[np.generic], shape: tuple[int, ...]) -> np.ndarray:
        """The bytes of ``span`` (written earlier) as an array."""
        self._file.flush()
        with open(self.path, "rb") as f:
            f.seek(span[0])
            return np.frombuffer(f.read(span[1]), dtype).reshape(shape)

    def initializer(self, name: str, dtype: int, dims: tuple[int, ...], span: tuple[int, int]) -> onnx.TensorProto:
        """A tensor whose bytes are ``span`` of the spill file (inline below 1 KB, as the exporter does)."""
        self._file.flush()
        t = onnx.TensorProto(name=name, data_type=dtype, dims=list(dims))
        if span[1] < _INLINE_BYTES:
            with open(self.path, "rb") as f:
                f.seek(span[0])
                t.raw_data = f.read(span[1])
            return t
        for key, value in (("location", str(self.path)), ("offset", str(span[0])), ("length", str(span[1]))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        t.data_location = onnx.TensorProto.EXTERNAL
        return t


_ALIGN = 4096
_INLINE_BYTES = 1024  # smaller tensors stay in the graph (exporter/targets/onnx.py _tensor_bytes)
_NP_TYPES: dict[int, type[np.floating[Any]]] = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
}


def read_rows(init: onnx.TensorProto, r0: int | None = None, r1: int | None = None) -> np.ndarray:
    """Rows ``r0:r1`` (leading axis) of an initializer, read into memory; external data is read
    by offset, so nothing else of the file is loaded (or kept mapped)."""
    shape = tuple(int(d) for d in init.dims)
    r0, r1 = r0 or 0, shape[0] if r1 is None else r1
    span = external_span(init)
    if span is None:
        return numpy_helper.to_array(init)[r0:r1]
    if init.data_type not in _NP_TYPES:
        raise RgMobileError(f"onnx quantization: {init.name} has data type {init.data_type}, expected fp32/fp16")
    dtype = np.dtype(_NP_TYPES[init.data_type])
    row = math.prod(shape[1:])
    offset = span.offset + r0 * row * dtype.itemsize
    data = np.fromfile(span.location, dtype, count=(r1 - r0) * row, offset=offset)
    return data.reshape((r1 - r0, *shape[1:]))


def column_reader(b: np.ndarray) -> Columns:
    """Column ranges of B [K, N] as float32."""

    def columns(n0: int, n1: int) -> np.ndarray:
        return np.asarray(b[:, n0:n1], np.float32)

    return columns


def digest(init: onnx.TensorProto) -> str:
    """sha256 of an initializer's values as float32 (read in chunks of rows)."""
    h = hashlib.sha256()
    shape = [int(d) for d in init.dims]
    step = max(1, CHUNK_BYTES // (4 * max(1, math.prod(shape[1:]))))
    for r0 in range(0, shape[0], step):
        h.update(np.ascontiguousarray(read_rows(init, r0, min(shape[0], r0 + step)), np.float32).tobytes())
    return h.hexdigest()
