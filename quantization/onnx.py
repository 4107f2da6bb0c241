"""Apply a quantization recipe to the exported fp32 ONNX graphs with onnxruntime's quantizer.

Per recipe class (quantization/recipe.py), on each program graph (decode, prefill):

  linears      every MatMul with a constant 2-D weight -> ``MatMulNBits`` (bits, block).
  embedding    the dynamo graph reaches the tied head through ``Transpose(embed_tokens)``,
               which the quantizer skips ("non constant B", FINDINGS.md), so the head is
               untied first: a ``[width, vocab]`` initializer feeds the head MatMul. The
               head becomes ``MatMulNBits``; the embedding ``Gather`` becomes a
               ``GatherBlockQuantized`` reading the *same* integers (its uint8 layout
               ``[vocab, width * bits / 8]`` is byte-identical to MatMulNBits'
               ``[vocab, k_blocks, blob]``) and the same scales initializer: still tied,
               quantized once, and stored once in the shared weights file.
  rglru_gates  the block-diagonal gates are ``Einsum("bthi,hij->bthj")`` with a 3-D
               weight, which the quantizer skips ("N-D batched quantization not
               supported"); each is rewritten as Split(h) -> h 2-D MatMuls -> Concat,
               and those MatMuls are quantized like any other.

A class whose scheme is None keeps its fp32 graph (the head stays tied, the gates stay
Einsum); ``kept_fp32_params`` in the facts counts every float parameter left.

Maths (onnxruntime's MLAS, measured; not quantization/tensor.py's): symmetric blocks
along K; scale = (the block's value of largest magnitude) / -2^(bits-1), so that value
maps to -2^(bits-1) exactly; q = clip(round(w / scale), -2^(bits-1), 2^(bits-1) - 1),
stored unsigned with the implicit zero point 2^(bits-1). ``fake_quantized`` (amax /
(2^(bits-1) - 1)) therefore differs by rounding; :func:`ort_reference` is the eager model
with exactly the integers the graph holds.

MLAS quantizes blocks of 16..256 only, so ``per_channel`` becomes the largest block of
256, 128, 64, 32, 16 that divides K: exactly per channel when K <= 256 is a power of two,
otherwise a few int8 groups per output channel (never coarser than per channel; one
fp32 scale per 256 weights at most).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from exporter.config import GriffinConfig
from exporter.errors import RgMobileError
from exporter.model.griffin import Griffin
from quantization.recipe import Recipe, WeightScheme
from quantization.reference import weight_classes

log = logging.getLogger(__name__)

MLAS_BLOCKS = (256, 128, 64, 32, 16)
EINSUM_GATES = "bthi,hij->bthj"  # exporter/model/layers.py block_diagonal
HEAD_NAME = "lm_head.weight_t"  # the untied head [width, vocab]
_ORT_LOGGER = "onnxruntime.quantization.matmul_nbits_quantizer"
_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def block_size_for(scheme: WeightScheme, k: int) -> int:
    """The MatMulNBits block size that implements ``scheme`` for a weight with K = ``k`` inputs."""
    if scheme.granularity == "per_group":
        assert scheme.group_size is not None
        if scheme.group_size not in MLAS_BLOCKS:
            raise RgMobileError(
                f"onnx quantization: group size {scheme.group_size} is not supported by onnxruntime's "
                f"quantizer; use one of {sorted(MLAS_BLOCKS)}"
            )
        return scheme.group_size
    return next((b for b in MLAS_BLOCKS if k % b == 0), MLAS_BLOCKS[-1])


def check_recipe(recipe: Recipe) -> None:
    """Fail before exporting when onnxruntime cannot implement ``recipe`` (group sizes 16..256)."""
    for scheme in (recipe.linears, recipe.embedding, recipe.rglru_gates):
        if scheme is not None:
            block_size_for(scheme, MLAS_BLOCKS[0])


# --- the eager reference with onnxruntime's integers ----------------------------------------------


def ort_fake_quantize(w_kn: np.ndarray, bits: int, block: int) -> np.ndarray:
    """dequantize(quantize(w)) exactly as MatMulNBitsQuantizer does it; w [K, N] (MatMul's B) -> [K, N]."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    k, n = w_kn.shape
    kb = -(-k // block)
    padded = np.zeros((kb * block, n), np.float32)
    padded[:k] = w_kn
    packed = np.zeros((n, kb, block * bits // 8), np.uint8)
    zero_points = np.zeros((n, -(-kb * bits // 8)), np.uint8)
    scales = np.zeros((n, kb), np.float32)
    quant = {8: quantize_matmul_8bits, 4: quantize_matmul_4bits}[bits]
    quant(packed, padded, scales, zero_points, block, n, kb * block, True)
    q = unpack(packed, bits).reshape(n, kb, block) - 2 ** (bits - 1)
    return (q * scales[:, :, None]).reshape(n, kb * block)[:, :k].T.copy()


def unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """uint8 blobs -> one unsigned integer per weight (int32), low bits first."""
    if bits == 8:
        return packed.astype(np.int32)
    return np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1).astype(np.int32)


@torch.no_grad()
def ort_reference(model: Griffin, recipe: Recipe) -> Griffin:
    """A copy of ``model`` with every weight replaced by the dequantized integers the ONNX graph holds."""
    q = copy.deepcopy(model).float().eval()
    params = dict(q.named_parameters())
    classes = weight_classes(q)

    def fq(w_kn: torch.Tensor, scheme: WeightScheme) -> torch.Tensor:
        block = block_size_for(scheme, w_kn.shape[0])
        return torch.from_numpy(ort_fake_quantize(w_kn.numpy(), scheme.bits, block))

    for cls, scheme in (("linears", recipe.linears), ("embedding", recipe.embedding)):
        if scheme is not None:
            for name in classes[cls]:
                params[name].copy_(fq(params[name].t().contiguous(), scheme).t())
    if recipe.rglru_gates is not None:
        for name in classes["rglru_gates"]:
            w = params[name]  # [h, i, j], used as x @ w[h]
            w.copy_(torch.stack([fq(w[h].contiguous(), recipe.rglru_gates) for h in range(w.shape[0])]))
    return q


# --- graph surgery ---------------------------------------------------------------------------------


def _inits(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {i.name: i for i in graph.initializer}


def _consumers(graph: onnx.GraphProto, value: str) -> list[onnx.NodeProto]:
    return [n for n in graph.node if value in n.input]


def _rename_initializer(graph: onnx.GraphProto, old: str, new: str) -> None:
    for init in graph.initializer:
        if init.name == old:
            init.name = new
    for node in graph.node:
        node.input[:] = [new if x == old else x for x in node.input]


def _matmul_weights(graph: onnx.GraphProto) -> list[tuple[onnx.NodeProto, onnx.TensorProto]]:
    """(node, B initializer) of every MatMul whose B is a constant 2-D float tensor."""
    inits = _inits(graph)
    out = []
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits:
            b = inits[node.input[1]]
            if len(b.dims) == 2 and b.data_type in _FLOAT_TYPES:
                out.append((node, b))
    return out


def _name_weights(graph: onnx.GraphProto, model: Griffin) -> int:
    """Give the exporter's anonymous MatMul weights (``val_123``) their parameter names (``<name>_t``).

    The weights are matched by content (B is the parameter transposed), so the names are
    right by construction; unmatched weights keep their names. Returns how many were named.
    """
    by_hash: dict[str, str] = {}
    for name, p in model.named_parameters():
        if p.ndim == 2 and name != "embed_tokens.weight":
            by_hash[hashlib.sha256(p.detach().float().t().contiguous().numpy().tobytes()).hexdigest()] = name
    named = 0
    taken = {i.name for i in graph.initializer}
    for _, b in _matmul_weights(graph):
        digest = hashlib.sha256(numpy_helper.to_array(b).astype(np.float32).tobytes()).hexdigest()
        param = by_hash.get(digest)
        if param is not None and f"{param}_t" not in taken:
            taken.add(f"{param}_t")
            _rename_initializer(graph, b.name, f"{param}_t")
            named += 1
    return named


def _embedding_gather(graph: onnx.GraphProto, vocab: int, width: int) -> tuple[onnx.NodeProto, onnx.TensorProto]:
    inits = _inits(graph)
    for node in graph.node:
        if node.op_type == "Gather" and node.input[0] in inits and tuple(inits[node.input[0]].dims) == (vocab, width):
            return node, inits[node.input[0]]
    raise RgMobileError("onnx quantization: no embedding Gather [vocab, width] in the graph (exporter changed?)")


def _untie_head(graph: onnx.GraphProto, embed: onnx.TensorProto) -> onnx.NodeProto:
    """Replace MatMul(h, Transpose(embed)) by MatMul(h, lm_head.weight_t); returns the head MatMul."""
    for tr in list(graph.node):
        if tr.op_type != "Transpose" or tr.input[0] != embed.name:
            continue
        users = _consumers(graph, tr.output[0])
        if len(users) != 1 or users[0].op_type != "MatMul" or users[0].input[1] != tr.output[0]:
            continue
        head = users[0]
        head_t = np.ascontiguousarray(numpy_helper.to_array(embed).T)  # [width, vocab]
        graph.initializer.append(numpy_helper.from_array(head_t, HEAD_NAME))
        head.input[1] = HEAD_NAME
        graph.node.remove(tr)
        return head
    raise RgMobileError(
        "onnx quantization: the tied head (MatMul of Transpose(embed_tokens)) was not found (exporter changed?)"
    )


def _split_gates(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Rewrite each block-diagonal Einsum as Split(h) -> h MatMuls -> Concat; returns the new MatMuls."""
    inits = _inits(graph)
    out: list[onnx.NodeProto] = []
    for node in list(graph.node):
        if node.op_type != "Einsum" or node.input[1] not in inits or len(inits[node.input[1]].dims) != 3:
            continue
        eq = helper.get_node_attr_value(node, "equation")
        eq = eq.decode() if isinstance(eq, bytes) else eq
        if eq.replace(" ", "") != EINSUM_GATES:
            raise RgMobileError(f"onnx quantization: unexpected gate Einsum {eq!r} (expected {EINSUM_GATES})")
        w_init = inits[node.input[1]]
        w = numpy_helper.to_array(w_init)  # [h, i, j]
        heads = w.shape[0]
        base = node.name or w_init.name
        parts = [f"{node.output[0]}__x{h}" for h in range(heads)]
        outs = [f"{node.output[0]}__y{h}" for h in range(heads)]
        new = [helper.make_node("Split", [node.input[0]], parts, name=f"{base}_split", axis=-2, num_outputs=heads)]
        for h in range(heads):
            wname = f"{w_init.name}.head{h}"
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w[h]), wname))
            mm = helper.make_node("MatMul", [parts[h], wname], [outs[h]], name=f"{base}_head{h}")
            new.append(mm)
            out.append(mm)
        new.append(helper.make_node("Concat", outs, [node.output[0]], name=f"{base}_concat", axis=-2))
        at = list(graph.node).index(node)
        graph.node.remove(node)
        for k, n in enumerate(new):
            graph.node.insert(at + k, n)
        if not _consumers(graph, w_init.name):
            graph.initializer.remove(w_init)
    return out


@contextlib.contextmanager
def _quiet_ort_quantizer() -> Iterator[None]:
    """The quantizer logs every node at INFO; keep it to warnings while it runs."""
    logger = logging.getLogger(_ORT_LOGGER)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _quantize_nodes(
    proto: onnx.ModelProto, names: set[str], bits: int, block: int, accuracy_level: int
) -> onnx.ModelProto:
    """MatMulNBitsQuantizer (RTN, symmetric, QOperator) on exactly the MatMul nodes ``names``."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    exclude = [n.name for n in proto.graph.node if n.op_type == "MatMul" and n.name not in names]
    with _quiet_ort_quantizer():
        quantizer = MatMulNBitsQuantizer(
            proto, bits=bits, block_size=block, is_symmetric=True, accuracy_level=accuracy_level or None,
            nodes_to_exclude=exclude, op_types_to_quantize=("MatMul",),
        )  # fmt: skip
        quantizer.process()
    result: onnx.ModelProto = quantizer.model.model
    missing = names & {n.name for n in result.graph.node if n.op_type == "MatMul"}
    if missing:
        raise RgMobileError(f"onnx quantization: onnxruntime's quantizer skipped {sorted(missing)[:3]}")
    return result


def _quantized_node(graph: onnx.GraphProto, matmul_name: str, bits: int) -> onnx.NodeProto:
    for n in graph.node:
        if n.op_type == "MatMulNBits" and n.name == f"{matmul_name}_Q{bits}":
            return n
    raise RgMobileError(f"onnx quantization: no MatMulNBits for {matmul_name}")


def _tie_embedding(graph: onnx.GraphProto, gather: onnx.NodeProto, head_q: onnx.NodeProto, bits: int) -> None:
    """Gather(embed) -> GatherBlockQuantized over the head's integers and scales."""
    inits = _inits(graph)
    attrs = {a.name: helper.get_attribute_value(a) for a in head_q.attribute}
    k, n, block = int(attrs["K"]), int(attrs["N"]), int(attrs["block_size"])
    if k % block:
        raise RgMobileError(f"onnx quantization: width {k} is not a multiple of the embedding block {block}")
    packed = numpy_helper.to_array(inits[head_q.input[1]])  # [vocab, k_blocks, blob]
    data = numpy_helper.from_array(packed.reshape(n, k * bits // 8), f"embed_tokens.weight_q{bits}")
    graph.initializer.append(data)
    gbq = helper.make_node(
        "GatherBlockQuantized", [data.name, gather.input[1], head_q.input[2]], list(gather.output),
        name=f"{gather.name}_Q{bits}", domain="com.microsoft",
        bits=bits, block_size=block, gather_axis=0, quantize_axis=1,
    )  # fmt: skip
    at = list(graph.node).index(gather)
    embed = inits[gather.input[0]]
    graph.node.remove(gather)
    graph.node.insert(at, gbq)
    if not _consumers(graph, embed.name):
        graph.initializer.remove(embed)


def _load_external(proto: onnx.ModelProto) -> None:
    """Bring external initializers into memory. Their locations are absolute (the exporter's
    temporary files, exporter/targets/onnx.py), which onnx's own loader refuses."""
    for init in proto.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in init.external_data}
            with open(info["location"], "rb") as f:
                f.seek(int(info.get("offset", 0)))
                init.raw_data = f.read(int(info["length"])) if "length" in info else f.read()
            init.data_location = onnx.TensorProto.DEFAULT
            del init.external_data[:]


def quantize_graph(
    proto: onnx.ModelProto, model: Griffin, recipe: Recipe, accuracy_level: int = 0
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Quantize one exported program graph of ``model`` under ``recipe``; returns (graph, facts)."""
    if not 0 <= accuracy_level <= 4:
        raise RgMobileError(f"--accuracy-level must be 0..4, got {accuracy_level}")
    _load_external(proto)
    cfg = model.config
    graph = proto.graph
    _name_weights(graph, model)
    gather, embed = _embedding_gather(graph, cfg.vocab_size, cfg.width)
    head = _untie_head(graph, embed) if recipe.embedding is not None else None
    gates = _split_gates(graph) if recipe.rglru_gates is not None else []
    special = {n.name for n in gates} | ({head.name} if head is not None else set())
    linears = [n.name for n, _ in _matmul_weights(graph) if n.name not in special] if recipe.linears else []
    # (bits, block) -> MatMul node names, one quantizer pass per group
    groups: dict[tuple[int, int], set[str]] = {}
    classes: dict[str, dict[str, Any]] = {}
    weights = {n.name: b for n, b in _matmul_weights(graph)}
    for cls, scheme, names in (
        ("linears", recipe.linears, linears),
        ("embedding", recipe.embedding, [head.name] if head is not None else []),
        ("rglru_gates", recipe.rglru_gates, [n.name for n in gates]),
    ):
        if scheme is None or not names:
            continue
        blocks: dict[int, int] = {}
        params = 0
        for name in names:
            k = int(weights[name].dims[0])
            block = block_size_for(scheme, k)
            groups.setdefault((scheme.bits, block), set()).add(name)
            blocks[block] = blocks.get(block, 0) + 1
            params += int(np.prod(weights[name].dims))
        classes[cls] = {"bits": scheme.bits, "block_sizes": dict(sorted(blocks.items())),
                        "matmuls": len(names), "params": params}  # fmt: skip
    for (bits, block), group in sorted(groups.items()):
        proto = _quantize_nodes(proto, group, bits, block, accuracy_level)
    graph = proto.graph
    if head is not None:
        assert recipe.embedding is not None
        _tie_embedding(graph, gather, _quantized_node(graph, head.name, recipe.embedding.bits), recipe.embedding.bits)
        classes["embedding"]["op"] = "MatMulNBits (head) + GatherBlockQuantized (embedding), shared integers"
    if "linears" in classes:
        classes["linears"]["op"] = "MatMulNBits"
    if "rglru_gates" in classes:
        classes["rglru_gates"]["op"] = "Einsum split per head: Split -> MatMulNBits x heads -> Concat"
    return proto, _facts(proto, classes, accuracy_level)


def _facts(proto: onnx.ModelProto, classes: dict[str, Any], accuracy_level: int) -> dict[str, Any]:
    import onnxruntime

    floats = [(i.name, int(np.prod(i.dims))) for i in proto.graph.initializer if i.data_type in _FLOAT_TYPES]
    scales = sum(n for name, n in floats if name.endswith("_scales"))
    kept = [(name, n) for name, n in floats if not name.endswith("_scales")]
    largest = max(kept, key=lambda x: x[1], default=("", 0))
    return {
        "tool": f"onnxruntime {onnxruntime.__version__} MatMulNBitsQuantizer (RTN, symmetric, QOperator)",
        "scale_rule": "per block along K: scale = value of largest magnitude / -2^(bits-1); implicit zero point",
        "accuracy_level": accuracy_level,
        "classes": classes,
        "scale_params": scales,
        "kept_fp32_params": sum(n for _, n in kept),
        "largest_fp32_initializer": {"name": largest[0], "params": largest[1]},
    }


# --- sizes -----------------------------------------------------------------------------------------


def _nbits_bytes(k: int, n: int, scheme: WeightScheme) -> tuple[int, int]:
    """(integer bytes, fp32 scale bytes) of a [K, N] weight as MatMulNBits stores it (K padded to blocks)."""
    block = block_size_for(scheme, k)
    kb = -(-k // block)
    return n * kb * block * scheme.bits // 8, 4 * n * kb


def weight_bytes(config: GriffinConfig, recipe: Recipe) -> dict[str, int]:
    """Bytes of the weights of a quantized ONNX artifact, each stored once (the shared weights.bin
    without its 4 KB alignment): integers and fp32 scales per class, fp32 for everything else.

    Analytic, from the parameter shapes of ``config`` (built on the meta device, so the 2B and 9B
    shapes cost nothing); tests/test_quant_onnx.py checks it against exported artifacts.
    """
    with torch.device("meta"):
        model = Griffin(config)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    classes = weight_classes(model)
    out = {"linears": 0, "embedding": 0, "rglru_gates": 0, "scales": 0, "fp32": 0}
    done: set[str] = set()
    schemes = {"linears": recipe.linears, "embedding": recipe.embedding, "rglru_gates": recipe.rglru_gates}
    for cls, scheme in schemes.items():
        if scheme is None:
            continue
        for name in classes[cls]:
            shape = shapes[name]  # linears/embedding [out, in]; gates [h, in, out]
            heads, (n, k) = (1, shape) if len(shape) == 2 else (shape[0], (shape[2], shape[1]))
            ints, scales = _nbits_bytes(k, n, scheme)
            out[cls] += heads * ints
            out["scales"] += heads * scales
            done.add(name)
    out["fp32"] = 4 * sum(math.prod(s) for name, s in shapes.items() if name not in done)
    out["total"] = sum(out.values())
    return out
