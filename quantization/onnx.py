"""Apply a quantization recipe to the exported fp32 ONNX graphs: ``MatMulNBits`` with onnxruntime's integers.

The graph surgery is ours and the integers are onnxruntime's (its MLAS block quantizer,
the kernel ``MatMulNBitsQuantizer`` calls: quantization/onnx_mlas.py). Not the quantizer
class itself, because it needs the whole fp32 model in memory as a protobuf (10.7 GB
at 2B, next to the torch model that was exported): here every weight is read through a
memory map from the exporter's external data, quantized in chunks, and written once to
a spill file (:class:`SpillStore`) that both graphs (decode, prefill) point at.

Exported from a quantized checkpoint (``given``), the same surgery takes the checkpoint's own
integers and scales instead of MLAS's, unchanged (quantization/onnx_given.py), and
quantization/onnx_readback.py reads them back out of the saved artifact.

Per recipe class (quantization/recipe.py), on each program graph:

  linears      every MatMul with a constant 2-D weight -> ``MatMulNBits`` (bits, block).
  embedding    the dynamo graph reaches the tied head through ``Transpose(embed_tokens)``.
               The head becomes ``MatMulNBits`` over the embedding's rows (B^T is the
               table, so its rows are the head's output channels); the embedding ``Gather``
               becomes a ``GatherBlockQuantized`` reading the *same* integers (its uint8
               layout ``[vocab, width * bits / 8]`` is byte-identical to MatMulNBits'
               ``[vocab, k_blocks, blob]``) and the same scales initializer: still tied,
               quantized once, and stored once in the shared weights file.
  rglru_gates  the block-diagonal gates are ``Einsum("bthi,hij->bthj")`` with a 3-D
               weight; each is rewritten as Split(h) -> h ``MatMulNBits`` -> Concat.

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

import copy
import hashlib
import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
from onnx import helper

from exporter.config import GriffinConfig
from exporter.errors import RgMobileError
from exporter.model.griffin import Griffin
from exporter.targets.onnx_external import external_bytes, external_span
from quantization import onnx_prefill8 as prefill8
from quantization.onnx_mlas import ort_fake_quantize
from quantization.onnx_prefill8 import dynamic_int8_node
from quantization.onnx_store import QuantizedWeight, SpillStore, column_reader, digest, read_rows
from quantization.recipe import Recipe, WeightScheme
from quantization.reference import weight_classes

if TYPE_CHECKING:
    from quantization.onnx_given import GivenIntegers
    from quantization.qweights import GivenQuantization

log = logging.getLogger(__name__)

MLAS_BLOCKS = (256, 128, 64, 32, 16)
EINSUM_GATES = "bthi,hij->bthj"  # exporter/model/layers.py block_diagonal
HEAD_NAME = "lm_head.weight_t"  # the head's quantized initializers: lm_head.weight_t_Q<bits>, _scales
_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def block_size_for(scheme: WeightScheme, k: int) -> int:
    """The MatMulNBits block size that implements ``scheme`` for a weight with K = ``k`` inputs."""
    if scheme.granularity == "per_group":
        assert scheme.group_size is not None
        if scheme.group_size not in MLAS_BLOCKS:
            raise RgMobileError(
                f"onnx quantization: group size {scheme.group_size} cannot be held by MatMulNBits "
                f"(blocks of 16..256); use a group size of one of {sorted(MLAS_BLOCKS)} or per_channel"
            )
        return scheme.group_size
    return next((b for b in MLAS_BLOCKS if k % b == 0), MLAS_BLOCKS[-1])


def check_recipe(recipe: Recipe) -> None:
    """Fail before exporting when onnxruntime cannot implement ``recipe`` (group sizes 16..256)."""
    for scheme in (recipe.linears, recipe.embedding, recipe.rglru_gates):
        if scheme is not None:
            block_size_for(scheme, MLAS_BLOCKS[0])


# --- the eager reference with onnxruntime's integers ----------------------------------------------


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


def _name_weights(graph: onnx.GraphProto, store: SpillStore) -> int:
    """Give the exporter's anonymous MatMul weights (``val_123``) their parameter names (``<name>_t``).

    The weights are matched by content (B is the parameter transposed), so the names are
    right by construction; unmatched weights keep their names. Returns how many were named.
    """
    by_hash = store.param_hashes()
    named = 0
    taken = {i.name for i in graph.initializer}
    for _, b in _matmul_weights(graph):
        param = by_hash.get(digest(b))
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


def _tied_head(graph: onnx.GraphProto, embed: onnx.TensorProto) -> tuple[onnx.NodeProto | None, onnx.NodeProto]:
    """(Transpose(embed), MatMul(h, that)): the tied head as the dynamo exporter writes it. For a small
    table (up to 8192 values) the export's optimizer folds the transpose into a copy of the table:
    then (None, MatMul(h, copy)), the copy found by its values."""
    for tr in graph.node:
        if tr.op_type != "Transpose" or tr.input[0] != embed.name:
            continue
        users = _consumers(graph, tr.output[0])
        if len(users) == 1 and users[0].op_type == "MatMul" and users[0].input[1] == tr.output[0]:
            return tr, users[0]
    vocab, width = (int(d) for d in embed.dims)
    inits = _inits(graph)
    table_t = np.ascontiguousarray(read_rows(embed).T, np.float32)
    for node in graph.node:
        b = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
        if b is not None and tuple(b.dims) == (width, vocab) and np.array_equal(read_rows(b), table_t):
            return None, node
    raise RgMobileError(
        "onnx quantization: the tied head (MatMul of Transpose(embed_tokens)) was not found (exporter changed?)"
    )


def _replace(graph: onnx.GraphProto, old: onnx.NodeProto, new: list[onnx.NodeProto]) -> None:
    at = list(graph.node).index(old)
    graph.node.remove(old)
    for i, n in enumerate(new):
        graph.node.insert(at + i, n)


def _nbits_node(
    graph: onnx.GraphProto, store: SpillStore, a: str, out: str, name: str, base: str, q: QuantizedWeight,
    accuracy_level: int,
) -> onnx.NodeProto:  # fmt: skip
    """MatMulNBits(a, <base>_Q<bits>, <base>_scales) -> out, as onnxruntime's quantizer names it."""
    packed = (q.n, q.k_blocks, q.block * q.bits // 8)
    graph.initializer.append(store.initializer(f"{base}_Q{q.bits}", onnx.TensorProto.UINT8, packed, q.packed))
    graph.initializer.append(store.initializer(f"{base}_scales", onnx.TensorProto.FLOAT, packed[:2], q.scales))
    attrs: dict[str, Any] = {"K": q.k, "N": q.n, "bits": q.bits, "block_size": q.block}
    if accuracy_level:
        attrs["accuracy_level"] = accuracy_level
    inputs = [a, f"{base}_Q{q.bits}", f"{base}_scales"]
    return helper.make_node("MatMulNBits", inputs, [out], name=f"{name}_Q{q.bits}", domain="com.microsoft", **attrs)


def _quantize_head(
    graph: onnx.GraphProto, store: SpillStore, gather: onnx.NodeProto, embed: onnx.TensorProto,
    scheme: WeightScheme, accuracy_level: int, src: GivenIntegers | None = None,
) -> int:  # fmt: skip
    """Head -> MatMulNBits over the embedding's rows; embedding Gather -> GatherBlockQuantized over
    the same integers and scales (stored once). Returns the parameters quantized."""
    tr, head = _tied_head(graph, embed)
    n, k = (int(d) for d in embed.dims)  # [vocab, width] = B^T of the head
    block = block_size_for(scheme, k)
    if k % block:
        raise RgMobileError(f"onnx quantization: width {k} is not a multiple of the embedding block {block}")

    def columns(n0: int, n1: int) -> np.ndarray:  # the table's rows n0:n1, transposed
        return np.asarray(read_rows(embed, n0, n1), np.float32).T

    if src is not None:
        q = src.weight("embed_tokens.weight", None, k, n, block)
    else:
        q = store.quantize(columns, k, n, scheme.bits, block, "embed:" + digest(embed))
    node = _nbits_node(graph, store, head.input[0], head.output[0], head.name, HEAD_NAME, q, accuracy_level)
    _replace(graph, head, [node])
    if tr is not None:
        graph.node.remove(tr)  # a folded copy of the table is dropped with the unused initializers
    data = f"embed_tokens.weight_q{q.bits}"  # the head's bytes seen as [vocab, width * bits / 8]
    graph.initializer.append(store.initializer(data, onnx.TensorProto.UINT8, (n, k * q.bits // 8), q.packed))
    gbq = helper.make_node(
        "GatherBlockQuantized", [data, gather.input[1], node.input[2]], list(gather.output),
        name=f"{gather.name}_Q{q.bits}", domain="com.microsoft",
        bits=q.bits, block_size=block, gather_axis=0, quantize_axis=1,
    )  # fmt: skip
    _replace(graph, gather, [gbq])
    return n * k


def _quantize_gates(
    graph: onnx.GraphProto, store: SpillStore, scheme: WeightScheme, accuracy_level: int, blocks: dict[int, int],
    src: GivenIntegers | None = None,
) -> tuple[int, int]:  # fmt: skip
    """Each block-diagonal Einsum -> Split(h) -> h MatMulNBits -> Concat. Returns (matmuls, params)."""
    inits = _inits(graph)
    matmuls = params = 0
    for node in list(graph.node):
        if node.op_type != "Einsum" or node.input[1] not in inits or len(inits[node.input[1]].dims) != 3:
            continue
        eq = helper.get_node_attr_value(node, "equation")
        eq = eq.decode() if isinstance(eq, bytes) else eq
        if eq.replace(" ", "") != EINSUM_GATES:
            raise RgMobileError(f"onnx quantization: unexpected gate Einsum {eq!r} (expected {EINSUM_GATES})")
        w_init = inits[node.input[1]]
        w = read_rows(w_init)  # [h, i, j]
        heads, k, n = w.shape
        base = node.name or w_init.name
        parts = [f"{node.output[0]}__x{h}" for h in range(heads)]
        outs = [f"{node.output[0]}__y{h}" for h in range(heads)]
        new = [helper.make_node("Split", [node.input[0]], parts, name=f"{base}_split", axis=-2, num_outputs=heads)]
        block = block_size_for(scheme, k)
        param = src.gate_param(w) if src is not None else w_init.name  # given: named by our parameter
        for h in range(heads):
            if src is not None:
                q = src.weight(param, h, k, n, block)
            else:
                wh = w[h]
                key = hashlib.sha256(np.ascontiguousarray(wh, np.float32).tobytes()).hexdigest()
                q = store.quantize(column_reader(wh), k, n, scheme.bits, block, key)
            new.append(_nbits_node(graph, store, parts[h], outs[h], f"{base}_head{h}", f"{param}.head{h}", q,
                                   accuracy_level))  # fmt: skip
        new.append(helper.make_node("Concat", outs, [node.output[0]], name=f"{base}_concat", axis=-2))
        _replace(graph, node, new)
        blocks[block] = blocks.get(block, 0) + heads
        matmuls += heads
        params += heads * k * n
    return matmuls, params


def _quantize_linears(
    graph: onnx.GraphProto, store: SpillStore, scheme: WeightScheme, accuracy_level: int, blocks: dict[int, int],
    src: GivenIntegers | None = None, int8_prefill: bool = False,
) -> tuple[int, int]:  # fmt: skip
    """Every MatMul with a constant 2-D weight -> MatMulNBits, or with ``int8_prefill`` DynamicQuantizeMatMul
    over the same integers requantized (quantization/onnx_prefill8.py). Returns (matmuls, params)."""
    matmuls = params = 0
    for node, b in _matmul_weights(graph):
        w = read_rows(b)  # [K, N]
        k, n = w.shape
        block = block_size_for(scheme, k)
        if src is not None:
            if not b.name.endswith("_t"):  # _name_weights names every parameter's weight <param>_t
                raise RgMobileError(f"onnx export: MatMul weight {b.name} {k}x{n} is no parameter of the model")
            q = src.weight(b.name[: -len("_t")], None, k, n, block)
        else:
            q = store.quantize(column_reader(w), k, n, scheme.bits, block, digest(b))
        if int8_prefill:
            new = dynamic_int8_node(graph, store, node.input[0], node.output[0], node.name, b.name, q)
        else:
            new = _nbits_node(graph, store, node.input[0], node.output[0], node.name, b.name, q, accuracy_level)
        _replace(graph, node, [new])
        blocks[block] = blocks.get(block, 0) + 1
        matmuls += 1
        params += k * n
    return matmuls, params


def _drop_unused(graph: onnx.GraphProto) -> None:
    used = {x for n in graph.node for x in n.input} | {o.name for o in graph.output}
    for init in list(graph.initializer):
        if init.name not in used:
            graph.initializer.remove(init)


def load_external(proto: onnx.ModelProto) -> None:
    """Bring external initializers (absolute locations: the exporter's temporary files and the
    spill file, which onnx's own loader refuses) into memory, for ``--external-data never``."""
    for init in proto.graph.initializer:
        span = external_span(init)
        if span is not None:
            init.raw_data = external_bytes(span)
            init.data_location = onnx.TensorProto.DEFAULT
            del init.external_data[:]


def quantize_graph(
    proto: onnx.ModelProto, model: Griffin, recipe: Recipe, store: SpillStore, accuracy_level: int = 0,
    given: GivenQuantization | None = None, int8_prefill: bool = False,
) -> tuple[onnx.ModelProto, dict[str, Any]]:  # fmt: skip
    """Quantize one exported program graph of ``model`` under ``recipe`` in place; returns (graph, facts).

    ``int8_prefill`` (the prefill graph of ``--prefill-int8``): the block linears become int8
    ``DynamicQuantizeMatMul`` over the integers the decode graph holds, requantized per output
    column (quantization/onnx_prefill8.py); the facts then say so under ``prefill_int8``.

    Quantized weights go to ``store`` (shared by the graphs of one export); fp32 weights are read
    from wherever the graph keeps them (raw data or external files) one at a time. With ``given``
    (a quantized checkpoint) the graph holds exactly its integers and scales (quantization/onnx_given.py)
    and ``recipe`` must be ``given.recipe``; without it, onnxruntime's MLAS quantizer chooses them.
    """
    if not 0 <= accuracy_level <= 4:
        raise RgMobileError(f"--accuracy-level must be 0..4, got {accuracy_level}")
    if int8_prefill and recipe.linears is None:
        raise RgMobileError(f"--prefill-int8 needs a recipe that quantizes the block linears; {recipe.name} does not")
    src = None
    if given is not None:
        from quantization.onnx_given import GivenIntegers

        if recipe != given.recipe:
            raise RgMobileError(f"onnx quantization: recipe {recipe.name} is not the given recipe {given.recipe.name}")
        check_recipe(recipe)
        src = GivenIntegers(given, store, model)
    cfg = model.config
    graph = proto.graph
    _name_weights(graph, store)
    gather, embed = _embedding_gather(graph, cfg.vocab_size, cfg.width)
    classes: dict[str, dict[str, Any]] = {}
    if recipe.embedding is not None:
        block = block_size_for(recipe.embedding, cfg.width)
        params = _quantize_head(graph, store, gather, embed, recipe.embedding, accuracy_level, src)
        op = "MatMulNBits (head) + GatherBlockQuantized (embedding), same integers"
        classes["embedding"] = {"bits": recipe.embedding.bits, "block_sizes": {block: 1}, "matmuls": 1,
                                "params": params, "op": op}  # fmt: skip
    if recipe.rglru_gates is not None:
        blocks: dict[int, int] = {}
        matmuls, params = _quantize_gates(graph, store, recipe.rglru_gates, accuracy_level, blocks, src)
        if matmuls:
            classes["rglru_gates"] = {"bits": recipe.rglru_gates.bits, "block_sizes": dict(sorted(blocks.items())),
                                      "matmuls": matmuls, "params": params,
                                      "op": "Einsum per head: Split -> MatMulNBits x heads -> Concat"}  # fmt: skip
    biases = 0
    if recipe.linears is not None:
        blocks = {}
        matmuls, params = _quantize_linears(graph, store, recipe.linears, accuracy_level, blocks, src, int8_prefill)
        if matmuls:
            classes["linears"] = {"bits": recipe.linears.bits, "block_sizes": dict(sorted(blocks.items())),
                                  "matmuls": matmuls, "params": params, "op": "MatMulNBits"}  # fmt: skip
            if int8_prefill:
                classes["linears"]["op"] = f"{prefill8.OP} (int8, requantized from these integers)"
                biases = prefill8.fold_biases(graph)
    _drop_unused(graph)
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    facts = _facts(proto, classes, accuracy_level)
    if int8_prefill and recipe.linears is not None and "linears" in classes:
        facts["prefill_int8"] = prefill8.facts(classes["linears"]["matmuls"], classes["linears"]["params"],
                                               recipe.linears.bits, biases)  # fmt: skip
    if given is not None and src is not None:
        src.check_all_used()
        facts.update(_given_facts(given, len(src.used)))
    return proto, facts


def _given_facts(given: GivenQuantization, params: int) -> dict[str, Any]:
    """What a graph holding a quantized checkpoint's own integers records instead of the MLAS rule."""
    import onnxruntime

    from quantization.onnx_given import NAMING

    return {
        "tool": f"given integers (quantized checkpoint, method {given.method}) in MatMulNBits / "
        f"GatherBlockQuantized, onnxruntime {onnxruntime.__version__}",
        "scale_rule": "as given; per_channel: the row's scale repeated for every block of the row (exact)",
        "given": True,
        "given_method": given.method,
        "given_params": params,
        "scale_dtype": "float32",
        "zero_point": "implicit 2^(bits-1): stored u = q + 2^(bits-1), q as given",
        "initializers": NAMING,
    }


def _facts(proto: onnx.ModelProto, classes: dict[str, Any], accuracy_level: int) -> dict[str, Any]:
    import onnxruntime

    floats = [(i.name, int(np.prod(i.dims))) for i in proto.graph.initializer if i.data_type in _FLOAT_TYPES]
    scales = sum(n for name, n in floats if name.endswith("_scales"))
    kept = [(name, n) for name, n in floats if not name.endswith("_scales")]
    largest = max(kept, key=lambda x: x[1], default=("", 0))
    return {
        "tool": f"onnxruntime {onnxruntime.__version__} MLAS block quantizer (MatMulNBits, RTN, symmetric, QOperator)",
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
