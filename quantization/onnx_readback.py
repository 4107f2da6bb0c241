"""Read the quantized weights back out of a saved ONNX artifact, in our layout (:data:`QuantizedWeights`).

The inverse of quantization/onnx_given.py, done on the files as shipped (each ``.onnx`` and
its external ``weights.bin``), without onnxruntime: every ``MatMulNBits`` integer initializer
is unpacked (u - 2^(bits-1), padding past K dropped) and keyed by our parameter name from its
initializer name (quantization/onnx_given.py ``NAMING``); per_channel scales, repeated per
block in the graph, must agree along the row and become [out, 1]; gate heads are re-stacked
into q [h, out, in], scale [h, out, groups]. The embedding ``GatherBlockQuantized`` must read the
head's integers and scales (tied), so the embedding counts once, as ``embed_tokens.weight``.
The recipe (which class is per_channel or per_group) is the one the graph's metadata records.

Works for MLAS-quantized artifacts too, as long as every weight carries its parameter's name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from exporter.errors import RgMobileError
from quantization.onnx_mlas import dequantize, unpack
from quantization.qweights import QuantizedTensor, QuantizedWeights
from quantization.recipe import Recipe, WeightScheme
from quantization.shipped import Shipped
from quantization.shipped import differences as shipped_differences

if TYPE_CHECKING:
    from exporter.artifact.manifest import Manifest
    from exporter.model.griffin import Griffin

HEAD_NAME = "lm_head.weight_t"  # quantization/onnx.py: the tied head's initializers
EMBEDDING = "embed_tokens.weight"
_GATE = re.compile(r"(?:model\.)?(.+)\.head(\d+)")  # <param>.head<h> (MLAS exports keep the "model." prefix)


def _graph(path: Path) -> tuple[onnx.ModelProto, Callable[[str], np.ndarray]]:
    """(the graph without its external data, a reader of one initializer with its data by name)."""
    proto = onnx.load_model(str(path), load_external_data=False)
    inits = {i.name: i for i in proto.graph.initializer}

    def array(name: str) -> np.ndarray:
        if name not in inits:
            raise RgMobileError(f"{path.name}: {name} is not an initializer")
        return numpy_helper.to_array(inits[name], base_dir=str(path.parent))

    return proto, array


def read_graph_weights(path: Path) -> QuantizedWeights:
    """Every quantized weight one ``.onnx`` file (and its external data) holds, by our parameter name."""
    path = Path(path)
    proto, array = _graph(path)
    meta = {p.key: p.value for p in proto.metadata_props}
    if "rgmobile.quantization" not in meta:
        raise RgMobileError(f"{path.name}: not a quantized rgmobile ONNX graph (no rgmobile.quantization metadata)")
    recipe = Recipe.from_dict(json.loads(meta["rgmobile.quantization"]), f"{path.name} metadata")

    out: QuantizedWeights = {}
    heads: dict[str, dict[int, tuple[np.ndarray, np.ndarray, WeightScheme]]] = {}
    head_u: np.ndarray | None = None
    for node in proto.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        a = _attrs(node)
        k, bits, block = a["K"], a["bits"], a["block_size"]
        if len(node.input) > 3 and node.input[3]:
            raise RgMobileError(f"{path.name}: {node.name} has explicit zero points (rgmobile writes none)")
        base = node.input[1].removesuffix(f"_Q{bits}")
        if node.input[2] != f"{base}_scales":
            raise RgMobileError(f"{path.name}: {node.name}: scales {node.input[2]} do not belong to {node.input[1]}")
        u = unpack(array(node.input[1]), bits).reshape(a["N"], -1)[:, :k]
        scales = np.asarray(array(node.input[2]), np.float32)
        q = (u - 2 ** (bits - 1)).astype(np.int8)
        gate = _GATE.fullmatch(base)
        if base == HEAD_NAME:
            head_u = u
            out[EMBEDDING] = _tensor(EMBEDDING, q, scales, _scheme(recipe.embedding, "embedding", bits, block))
        elif gate is not None:
            heads.setdefault(gate[1], {})[int(gate[2])] = (q, scales, _scheme(recipe.rglru_gates, "gates", bits, block))
        elif base.endswith("_t"):
            param = base.removesuffix("_t")
            out[param] = _tensor(param, q, scales, _scheme(recipe.linears, "linears", bits, block))
        else:
            raise RgMobileError(f"{path.name}: MatMulNBits weight {node.input[1]} names no parameter")
    for param, by_head in heads.items():
        if sorted(by_head) != list(range(len(by_head))):
            raise RgMobileError(f"{path.name}: {param}: gate heads {sorted(by_head)} are not 0..{len(by_head) - 1}")
        parts = [_tensor(f"{param}.head{h}", *by_head[h]) for h in range(len(by_head))]
        out[param] = QuantizedTensor(
            torch.stack([p.q for p in parts]), torch.stack([p.scale for p in parts]), parts[0].scheme, True
        )
    _check_embedding(proto, path, array, head_u)
    return out


def read_artifact_weights(artifact: Path) -> QuantizedWeights:
    """The quantized weights of an ONNX artifact; every program (decode, prefill) must hold the same."""
    from exporter.artifact.manifest import read_manifest

    programs = read_manifest(Path(artifact)).programs
    files = {name: Path(artifact) / p.file for name, p in programs.items()}
    read = {name: read_graph_weights(path) for name, path in files.items()}
    first, *rest = read
    for name in rest:
        expected = read[first]
        if _is_int8_prefill(files[name]):  # its linears are checked against the first graph's integers
            check_int8_prefill(files[first], files[name])
            expected = {k: v for k, v in expected.items() if k in read[name]}
        diff = differences(expected, read[name])
        if diff:
            raise RgMobileError(f"{artifact}: {first} and {name} hold different weights: {diff[0]}")
    return read[first]


def _is_int8_prefill(path: Path) -> bool:
    proto = onnx.load_model(str(path), load_external_data=False)
    return any(p.key == "rgmobile.prefill_int8" and p.value == "true" for p in proto.metadata_props)


def check_int8_prefill(decode: Path, prefill: Path) -> int:
    """Check that every int8 linear of an ``--prefill-int8`` graph is exactly the requantization of the
    decode graph's integers for that weight (quantization/onnx_prefill8.py); returns how many were checked."""
    from quantization.onnx_prefill8 import OP, SUFFIX, requantize

    d_proto, d_array = _graph(decode)
    p_proto, p_array = _graph(prefill)
    nbits = {n.input[1]: n for n in d_proto.graph.node if n.op_type == "MatMulNBits"}
    checked = 0
    for node in p_proto.graph.node:
        if node.op_type != OP:
            continue
        base = node.input[1].removesuffix(SUFFIX)
        src = next((n for name, n in nbits.items() if name.removesuffix(f"_Q{_attrs(n)['bits']}") == base), None)
        if src is None:
            raise RgMobileError(f"{prefill.name}: int8 weight {node.input[1]} has no MatMulNBits in {decode.name}")
        a = _attrs(src)
        packed = d_array(src.input[1]).reshape(a["N"], -1, a["block_size"] * a["bits"] // 8)
        q, scale = requantize(dequantize(packed, d_array(src.input[2]).reshape(a["N"], -1), a["bits"], a["K"]))
        if not np.array_equal(p_array(node.input[1]), q) or not np.array_equal(p_array(node.input[2]), scale):
            raise RgMobileError(
                f"{prefill.name}: int8 weight {node.input[1]} is not the requantization of {src.input[1]} in "
                f"{decode.name}"
            )
        if np.any(p_array(node.input[3])):
            raise RgMobileError(f"{prefill.name}: {node.input[3]}: rgmobile writes zero points of 0")
        checked += 1
    if not checked:
        raise RgMobileError(f"{prefill.name}: marked --prefill-int8 but holds no {OP}")
    return checked


def differences(expected: QuantizedWeights, actual: QuantizedWeights) -> list[str]:
    """One line per weight whose integers, scales (float32) or scheme differ, or that is missing/extra."""
    return shipped_differences(expected, Shipped(actual))


def read_shipped(artifact: Path, manifest: Manifest, model: Griffin) -> list[tuple[str, Shipped]]:
    """What the artifact ships (both programs hold one set of weights): [(file, :class:`Shipped`)]."""
    del model  # the graphs name their weights
    files = " + ".join(manifest.program_files())
    return [(files, Shipped(read_artifact_weights(artifact)))]


# --- helpers ---------------------------------------------------------------------------------------


def _attrs(node: onnx.NodeProto) -> dict[str, int]:
    return {a.name: int(helper.get_attribute_value(a)) for a in node.attribute if a.type == onnx.AttributeProto.INT}


def _scheme(scheme: WeightScheme | None, cls: str, bits: int, block: int) -> WeightScheme:
    """The recipe's scheme of ``cls``, checked against what the node holds."""
    if scheme is None or scheme.bits != bits:
        raise RgMobileError(f"onnx read-back: a {bits}-bit {cls} weight, but the recipe says {scheme}")
    if scheme.granularity == "per_group" and scheme.group_size != block:
        raise RgMobileError(
            f"onnx read-back: {cls} in blocks of {block}, the recipe's group size is {scheme.group_size}"
        )
    return scheme


def _tensor(name: str, q: np.ndarray, scales: np.ndarray, scheme: WeightScheme) -> QuantizedTensor:
    """Our QuantizedTensor of q [N, K], MatMulNBits scales [N, k_blocks] (per_channel: equal along the row)."""
    if scheme.granularity == "per_channel":
        if not np.array_equal(scales, np.repeat(scales[:, :1], scales.shape[1], axis=1)):
            raise RgMobileError(f"onnx read-back: {name}: per_channel, but the blocks of a row have different scales")
        scales = scales[:, :1]
    return QuantizedTensor(torch.from_numpy(q.copy()), torch.from_numpy(scales.copy()), scheme)


def _check_embedding(
    proto: onnx.ModelProto, path: Path, array: Callable[[str], np.ndarray], head_u: np.ndarray | None
) -> None:
    """The embedding GatherBlockQuantized reads the head's integers and scales (still tied)."""
    gathers = [n for n in proto.graph.node if n.op_type == "GatherBlockQuantized"]
    if not gathers:
        return
    head = next((n for n in proto.graph.node if n.op_type == "MatMulNBits" and n.input[1].startswith(HEAD_NAME)), None)
    if len(gathers) != 1 or head is None or head_u is None:
        raise RgMobileError(f"{path.name}: a GatherBlockQuantized without the tied head's MatMulNBits")
    gbq = gathers[0]
    a = _attrs(gbq)
    u = unpack(array(gbq.input[0]), a["bits"])
    if len(gbq.input) > 3 and gbq.input[3]:
        raise RgMobileError(f"{path.name}: {gbq.name} has explicit zero points (rgmobile writes none)")
    same_scales = gbq.input[2] == head.input[2] or np.array_equal(array(gbq.input[2]), array(head.input[2]))
    if a["bits"] != _attrs(head)["bits"] or not np.array_equal(u, head_u) or not same_scales:
        raise RgMobileError(f"{path.name}: the embedding does not read the head's integers and scales (untied)")
