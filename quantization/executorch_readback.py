"""Read the quantized weights back out of a written ``model.pte``, in our names and layout.

Where they are in the file:

  linears, head  XNNPACK delegate blobs (a small header, then a flatbuffer graph of
                 ExecuTorch's ``backends/xnnpack/serialization/schema.fbs``). Each
                 ``FullyConnected`` node's filter is a quantized tensor value: int8 per output
                 channel (``qcint8``, fp32 scales) or int4 per group (``qbint4``: two values a
                 byte, value + 8, even column in the low nibble; bf16 scales). Its bytes and
                 scales are entries of the program's named data, keyed by the graph.
  embedding      the lookup table on the portable kernels: the program's constant buffer,
                 the int8 table and the fp32 scales the two ``aten::embedding`` kernel
                 calls gather from.
  rglru_gates    fully-connected nodes too, one per head (quantization/executorch_modules.py
                 ``split_gates``), put back together into the block-diagonal layout. Programs
                 whose recipe kept them float (and those exported before the gates were
                 quantized) hold them as fp32 constants passed into the delegates' batch
                 matrix multiplies: read as float weights.

Our names come from the order of the graph: the decode method's fully-connected nodes,
ordered by their debug handle (numbered in the order the step was traced), are the model's
``nn.Linear`` calls in the order a forward pass makes them (recorded with hooks on a model
built on the meta device, its gates split or not: the count of nodes says which), then the
head; float gate operands follow the order of the gate parameters. Every read-back weight's
shape is checked against its parameter's.

The graph blobs are decoded with the ``flatc`` ExecuTorch ships (it serializes them with it).
The whole file is read into memory: meant for checks, not for multi-GB artifacts on a phone.
"""

from __future__ import annotations

import importlib.resources
import json
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from exporter.checkpoint.quantized import unpack_int4
from exporter.config import GriffinConfig
from exporter.errors import RgMobileError
from exporter.model.griffin import Griffin
from quantization.executorch_modules import gate_linears, split_gates
from quantization.qweights import QuantizedTensor, QuantizedWeights
from quantization.recipe import WeightScheme
from quantization.reference import weight_classes
from quantization.shipped import Shipped

if TYPE_CHECKING:
    from exporter.artifact.manifest import Manifest

EMBEDDING = "embed_tokens.weight"
DECODE = "decode"
_XNN_HEADER = 30  # XNNHeader.EXPECTED_LENGTH


@dataclass
class ReadBack:
    """What a .pte holds of a quantized checkpoint, in our layout (quantization/qweights.py).

    ``weights``: every weight held as integers; ``embed_tokens.weight`` is the portable lookup
    table. ``head``: the XNNPACK head's integers (the same as the table's when tied; its
    scales as stored). ``float_weights``: weights held as fp32 values (the RG-LRU gates), in the
    parameter's own layout. ``scale_dtypes``: name -> the dtype the scales are stored in
    (bf16 scales are returned cast to fp32, exactly).
    """

    weights: QuantizedWeights = field(default_factory=dict)
    head: QuantizedTensor | None = None
    float_weights: dict[str, torch.Tensor] = field(default_factory=dict)
    scale_dtypes: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.weights) + len(self.float_weights)


def _decode_graph(blob: bytes, workdir: Path) -> dict[str, Any]:
    """The JSON form of one XNNPACK delegate blob's flatbuffer graph."""
    import executorch.backends.xnnpack.serialization as xnn_serialization
    from executorch.exir._serialize._flatbuffer import _get_flatc_path

    if blob[4:8] != b"XH00":
        raise RgMobileError("executorch read-back: an XNNPACK delegate blob without its header")
    offset = int.from_bytes(blob[10:14], "little")
    size = int.from_bytes(blob[14:18], "little")
    schema = workdir / "schema.fbs"
    if not schema.is_file():
        schema.write_bytes(importlib.resources.files(xnn_serialization).joinpath("schema.fbs").read_bytes())
    graph = workdir / "graph.bin"
    graph.write_bytes(blob[offset : offset + size])
    args = [_get_flatc_path(), "--json", "--strict-json", "--defaults-json", "-o", str(workdir), str(schema),
            "--", str(graph)]  # fmt: skip
    subprocess.run(args, check=True, capture_output=True)
    return json.loads((workdir / "graph.json").read_text())


def _meta_model(config: GriffinConfig) -> Griffin:
    with torch.device("meta"):
        return Griffin(config).eval()


def linear_call_order(model: Griffin) -> list[str]:
    """Our ``nn.Linear`` weight names in the order one step calls them (hooks on ``model``, on meta)."""
    from exporter.model.griffin import positions
    from exporter.model.state import init_state

    config = model.config
    order: list[str] = []
    hooks = [
        m.register_forward_pre_hook(lambda _m, _a, name=name: order.append(f"{name}.weight"))
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear)
    ]
    try:
        with torch.no_grad():
            state = init_state(config, 1, device=torch.device("meta"))
            ids = torch.zeros(1, 1, dtype=torch.int64, device="meta")
            model.hidden(ids, positions(0, 1, 1).to("meta"), state)
    finally:
        for h in hooks:
            h.remove()
    return order


