"""ONNX target: ``decode.onnx`` (t = 1) and ``prefill.onnx`` (t = prefill chunk),
or with ``--one-program`` a single ``step.onnx`` for every t from 1 to the chunk.

By default two graphs, each traced for its static t: the RG-LRU scan is unrolled
over t and decode writes its ring slot by a select (exporter/step/step.py).
``--one-program`` traces the step inside ``any_length`` with "seq" symbolic (a
doubling scan, a gather for the ring write): both manifest programs name the one
file, so a runtime opens one session and onnxruntime packs the weights once
instead of once per session. Batch stays symbolic ("batch", as in the IOSpec).

Exported with ``torch.onnx.export(dynamo=True)`` at opset 18 (measured: it
matches eager to ~3e-6; index arithmetic stays int64). Graph I/O names are
exactly the IOSpec names (onnxruntime-genai convention), and the config,
window, vocab, special token ids and source checkpoint are also stored in each
model's ``metadata_props`` (keys ``rgmobile.*``).

Large models (a graph over the 2 GB protobuf limit, or ``external_data="always"``)
keep their weights in one shared ``weights.bin``: both graphs hold the same
weights, so identical tensors are written once and both graphs point at the
same bytes (offset/length), which halves the artifact on disk.

Quantized exports (``--quant int8|int4``, quantization/onnx.py) quantize each graph
after the fp32 export (onnxruntime's MLAS integers, one weight at a time from the
exporter's external data, so a 2B export never holds an fp32 copy; from a quantized
checkpoint, its own integers and scales unchanged instead), and keep their weights
in the shared ``weights.bin`` by default (``external_data="auto"``): tensors with the
same bytes are stored once, including the embedding and the head, which read the same
quantized integers through differently shaped initializers. ``--prefill-int8`` (two graphs) gives
the prefill graph int8 ``DynamicQuantizeMatMul`` linears over the decode integers requantized
(quantization/onnx_prefill8.py); the manifest then records its facts as ``quantization.onnx_prefill``.
That prefill graph serves t = 2..chunk (unless ``--graph-per-length``): its scan is padded to the
chunk and unrolled, so a whole chunk costs what the fixed-t graph costs and a prompt's remainder
is one call (manifest ``min_seq_len``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch

from exporter import __version__
from exporter.artifact.manifest import Program
from exporter.errors import RgMobileError
from exporter.step.iospec import IOSpec, build_iospec
from exporter.step.step import StepModule, any_length, example_inputs
from exporter.targets import TargetResult, program_lengths
from exporter.targets.metadata import common_metadata
from exporter.targets.onnx_external import external_bytes, external_span

if TYPE_CHECKING:
    from exporter.model.griffin import Griffin
    from exporter.targets import TargetOptions, WeightsOf
    from exporter.targets.onnx_stream import Source
    from quantization.qweights import GivenQuantization
    from quantization.recipe import Recipe

log = logging.getLogger(__name__)

OPSET = 18
SHARED_WEIGHTS = "weights.bin"
ONE_PROGRAM = "step"  # the graph's name with --one-program: step.onnx
# A serialized ModelProto must stay under 2 GiB; leave room for the graph itself.
PROTO_LIMIT = 2**31 - 2**26
_ALIGN = 4096  # page-aligned external tensors (ORT can mmap them)
_EXAMPLE_BATCH = 2  # trace with batch 2: batch 1 would be specialised as a constant


def export(
    model: Griffin,
    out_dir: Path,
    options: TargetOptions,
    source: str,
    given: GivenQuantization | None = None,
    weights: WeightsOf | None = None,
) -> TargetResult:
    """Write the ONNX program(s) for ``model`` (loaded from ``source``) into ``out_dir``; with ``weights``,
    ``model`` is a skeleton and each weight is read from ``weights`` while the graph is written."""
    last = options.prefill_logits == "last"
    spec = build_iospec(model.config, last_logits=last)
    lens = program_lengths(options.prefill_chunk)
    any_t = "prefill" in lens and options.prefill_any_length  # the prefill program runs t = 2..chunk
    graphs = {name: GraphLengths(seq) for name, seq in lens.items()}
    if any_t:  # a prefill graph never runs t = 1: the padded scan
        graphs["prefill"] = GraphLengths(options.prefill_chunk, options.prefill_chunk, padded_scan=True)
    if options.one_program:  # decode runs through it too: the doubling scan, cheap at t = 1
        graphs = {ONE_PROGRAM: GraphLengths(options.prefill_chunk, options.prefill_chunk)}
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    mode = options.external_data
    recipe = given.recipe if given is not None else options.quant_recipe
    if options.prefill_int8 and recipe.linears is None:  # an fp32 checkpoint without --quant
        raise RgMobileError("--prefill-int8: the checkpoint is not quantized and --quant is none; pass --quant int4")
    external = mode == "always" or (mode == "auto" and (weight_bytes > PROTO_LIMIT or recipe.is_quantized))
    streamed: Source | None = None
    if weights is not None:  # the graph's initializers are the step module's: model.<parameter>

        def streamed(graph_name: str) -> np.ndarray:
            return weights(graph_name.removeprefix("model.")).float().numpy()

    protos: dict[str, onnx.ModelProto] = {}
    facts: dict[str, dict[str, Any]] = {}
    store = None
    if recipe.is_quantized:
        from quantization.onnx import SpillStore, load_external, quantize_graph

        store = SpillStore(out_dir / ".quantized.bin", model)
    try:
        for name, graph in graphs.items():
            lengths = graph.describe()
            log.info("exporting %s (t=%s) to ONNX opset %d", name, lengths, OPSET)
            # quantized graphs always start from external data: the quantizer memory-maps the weights
            raw = out_dir / f".{name}.raw"
            if streamed is not None:
                protos[name] = _export_graph_streamed(model, graph, spec, raw, last, streamed)
            else:
                protos[name] = _export_graph(model, graph, spec, raw, external or store is not None, last)
            _strip_node_metadata(protos[name])
            meta = metadata(model, options, source, name, lengths)
            if store is not None:
                log.info("quantizing %s with recipe %s", name, recipe.name)
                int8_prefill = options.prefill_int8 and name == "prefill"
                protos[name], facts[name] = quantize_graph(
                    protos[name], model, recipe, store, options.accuracy_level, given, int8_prefill
                )
                if int8_prefill:
                    meta["rgmobile.prefill_int8"] = "true"  # linears without MatMulNBits (onnx_readback)
                meta["rgmobile.quantization"] = json.dumps(recipe.to_dict(), sort_keys=True)
                if given is not None:  # the checkpoint's integers, not MLAS's (read back by onnx_readback)
                    meta["rgmobile.quantization.given"] = "true"
                if not external:
                    load_external(protos[name])
            elif streamed is not None and not external:  # a small streamed graph keeps its weights inline
                from quantization.onnx import load_external

                load_external(protos[name])
            _set_metadata(protos[name], meta)
        if store is not None:
            store.close()
        if external:
            write_shared(protos, out_dir, SHARED_WEIGHTS)
        else:
            for name, proto in protos.items():
                onnx.save_model(proto, str(out_dir / f"{name}.onnx"))
    finally:
        if store is not None:
            store.remove()
        for name in graphs:
            _cleanup_raw(out_dir / f".{name}.raw")
    for name in protos:
        _check(out_dir / f"{name}.onnx", spec)
    file_of = {name: f"{ONE_PROGRAM if options.one_program else name}.onnx" for name in lens}
    # a prefill graph with a symbolic t also runs a prompt's remainder (2..chunk); t = 1 stays decode's
    low = {"prefill": 2} if any_t else {}
    return TargetResult(
        programs={name: Program(file_of[name], seq, min_seq_len=low.get(name)) for name, seq in lens.items()},
        precision=recipe.name if recipe.is_quantized else "fp32",
        quantization=_quantization(recipe, facts, graphs) if recipe.is_quantized else None,
        details={
            "opset": OPSET,
            "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
            "onnx_version": onnx.__version__,
            "external_data": SHARED_WEIGHTS if external else None,
            "streamed_weights": streamed is not None,  # traced with fake weights, each written one at a time
            "symbolic_dims": {"batch": "dynamic", "seq": _seq_dims(options)},
        },
    )


def _seq_dims(options: TargetOptions) -> str:
    if options.one_program:
        return f"1..{options.prefill_chunk}, one graph for every program"
    if options.prefill_chunk > 1 and options.prefill_any_length:
        return f"decode 1, prefill 2..{options.prefill_chunk} (programs[*].min_seq_len..seq_len)"
    return "fixed per program (programs[*].seq_len)"


def _quantization(recipe: Recipe, facts: dict[str, dict[str, Any]], graphs: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``quantization``: the recipe, the first graph's facts, and those of an int8 prefill graph."""
    out = {**recipe.to_dict(), "onnx": facts[next(iter(graphs))]}
    if "prefill_int8" in facts.get("prefill", {}):
        out["onnx_prefill"] = facts["prefill"]
    return out


