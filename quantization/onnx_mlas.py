"""onnxruntime's own block quantizer (MLAS, through its pybind), in bounded memory.

``quantize_blocks`` is what ``MatMulNBitsQuantizer.qbits_block_quant`` does for one
MatMul weight, but it takes the weight as a function returning column ranges of B
``[K, N]`` and quantizes ``N`` in chunks, so no full-size fp32 temporary is ever made:
the 2B embedding (``[256000, 2560]``, 2.6 GB in fp32) is read from a memory map and
quantized 64 MB at a time. The integers are exactly the quantizer's (same kernels,
same arguments; each output channel is quantized independently, so chunking along N
cannot change them).

Layout (MatMulNBits, QOperator, symmetric): ``packed`` uint8 ``[N, k_blocks, block * bits / 8]``
(low nibble first for int4), ``scales`` fp32 ``[N, k_blocks]``, implicit zero point 2^(bits-1).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

CHUNK_BYTES = 64 * 2**20  # fp32 bytes of B quantized per MLAS call

Columns = Callable[[int, int], np.ndarray]  # (n0, n1) -> B[:, n0:n1] as float32 [K, n1 - n0]


def quantize_blocks(columns: Columns, k: int, n: int, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(packed [N, k_blocks, blob] uint8, scales [N, k_blocks] fp32) of B [K, N], symmetric RTN."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    quant = {8: quantize_matmul_8bits, 4: quantize_matmul_4bits}[bits]
    kb = -(-k // block)
    packed = np.zeros((n, kb, block * bits // 8), np.uint8)
    scales = np.zeros((n, kb), np.float32)
    step = max(1, CHUNK_BYTES // (4 * kb * block))
    for n0 in range(0, n, step):
        n1 = min(n, n0 + step)
        padded = np.zeros((kb * block, n1 - n0), np.float32)
        padded[:k] = columns(n0, n1)
        part_packed = np.zeros((n1 - n0, kb, block * bits // 8), np.uint8)
        part_scales = np.zeros((n1 - n0, kb), np.float32)
        zero_points = np.zeros((n1 - n0, -(-kb * bits // 8)), np.uint8)  # unused (symmetric)
        quant(part_packed, padded, part_scales, zero_points, block, n1 - n0, kb * block, True)
        packed[n0:n1] = part_packed
        scales[n0:n1] = part_scales
    return packed, scales


def unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """uint8 blobs -> one unsigned integer per weight (int32), low bits first."""
    if bits == 8:
        return packed.astype(np.int32)
    return np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1).astype(np.int32)


def dequantize(packed: np.ndarray, scales: np.ndarray, bits: int, k: int) -> np.ndarray:
    """The weights B [K, N] a MatMulNBits with ``packed``/``scales`` multiplies by."""
    n, kb = scales.shape
    q = unpack(packed, bits).reshape(n, kb, -1) - 2 ** (bits - 1)
    return (q * scales[:, :, None]).reshape(n, -1)[:, :k].T.copy()


def ort_fake_quantize(w_kn: np.ndarray, bits: int, block: int) -> np.ndarray:
    """dequantize(quantize(w)) exactly as MatMulNBits holds it; w [K, N] (MatMul's B) -> [K, N]."""
    k, n = w_kn.shape
    packed, scales = quantize_blocks(lambda n0, n1: w_kn[:, n0:n1], k, n, bits, block)
    return dequantize(packed, scales, bits, k)
