"""A quantized checkpoint's own integers in onnxruntime's ``MatMulNBits`` layout (quantization/onnx.py).

When an export is handed a :class:`GivenQuantization`, the graph surgery stays the same and only
the source of the integers changes: instead of onnxruntime's MLAS quantizer, every weight takes
the checkpoint's ``q`` and ``scale`` unchanged.

Layout: our ``q`` is signed, in [-2^(bits-1), 2^(bits-1) - 1], rows are output channels [N, K];
that is MatMulNBits' B^T already. MatMulNBits stores unsigned integers with the implicit zero
point 2^(bits-1), so u = q + 2^(bits-1) (exact), in blocks of ``block`` along K, packed
``[N, k_blocks, block * bits / 8]`` (int4: two per byte, the even column in the low nibble);
K is padded to whole blocks with q = 0. Scales stay float32 (the graph is fp32: exact).
``per_group`` maps one group to one block (group size = block size); ``per_channel`` repeats the
row's scale for every block of the row, which is the same weight exactly.

Initializer names say which parameter each weight is (read back by quantization/onnx_readback.py):
``<param>_t_Q<bits>`` / ``<param>_t_scales`` for a linear, ``<param>.head<h>_Q<bits>`` /
``_scales`` for one head of an RG-LRU gate, and ``lm_head.weight_t_Q<bits>`` / ``_scales`` with
``embed_tokens.weight_q<bits>`` (the same bytes) for the tied embedding and head.
"""

from __future__ import annotations

import hashlib

import numpy as np

from exporter.errors import RgMobileError
from exporter.model.griffin import Griffin
from quantization.onnx_store import QuantizedWeight, SpillStore
from quantization.qweights import GivenQuantization
from quantization.recipe import WeightScheme

NAMING = (
    "<param>_t_Q<bits>/_scales (linears); <param>.head<h>_Q<bits>/_scales (rglru gates, one per head, [out, in]); "
    "lm_head.weight_t_Q<bits>/_scales and embed_tokens.weight_q<bits> (embed_tokens.weight, tied head)"
)


def pack(q: np.ndarray, scale: np.ndarray, scheme: WeightScheme, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(packed uint8 [N, k_blocks, block * bits / 8], scales fp32 [N, k_blocks]) of our q [N, K], scale [N, groups]."""
    if q.dtype != np.int8:
        raise RgMobileError(f"onnx quantization: integers must be int8 storage, got {q.dtype}")
    n, k = q.shape
    bits = scheme.bits
    kb = -(-k // block)
    if scheme.granularity == "per_group":
        if scheme.group_size != block or scale.shape != (n, kb):
            raise RgMobileError(
                f"onnx quantization: group size {scheme.group_size} with scales {scale.shape} cannot be "
                f"MatMulNBits blocks of {block} over K = {k}"
            )
        scales = np.asarray(scale, np.float32)
    else:
        scales = np.repeat(np.asarray(scale[:, :1], np.float32), kb, axis=1)
    zero = 2 ** (bits - 1)
    u = np.full((n, kb * block), zero, np.uint8)
    u[:, :k] = q.view(np.uint8) + np.uint8(zero)  # two's complement + 2^(bits-1), mod 256: exact, no widening
    u = u.reshape(n, kb, block)
    if bits == 4:
        u = u[..., 0::2] | (u[..., 1::2] << 4)
    return np.ascontiguousarray(u), np.ascontiguousarray(scales)


class GivenIntegers:
    """Puts ``given.weights`` into the spill store, one parameter (or one gate head) at a time."""

    def __init__(self, given: GivenQuantization, store: SpillStore, model: Griffin) -> None:
        self.given = given
        self.store = store
        self.used: set[str] = set()
        self._model = model
        self._gates: dict[str, str] | None = None

    def weight(self, param: str, head: int | None, k: int, n: int, block: int) -> QuantizedWeight:
        """The given integers of ``param`` (head ``head`` of a gate) as MatMulNBits' B [K, N]."""
        qt = self.given.weights.get(param)
        if qt is None:
            raise RgMobileError(f"onnx export: the quantized checkpoint has no integers for {param}")
        if (head is not None) != qt.block_diagonal:
            raise RgMobileError(f"onnx export: {param} is {'' if qt.block_diagonal else 'not '}block-diagonal")
        q, scale = (qt.q, qt.scale) if head is None else (qt.q[head], qt.scale[head])
        if tuple(q.shape) != (n, k):
            raise RgMobileError(
                f"onnx export: given {param} is {tuple(q.shape)}, the graph's weight is [N, K] = {n, k}"
            )
        packed, scales = pack(q.numpy(), scale.numpy(), qt.scheme, block)
        self.used.add(param)
        return self.store.put(packed, scales, k, qt.scheme.bits, block, f"given:{param}:{head}")

    def gate_param(self, w: np.ndarray) -> str:
        """Our name of a 3-D gate weight [h, i, j] of the graph (matched by its values)."""
        if self._gates is None:
            self._gates = {
                _sha(p.detach().float().numpy()): name for name, p in self._model.named_parameters() if p.ndim == 3
            }
        name = self._gates.get(_sha(w))
        if name is None:
            raise RgMobileError(
                f"onnx export: a gate weight {tuple(w.shape)} of the graph is no parameter of the model"
            )
        return name

    def check_all_used(self) -> None:
        missing = sorted(set(self.given.weights) - self.used)
        if missing:
            raise RgMobileError(
                f"onnx export: {len(missing)} given weights found no place in the graph, e.g. {missing[0]}"
            )


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, np.float32).tobytes()).hexdigest()