@dataclass(frozen=True)
class GraphLengths:
    """The step lengths one graph serves: traced at ``seq`` tokens, for that t only (``max_len``
    None) or for every t up to ``max_len`` (its token dim symbolic), the RG-LRU scan then padded
    to ``max_len`` and unrolled (``padded_scan``: a prefill graph) or doubling (a graph decode runs
    too; exporter.model.layers.linear_scan)."""

    seq: int
    max_len: int | None = None
    padded_scan: bool = False

    def describe(self) -> str:
        return str(self.seq) if self.max_len is None else f"1..{self.max_len}"


def _trace(model: Griffin, graph: GraphLengths, spec: IOSpec, last_logits: bool, optimize: bool) -> Any:
    """torch's ONNXProgram of the step for ``graph``'s step lengths."""
    step = StepModule(model.eval(), last_logits).eval()
    inputs = example_inputs(model, graph.seq, batch=_EXAMPLE_BATCH)
    batch = torch.export.Dim("batch", min=1, max=1024)
    tokens: dict[int, Any] = {0: batch}
    if graph.max_len is not None:
        # traced at t = max_len >= 2: an example of 1 would be specialised as a constant
        tokens[1] = torch.export.Dim("seq", min=1, max=graph.max_len)
    dynamic = (tokens, tokens, tuple({0: batch} for _ in inputs[2:]))
    lengths = (
        any_length(model, graph.max_len, graph.padded_scan) if graph.max_len is not None else contextlib.nullcontext()
    )
    with torch.no_grad(), warnings.catch_warnings(), lengths:
        # Known, harmless: torch's pytree deprecation and the duplicate "batch" axis rename notice.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*axis name: (batch|seq) will not be used.*")
        program = torch.onnx.export(
            step,
            inputs,
            dynamo=True,
            opset_version=OPSET,
            dynamic_shapes=dynamic,
            input_names=spec.input_names,
            output_names=spec.output_names,
            optimize=optimize,
            verbose=False,
        )
    assert program is not None  # dynamo=True always returns the program
    return program


