"""The int8 prefill program of a quantized ONNX export (``rgmobile export --prefill-int8``).

Prefill runs every linear on a whole chunk, so it is bound by integer GEMM throughput, and
onnxruntime's ``MatMulNBits`` (int4 or 8-bit blocks, int8 activations per block) reaches a
fraction of what the cores can do: measured 2026-12-06 at [m, 2560] x [2560, 7680] on two cores
(Intel Xeon with AMX), m = 32..512: 0.27 TOPS for int4 blocks of 32, against 1.0-1.8 TOPS (medians)
for ``DynamicQuantizeMatMul`` (int8 weights with a scale per output column, float activations
quantized per tensor at run time: MLAS's int8 GEMM). The whole 2B prefill program: 50 -> 169-185
tokens/s at a chunk of 128 (docs/performance.md). This module rewrites
the prefill graph's block linears to that op; the decode graph keeps ``MatMulNBits`` (decode is
bound by the bytes it reads, which int4 halves).

The int8 weights are the decode graph's integers requantized, not a second quantization of the
fp32 weights: for each output column, w = dequantize(int4 or 8-bit blocks) and
q = clip(rint(w / s), -127, 127), s = max |w| / 127 (symmetric, zero point 0). Both programs then
compute with (nearly) the same weights, and the artifact's precision stays the recipe's. The
activations are quantized per tensor (uint8, asymmetric; onnxruntime's ``DynamicQuantizeLinear``):
the whole [batch, t, K] input of a linear shares one scale, coarser than ``MatMulNBits``' blocks
of 32, and with a batch above one the sequences share it. :func:`dynamic_int8_reference` is the
eager model with exactly this maths, for tests; ``rgmobile validate`` checks the artifact against
the fp32 checkpoint with the recipe's thresholds, as for any quantized artifact.

Each linear's bias becomes the op's bias input (:func:`fold_biases`), added to its output
tile rather than by a separate pass over the output (2B, chunk 128: ~28 ms of ~1.1 s, measured).

The head (run once per chunk for the last position), the embedding and the RG-LRU gates keep
their ``MatMulNBits`` integers, shared with the decode graph in ``weights.bin``; the int8 linears
are a second copy of the block linears' weights (2B: +1.9 GB on disk beside 1.95 GB).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper

from exporter.model.griffin import Griffin
from quantization.onnx_mlas import dequantize
from quantization.onnx_store import QuantizedWeight, SpillStore
from quantization.reference import weight_classes

OP = "DynamicQuantizeMatMul"
SUFFIX = "_i8"  # <base>_i8 int8 [K, N], <base>_i8_scale float [N], <base>_i8_zero int8 [N]


def requantize(w_kn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """B [K, N] -> (q [K, N] int8 in -127..127, scale [N] float32): symmetric, one scale per output column."""
    w = np.asarray(w_kn, np.float32)
    scale = (np.abs(w).max(axis=0) / 127.0).astype(np.float32)
    scale[scale == 0] = 1.0  # an all-zero column: any scale, q = 0
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return q, scale


def int8_weights(store: SpillStore, q: QuantizedWeight) -> tuple[np.ndarray, np.ndarray]:
    """The int8 per-column requantization of a weight the store holds in ``MatMulNBits``' layout."""
    packed = store.read(q.packed, np.uint8, (q.n, q.k_blocks, q.block * q.bits // 8))
    scales = store.read(q.scales, np.float32, (q.n, q.k_blocks))
    return requantize(dequantize(packed, scales, q.bits, q.k))


def dynamic_int8_node(
    graph: onnx.GraphProto, store: SpillStore, a: str, out: str, name: str, base: str, q: QuantizedWeight
) -> onnx.NodeProto:
    """DynamicQuantizeMatMul(a, <base>_i8, <base>_i8_scale, <base>_i8_zero) -> out, its int8 weights the
    requantization of ``q`` (stored once in ``store``, keyed by ``base``)."""
    w, scale = int8_weights(store, q)
    names = (f"{base}{SUFFIX}", f"{base}{SUFFIX}_scale", f"{base}{SUFFIX}_zero")
    arrays = (w, scale, np.zeros(q.n, np.int8))
    types = (onnx.TensorProto.INT8, onnx.TensorProto.FLOAT, onnx.TensorProto.INT8)
    for init_name, array, dtype in zip(names, arrays, types, strict=True):
        span = store.put_array(array, f"prefill8:{init_name}")
        graph.initializer.append(store.initializer(init_name, dtype, array.shape, span))
    return helper.make_node(OP, [a, *names], [out], name=f"{name}{SUFFIX}", domain="com.microsoft")


def fold_biases(graph: onnx.GraphProto) -> int:
    """Each ``DynamicQuantizeMatMul`` whose one consumer adds a float [N] initializer takes it as its bias
    input (the kernel adds it to its output tile: one pass over the output fewer). Returns how many."""
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    outputs = {o.name for o in graph.output}
    folded = 0
    for node in [n for n in graph.node if n.op_type == OP and len(n.input) == 4]:
        users = consumers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "Add" or node.output[0] in outputs:
            continue
        add = users[0]
        bias = next((x for x in add.input if x != node.output[0]), None)
        n_out = inits[node.input[1]].dims[1]
        init = inits.get(bias or "")
        if init is None or list(init.dims) != [n_out] or init.data_type != onnx.TensorProto.FLOAT:
            continue
        node.input.append(init.name)
        node.output[0] = add.output[0]
        graph.node.remove(add)
        folded += 1
    return folded


def facts(matmuls: int, params: int, source_bits: int, biases: int) -> dict[str, Any]:
    """What the manifest records of the prefill graph's linears (``quantization.onnx_prefill``)."""
    return {
        "op": OP,
        "bits": 8,
        "matmuls": matmuls,
        "biases_in_op": biases,
        "params": params,
        "weights": f"the decode graph's {source_bits}-bit integers requantized to int8, one symmetric scale per "
        "output column (max |w| / 127), zero point 0",
        "activations": "quantized per tensor at run time (uint8, asymmetric: DynamicQuantizeLinear)",
        "other_classes": "the head, the embedding and the RG-LRU gates keep MatMulNBits, shared with decode",
    }


# --- the eager reference ---------------------------------------------------------------------------


def dynamic_quantize(x: torch.Tensor) -> torch.Tensor:
    """dequantize(DynamicQuantizeLinear(x)): uint8 per tensor, range widened to hold 0, round half to even."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / 255.0
    if scale == 0.0:
        return torch.zeros_like(x)
    zero = float(np.clip(np.rint(-lo / scale), 0, 255))
    return (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale


@torch.no_grad()
def dynamic_int8_reference(reference: Griffin) -> Griffin:
    """A copy of ``reference`` (the eager model with the decode graph's integers, quantization/onnx.py
    ``ort_reference``) whose block linears compute as the int8 prefill graph does: weights requantized
    per output column, inputs quantized per tensor."""
    q = copy.deepcopy(reference).float().eval()
    modules = dict(q.named_modules())
    for name in weight_classes(q)["linears"]:
        linear = modules[name.removesuffix(".weight")]
        assert isinstance(linear, torch.nn.Linear)
        w, scale = requantize(linear.weight.detach().t().numpy())
        linear.weight.copy_(torch.from_numpy(w.astype(np.float32) * scale).t())
        linear.register_forward_pre_hook(lambda _m, args: (dynamic_quantize(args[0]), *args[1:]))
    return q