def _named_bytes(pte: Any, key: str) -> bytes:
    entry = pte.named_data.pte_data.get(key) if pte.named_data is not None else None
    if entry is None:
        raise RgMobileError(f"executorch read-back: named data {key[:16]}... missing from the program")
    return bytes(pte.named_data.buffers[entry.buffer_index])


def _constant(prog: Any, tensor: Any) -> torch.Tensor:
    """A constant tensor of the program (its ``data_buffer_idx`` into the constant buffer)."""
    from executorch.exir.schema import ScalarType

    dtypes = {ScalarType.CHAR: torch.int8, ScalarType.FLOAT: torch.float32}
    if tensor.scalar_type not in dtypes:
        raise RgMobileError(f"executorch read-back: unexpected constant dtype {tensor.scalar_type}")
    raw = bytearray(prog.constant_buffer[tensor.data_buffer_idx].storage)
    dtype = dtypes[tensor.scalar_type]
    n = 1
    for s in tensor.sizes:
        n *= s
    return torch.frombuffer(raw, dtype=dtype, count=n).reshape(list(tensor.sizes)).clone()


def _is_constant(value: Any) -> bool:
    return type(value).__name__ == "Tensor" and value.allocation_info is None and value.data_buffer_idx > 0


def _filter(pte: Any, graph: dict[str, Any], value: dict[str, Any]) -> tuple[QuantizedTensor, str]:
    """One fully-connected filter as (integers [out, in] + fp32 scales, stored scale dtype)."""
    tv, params = value["tensor_value"], value["quant_params"]
    out, k = tv["dims"]
    datatype = tv["datatype"]
    data = _named_bytes(pte, graph["constant_data"][tv["constant_buffer_idx"]]["named_key"])
    scale_bytes = _named_bytes(pte, graph["constant_data"][params["scale_buffer_idx"]]["named_key"])
    if datatype == "xnn_datatype_qcint8":
        q = torch.frombuffer(bytearray(data), dtype=torch.int8).reshape(out, k)
        scale = torch.frombuffer(bytearray(scale_bytes), dtype=torch.float32).reshape(out, 1)
        return QuantizedTensor(q.clone(), scale.clone(), WeightScheme(8, "per_channel")), "float32"
    if datatype == "xnn_datatype_qbint4":
        group = int(params["group_size"])
        packed = torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(out, (k + 1) // 2)
        q = unpack_int4(packed)[:, :k]
        scale = torch.frombuffer(bytearray(scale_bytes), dtype=torch.bfloat16).float().reshape(out, k // group)
        return QuantizedTensor(q.contiguous(), scale.clone(), WeightScheme(4, "per_group", group)), "bfloat16"
    raise RgMobileError(f"executorch read-back: fully-connected weights of type {datatype} are not read")


def _check_shape(name: str, got: tuple[int, ...], want: tuple[int, ...]) -> None:
    if got != want:
        raise RgMobileError(f"executorch read-back: {name} reads as {got}, the parameter is {want}")


def _join_heads(out: ReadBack, gate: str, heads: int) -> None:
    """Replace the per-head linears of gate parameter ``gate`` in ``out`` by its block-diagonal weight."""
    parts = [f"{linear}.weight" for linear in gate_linears(gate, heads)]
    pieces = [out.weights.pop(p) for p in parts]
    dtypes = {out.scale_dtypes.pop(p) for p in parts}
    if len({qt.scheme for qt in pieces}) != 1 or len(dtypes) != 1:
        raise RgMobileError(f"executorch read-back: the heads of {gate} are quantized differently")
    q = torch.stack([qt.q for qt in pieces])
    scale = torch.stack([qt.scale for qt in pieces])
    out.weights[gate] = QuantizedTensor(q, scale, pieces[0].scheme, block_diagonal=True)
    out.scale_dtypes[gate] = dtypes.pop()


def read_back(pte_path: Path, config: GriffinConfig) -> ReadBack:
    """Every quantized weight of ``pte_path``'s decode method, back in our names and layout."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    pte = deserialize_pte_binary(Path(pte_path).read_bytes())
    prog = pte.program
    plans = [p for p in prog.execution_plan if p.name == DECODE]
    if not plans:
        raise RgMobileError(f"{pte_path}: no {DECODE!r} method")
    plan = plans[0]
    filters: list[tuple[int, QuantizedTensor, str]] = []  # (debug handle, weight, scale dtype)
    gates: list[tuple[int, torch.Tensor]] = []
    tables: dict[str, torch.Tensor] = {}
    with tempfile.TemporaryDirectory(prefix="rgmobile-pte-") as tmp:
        for chain in plan.chains:
            for instruction in chain.instructions:
                call = instruction.instr_args
                kind = type(call).__name__
                if kind == "KernelCall" and plan.operators[call.op_index].name == "aten::embedding":
                    table = plan.values[call.args[0]].val
                    if _is_constant(table):
                        tables["q" if table.scalar_type.name == "CHAR" else "scale"] = _constant(prog, table)
                if kind != "DelegateCall":
                    continue
                delegate = plan.delegates[call.delegate_index]
                if delegate.id != "XnnpackBackend":
                    continue
                graph = _decode_graph(bytes(prog.backend_delegate_data[delegate.processed.index].data), Path(tmp))
                values = {}
                for v in graph["xvalues"]:
                    u = v["xvalue_union"]
                    values[u.get("tensor_value", u)["id_out"]] = u
                inputs = {vid: i for i, vid in enumerate(graph["input_ids"])}
                for node in graph["xnodes"]:
                    body, handle = node["xnode_union"], int(node["debug_handle"])
                    if node["xnode_union_type"] == "XNNFullyConnected":
                        value = values[body["filter_id"]]
                        if "quant_params" in value and value["tensor_value"]["constant_buffer_idx"]:
                            filters.append((handle, *_filter(pte, graph, value)))
                    elif node["xnode_union_type"] == "XNNBatchMatrixMultiply" and body["input2_id"] in inputs:
                        arg = plan.values[call.args[inputs[body["input2_id"]]]].val
                        if _is_constant(arg) and arg.scalar_type.name == "FLOAT":
                            gates.append((handle, _constant(prog, arg)))
    out = ReadBack()
    model = _meta_model(config)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    gate_names = weight_classes(model)["rglru_gates"]
    if filters:
        filters.sort(key=lambda f: f[0])
        names = linear_call_order(model)
        split = _meta_model(config)
        split_gates(split)
        split_names = linear_call_order(split)
        if len(filters) in (len(split_names), len(split_names) + 1):
            names, split_shapes = split_names, {n: tuple(p.shape) for n, p in split.named_parameters()}
        elif len(filters) in (len(names), len(names) + 1):
            split_shapes = {}
        else:
            raise RgMobileError(
                f"executorch read-back: {len(filters)} integer fully-connected weights; the model has "
                f"{len(names)} linears, or {len(split_names)} with its RG-LRU gates one per head (+ the head)"
            )
        for name, (_, qt, dt) in zip(names, filters, strict=False):
            _check_shape(name, tuple(qt.q.shape), shapes.get(name) or split_shapes[name])
            out.weights[name], out.scale_dtypes[name] = qt, dt
        if split_shapes:
            for gate in gate_names:
                _join_heads(out, gate, config.num_heads)
                _check_shape(gate, tuple(out.weights[gate].q.shape), shapes[gate])
        if len(filters) == len(names) + 1:
            out.head = filters[-1][1]
            _check_shape("head", tuple(out.head.q.shape), (config.vocab_size, config.width))
            out.scale_dtypes["head"] = filters[-1][2]
    if tables:
        if set(tables) != {"q", "scale"} or out.head is None:
            raise RgMobileError("executorch read-back: an integer lookup table without its scales or its head")
        q, scale = tables["q"], tables["scale"]
        _check_shape(EMBEDDING, tuple(q.shape), (config.vocab_size, config.width))
        out.weights[EMBEDDING] = QuantizedTensor(q, scale, out.head.scheme)
        out.scale_dtypes[EMBEDDING] = "float32"
    if gates:
        gates.sort(key=lambda g: g[0])
        if len(gates) != len(gate_names):
            raise RgMobileError(
                f"executorch read-back: {len(gates)} float gate operands, the model has {len(gate_names)} gates"
            )
        for name, (_, w) in zip(gate_names, gates, strict=True):
            _check_shape(name, tuple(w.shape), shapes[name])
            out.float_weights[name] = w
    return out


def read_shipped(artifact: Path, manifest: Manifest, model: Griffin) -> list[tuple[str, Shipped]]:
    """What the artifact's program ships, as :class:`quantization.shipped.Shipped`: [(file, shipped)]."""
    del model  # the read-back builds its own (meta) model from the config
    # Float gates are weights the recipe quantizes only if it names a gate scheme; otherwise
    # they are the model's own fp32 weights, not part of the checkpoint's quantization.
    gates_quantized = (manifest.quantization or {}).get("rglru_gates") is not None
    out = []
    for file in manifest.program_files():
        rb = read_back(Path(artifact) / file, manifest.config)
        shipped = Shipped(
            weights=rb.weights,
            scale_dtypes={n: d for n, d in rb.scale_dtypes.items() if n in rb.weights},
            float_weights=rb.float_weights if gates_quantized else {},
            head=rb.head,
            head_scale_dtype=rb.scale_dtypes.get("head", "float32"),
        )
        out.append((file, shipped))
    return out