def _export_graph(
    model: Griffin, graph: GraphLengths, spec: IOSpec, raw_dir: Path, external: bool, last_logits: bool
) -> onnx.ModelProto:
    """The step traced for ``graph``'s step lengths, with the model's weights."""
    program = _trace(model, graph, spec, last_logits, optimize=True)
    if not external:
        return program.model_proto
    # Let torch write the weights beside the graph, then load the graph without them:
    # the raw bytes are regrouped into the shared file by write_shared.
    raw_dir.mkdir(parents=True, exist_ok=True)
    program.save(str(raw_dir / "model.onnx"), external_data=True)
    proto = onnx.load_model(str(raw_dir / "model.onnx"), load_external_data=False)
    for init in proto.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in init.external_data}
            info["location"] = str(raw_dir / info["location"])
            _set_external(init, info)
    return proto


def _export_graph_streamed(
    model: Griffin, graph: GraphLengths, spec: IOSpec, raw_dir: Path, last_logits: bool, source: Source
) -> onnx.ModelProto:
    """The same graph traced with fake weights; each weight then read from ``source`` and written to
    ``raw_dir`` one at a time (exporter/targets/onnx_stream.py)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from exporter.model.griffin import Griffin
    from exporter.targets.onnx_stream import RawWriter, fold_weights, optimize_without_weights, serialize

    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = Griffin(model.config).eval()
        program = _trace(fake, graph, spec, last_logits, optimize=False)
    weights = optimize_without_weights(program)
    proto = serialize(program)
    del program, fake
    writer = RawWriter(raw_dir / "weights.raw")
    try:
        fold_weights(proto, weights, source, writer)
    finally:
        writer.close()
    return proto


def _strip_node_metadata(proto: onnx.ModelProto) -> None:
    """Drop the exporter's per-node debug metadata (fx node, stack trace with local paths,
    name scopes): about 1.5 KB per node, most of a graph file once the weights are external."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""


