"""Streamed ONNX export: the step traced with fake weights, then every weight written one at a time.

For shapes whose fp32 weights do not fit in memory (9B: 34 GB on a 24 GB machine), nothing may
hold the model whole. Here the step is traced under torch's ``FakeTensorMode`` (shapes only),
translated without weights, and run through the same onnxscript optimizer as the in-memory
export with every weight standing in as a graph input, so the optimizer folds nothing that
depends on one. What it would have folded, this module folds itself, by its rules (``_folds``:
onnxscript's size limits, imported): every node whose inputs are all weights or constants (the
weight transposes in front of each MatMul, ``1 + scale`` of the norms, the softplus of the
RG-LRU's recurrent parameter, small conv taps) is evaluated with onnx's reference evaluator on
values read from ``source`` one weight at a time, and its result written to a raw file as an
initializer. Like the optimizer, it leaves the tied head's ``Transpose(embed_tokens)`` (a large
weight with another user), which the quantizer expects to find (quantization/onnx.py).

The result is the in-memory export's graph: the same nodes, and the same initializers (a
transposed weight is named ``<parameter>_t``, the quantizer's name for it); the quantizer then
streams the raw file as it streams torch's external data. tests/test_onnx_stream.py checks that
both exports give bit-identical outputs.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from exporter.errors import RgMobileError

log = logging.getLogger(__name__)

Source = Callable[[str], np.ndarray]  # a graph initializer's name -> its fp32 values (the parameter's shape)
_ALIGN = 4096
_INLINE_BELOW = 1024  # smaller tensors stay in the graph, as torch's external-data save keeps them
_KEEP_BYTES = 64 * 2**20  # folded intermediates up to this size stay in memory while their users need them


def optimize_without_weights(program: object) -> dict[str, tuple[tuple[int, ...], int]]:
    """Run the export's optimizer with every initializer as a graph input; returns their (shape, dtype).

    ``program`` is torch's ``ONNXProgram`` traced with fake weights; its initializers are removed
    from the graph (the serialized graph refers to them by name only).
    """
    graph = program.model.graph  # type: ignore[attr-defined]
    weights = dict(graph.initializers)
    shapes = {}
    for name, value in weights.items():
        shape = tuple(int(d) for d in value.shape)
        shapes[name] = (shape, int(value.dtype.value) if value.dtype is not None else onnx.TensorProto.FLOAT)
    n_inputs = len(graph.inputs)
    graph.initializers.clear()
    for value in weights.values():
        value.const_value = None
        graph.inputs.append(value)
    program.optimize()  # type: ignore[attr-defined]
    del graph.inputs[n_inputs:]
    return shapes


def serialize(program: object) -> onnx.ModelProto:
    """The optimized graph as a ModelProto (its weights only named: see optimize_without_weights)."""
    return ir.serde.serialize_model(program.model)  # type: ignore[attr-defined]


class RawWriter:
    """Appends arrays to one file (page-aligned) and returns initializers that point at them
    (tensors under 1 KB are returned inline)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.written = 0

    def initializer(self, name: str, array: np.ndarray) -> onnx.TensorProto:
        if array.nbytes < _INLINE_BELOW:
            return numpy_helper.from_array(np.ascontiguousarray(array), name)
        self._file.write(b"\0" * (-self._file.tell() % _ALIGN))
        offset = self._file.tell()
        data = np.ascontiguousarray(array)
        data.tofile(self._file)  # no copy: the 9B table alone is 4.2 GB
        self.written += data.nbytes
        init = onnx.TensorProto(name=name, data_type=int(helper.np_dtype_to_tensor_dtype(data.dtype)))
        init.dims.extend(data.shape)
        init.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", str(self.path)), ("offset", str(offset)), ("length", str(data.nbytes))):
            entry = init.external_data.add()
            entry.key, entry.value = key, value
        return init

    def close(self) -> None:
        self._file.close()


def _param_name(graph_name: str) -> str:
    return graph_name.removeprefix("model.")  # the step module holds the Griffin as ``model``