def _set_external(init: onnx.TensorProto, info: dict[str, str]) -> None:
    del init.external_data[:]
    for key, value in info.items():
        entry = init.external_data.add()
        entry.key, entry.value = key, value
    init.data_location = onnx.TensorProto.EXTERNAL


def _tensor_bytes(init: onnx.TensorProto) -> bytes | None:
    """Raw bytes of an initializer stored in raw_data or (absolute) external data; None otherwise."""
    span = external_span(init)
    if span is not None:
        return external_bytes(span)
    if init.HasField("raw_data") and len(init.raw_data) >= 1024:
        return bytes(init.raw_data)
    return None


def write_shared(protos: dict[str, onnx.ModelProto], out_dir: Path, data_name: str) -> None:
    """Move every large initializer into one file; identical tensors are stored once."""
    seen: dict[tuple[str, int], tuple[int, int]] = {}
    written = shared = 0
    with open(out_dir / data_name, "wb") as data:
        for name, proto in protos.items():
            for init in proto.graph.initializer:
                blob = _tensor_bytes(init)
                if blob is None:
                    continue
                # bytes only: a quantized embedding shares its bytes with the head under another shape
                key = (hashlib.sha256(blob).hexdigest(), len(blob))
                if key in seen:
                    shared += len(blob)
                else:
                    pad = -data.tell() % _ALIGN
                    data.write(b"\0" * pad)
                    seen[key] = (data.tell(), len(blob))
                    data.write(blob)
                    written += len(blob)
                offset, length = seen[key]
                init.ClearField("raw_data")
                _set_external(init, {"location": data_name, "offset": str(offset), "length": str(length)})
            onnx.save_model(proto, str(out_dir / f"{name}.onnx"))
    log.info("external data %s: %d bytes written, %d bytes shared between graphs", data_name, written, shared)


def _cleanup_raw(raw_dir: Path) -> None:
    if raw_dir.exists():
        for p in raw_dir.iterdir():
            p.unlink()
        raw_dir.rmdir()


def metadata(model: Griffin, options: TargetOptions, source: str, program: str, seq: str) -> dict[str, str]:
    """The ``rgmobile.*`` metadata_props of one graph (strings, as ONNX requires); ``seq``: "32" or "1..32"."""
    return {**common_metadata(model, options, source), "rgmobile.program": program, "rgmobile.seq_len": seq}


def _set_metadata(proto: onnx.ModelProto, meta: dict[str, str]) -> None:
    proto.producer_name = "rgmobile"
    proto.producer_version = __version__
    proto.doc_string = (
        f"RecurrentGemma/Griffin explicit-state step, {meta['rgmobile.program']}: "
        f"{meta['rgmobile.seq_len']} token(s) per call"
    )
    props: dict[str, Any] = {p.key: p.value for p in proto.metadata_props}
    props.update(meta)
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)


def _check(path: Path, spec: IOSpec) -> None:
    """onnx.checker on the saved file (path form: works with external data) and exact I/O names."""
    onnx.checker.check_model(str(path))
    proto = onnx.load_model(str(path), load_external_data=False)
    ins = [i.name for i in proto.graph.input]
    outs = [o.name for o in proto.graph.output]
    if ins != spec.input_names or outs != spec.output_names:
        raise RuntimeError(f"{path.name}: graph I/O names differ from the IOSpec: {ins} -> {outs}")


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata_props of an ONNX file (for tests and tools)."""
    proto = onnx.load_model(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}