def fold_weights(
    proto: onnx.ModelProto, weights: dict[str, tuple[tuple[int, ...], int]], source: Source, writer: RawWriter
) -> dict[str, int]:
    """Fold every weight-only node of ``proto`` in place and write the initializers; returns counts."""
    graph = proto.graph
    t0 = time.perf_counter()
    nodes = list(graph.node)
    uses: dict[str, int] = {}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for x in node.input:
            uses[x] = uses.get(x, 0) + 1
            users.setdefault(x, []).append(node)
    size = {name: math.prod(shape) for name, (shape, _) in weights.items()}
    lifted = {i.name: i for i in graph.initializer}  # the optimizer's own small constants, with values
    size.update((name, math.prod(i.dims)) for name, i in lifted.items())
    constant = set(weights) | set(lifted)  # values known without running the model
    producer: dict[str, onnx.NodeProto] = {}
    foldable: list[onnx.NodeProto] = []
    for node in nodes:
        ins = [x for x in node.input if x]
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            # stays in the graph; its value feeds the folding
            const = next((a.t for a in node.attribute if a.name == "value"), None)
            size.update((o, math.prod(const.dims) if const is not None else 1) for o in node.output)
        elif ins and all(x in constant for x in ins) and node.domain in ("", "ai.onnx") and _folds(node, size, uses):
            foldable.append(node)
            out = size[ins[0]] if node.op_type == "Transpose" else max(size[x] for x in ins)
            size.update((o, out) for o in node.output)
        else:
            continue
        constant.update(node.output)
        producer.update((o, node) for o in node.output)
    folded, fold_ids = foldable, {id(n) for n in foldable}
    # values the remaining graph reads: they become initializers
    needed = {x for n in nodes if id(n) not in fold_ids for x in n.input} | {o.name for o in graph.output}
    remaining_users = {v: sum(1 for u in users.get(v, []) if id(u) in fold_ids) for v in constant}
    cache: dict[str, np.ndarray] = {}

    def value(name: str) -> np.ndarray:
        if name in cache:
            return cache[name]
        if name in lifted:
            return numpy_helper.to_array(lifted[name])
        if name in weights:
            shape, dtype = weights[name]
            array = source(name)
            if tuple(array.shape) != shape:
                raise RgMobileError(f"streamed export: {name} has shape {tuple(array.shape)}, the graph {shape}")
            array = array.astype(helper.tensor_dtype_to_np_dtype(dtype), copy=False)
        else:
            node = producer[name]
            names = [x for x in node.input if x]
            results = ReferenceEvaluator(node).run(None, {x: value(x) for x in names})
            out = dict(zip(node.output, results, strict=True))
            for o, r in out.items():
                if o != name and r.nbytes <= _KEEP_BYTES:
                    cache[o] = np.asarray(r)
            array = np.asarray(out[name])
        if array.nbytes <= _KEEP_BYTES and remaining_users.get(name, 0) > 1:
            cache[name] = array
        return array

    inits: list[onnx.TensorProto] = []
    rename: dict[str, str] = {}
    for name in [w for w in weights if w in needed] + [o for n in folded for o in n.output if o in needed]:
        array = value(name)
        new = _initializer_name(name, producer, weights)
        rename[name] = new
        inits.append(writer.initializer(new, array))
        del array
    _set_nodes(graph, [n for n in nodes if id(n) not in fold_ids])
    for node in graph.node:
        node.input[:] = [rename.get(x, x) for x in node.input]
    _drop_dead_constants(graph)
    used = {x for n in graph.node for x in n.input} | {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name in used]  # lifted constants only folded nodes read
    del graph.initializer[:]
    graph.initializer.extend(kept)
    graph.initializer.extend(inits)
    log.info(
        "streamed weights: %d initializers (%.2f GB) from %d weights, %d nodes folded, in %.1fs",
        len(inits), writer.written / 1e9, len(weights), len(folded), time.perf_counter() - t0,
    )  # fmt: skip
    return {"initializers": len(inits), "folded_nodes": len(folded), "bytes": writer.written}


def _folds(node: onnx.NodeProto, size: dict[str, int], uses: dict[str, int]) -> bool:
    """Whether the export's optimizer would fold ``node`` had its constant inputs been known: onnxscript's
    rules (its limits, imported): no blacklisted op; no input over the input limit unless the node is
    a Transpose and each such input has no other user; no output over the output limit unless inputs
    used only here are removed by as much."""
    from onnxscript.optimizer import _constant_folding as rules

    if node.op_type in rules.DEFAULT_CONSTANT_FOLD_BLACKLIST:
        return False
    ins = [x for x in node.input if x]
    large = [x for x in ins if size[x] > rules.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT]
    if large and not (node.op_type == "Transpose" and all(uses[x] == 1 for x in large)):
        return False
    out = size[ins[0]] if node.op_type == "Transpose" else max(size[x] for x in ins)
    freed = sum(size[x] for x in ins if uses[x] == 1)
    return out <= rules.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT or freed >= out


def _drop_dead_constants(graph: onnx.GraphProto) -> None:
    """Remove Constant nodes that only the folded nodes read."""
    used = {x for n in graph.node for x in n.input} | {o.name for o in graph.output}
    _set_nodes(graph, [n for n in graph.node if n.op_type != "Constant" or set(n.output) & used])


def _set_nodes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    """Replace the graph's nodes by (copies of) ``nodes``, in order (one pass, not one removal each)."""
    copies = []
    for node in nodes:
        c = onnx.NodeProto()
        c.CopyFrom(node)
        copies.append(c)
    del graph.node[:]
    graph.node.extend(copies)


def _initializer_name(name: str, producer: dict[str, onnx.NodeProto], weights: Mapping[str, object]) -> str:
    """A weight keeps its name; a transposed 2-D weight is ``<parameter>_t`` (the quantizer's name for a
    MatMul's B); any other folded value keeps the optimizer's name for it."""
    node = producer.get(name)
    if node is not None and node.op_type == "Transpose" and node.input[0] in weights:
        return f"{_param_name(node.input[0])}_t"
    return name
