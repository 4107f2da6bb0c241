"""ExecuTorch target: one ``model.pte`` holding the methods ``prefill`` (t = chunk) and ``decode`` (t = 1),
and ``prefill_<t>`` for each of ``--prefill-lengths`` (a prompt's remainder in a few calls).

The methods are lowered together (``to_edge_transform_and_lower`` on a dict
of ExportedPrograms) with the XNNPACK partitioner, so they share one copy of
the weights: XNNPACK keeps them in the program's named data store, keyed by
content, and the portable kernels' constants live in one constant buffer
(:func:`pte_breakdown` measures it).

fp32 exports keep the weights in a data file beside the program, ``model.pte`` +
``model.ptd`` (ExecuTorch's external constants; the constants folded per method
stay in the .pte, see ``_PER_METHOD_CONSTANT``): there the portable ``embedding``
lookup's table and XNNPACK's head weight are the same bytes in one named data store,
which stores them once. Inside the .pte they cannot be shared: the runtime resolves
an external constant only from a separate data file (ExecuTorch 1.5.1 refuses the
program's own named data: "external_data_map is null"). Quantized exports stay one
.pte: the lookup's 4/8-bit table and XNNPACK's packed head are different bytes, and
ExecuTorch's Android ``Module`` loads a .pte alone (no data file).

Each method's I/O is the IOSpec in order (``input_ids, position_ids,
past_key_values.*`` -> ``logits, present.*``); ExecuTorch methods have positional
I/O, so the manifest's ``io`` is what maps names to positions. Shapes are static: batch 1, t fixed per method.

The model's metadata is also stored as constant methods, with the keys
ExecuTorch's LLM runner reads (extension/llm/runner/constants.h:
``get_vocab_size``, ``get_bos_id``, ``get_eos_ids``, ``get_max_seq_len``,
``get_max_context_len``, ``use_kv_cache``, ``enable_dynamic_shape``) plus ours
(``get_window``, ``get_prefill_chunk``, ...), as optimum-executorch and the
Llama export do.

Deliberate changes to the traced step, all numerically faithful:
  * the tied head is ``F.linear(hidden, embedding)``. Griffin's
    ``matmul(hidden, embedding.t())`` lowers to a delegated transpose of the
    whole table on every step followed by a *portable* ``mm`` (the partitioner
    will not take an ``mm`` whose weight is a runtime tensor). As a linear it is
    one XNNPACK fully-connected op, reading the table the portable ``embedding``
    lookup reads (stored once in ``model.ptd`` at fp32; twice in a quantized .pte).
  * ``gelu(approximate="tanh")`` is decomposed before lowering: the XNNPACK
    delegate computes the *erf* GELU for it (max difference 4.7e-4, the
    "XNNPACK fp32 is ~1e-4 off" once taken for rounding). Decomposed, it runs as
    tanh/mul/add, which XNNPACK delegates exactly.
  * attention and RMSNorm are traced in their XNNPACK-friendly forms
    (exporter/targets/executorch_layers.py) and whatever depends only on weights is folded at export
    (:func:`fold_constants`). At the 2B width (3-layer slice, int4) these took a decode
    step from 19 delegate calls + 115 portable ops to 10 + 68, and the portable kernels'
    share of a step from ~13 ms (a ``where`` over each KV ring) to under 1 ms.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from exporter import __version__
from exporter.artifact.manifest import Program
from exporter.config import GriffinConfig
from exporter.errors import RgMobileError
from exporter.fsio import atomic_file
from exporter.model.griffin import positions
from exporter.model.state import flatten_state, init_state, unflatten_state
from exporter.step.dtypes import dtype
from exporter.step.iospec import IOSpec, build_iospec
from exporter.step.step import StepModule, head_positions
from exporter.targets import TargetResult, program_lengths
from exporter.targets.executorch_layers import xnnpack_friendly
from exporter.upstream.executorch_1_5_1 import SPILL_MIN_BYTES, lean_xnnpack_preprocess

if TYPE_CHECKING:
    from executorch.exir import EdgeProgramManager

    from exporter.model.griffin import Griffin
    from exporter.targets import TargetOptions, WeightsOf
    from quantization.qweights import GivenQuantization

log = logging.getLogger(__name__)

PTE_NAME = "model.pte"
DATA_TAG = "model"  # ExecuTorch names the data file after its tag: model.ptd
DATA_NAME = f"{DATA_TAG}.ptd"
DECODE, PREFILL = "decode", "prefill"
# The state does not grow with context, so no architectural limit; ExecuTorch's
# runner treats get_max_context_len as a hard stop, so it gets the int32 maximum.
UNBOUNDED_CONTEXT = 2**31 - 1
# Graph bookkeeping nodes that get_delegation_info counts but that run no kernel.
_NOT_OPS = {"getitem", "alloc"}


class ExecuTorchStep(StepModule):
    """The step of exporter/step/step.py with the tied head written as a linear (see module doc)."""

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, *state: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        model = self.model
        hidden, new_state = model.hidden(input_ids, position_ids, unflatten_state(model.config, list(state)))
        logits = nn.functional.linear(head_positions(hidden, self.last_logits), model.embed_tokens.weight)
        cap = model.config.logits_soft_cap  # same soft-cap as Griffin.logits
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return (logits, *flatten_state(new_state))


def export_programs(
    model: Griffin, seq_lens: dict[str, int], step: nn.Module | None = None, last_logits: bool = False
) -> dict[str, torch.export.ExportedProgram]:
    """``torch.export`` of one step per method (static batch 1 and t), GELU and einsum decomposed,
    in the XNNPACK-friendly forms of :func:`xnnpack_friendly`, constants folded.

    ``step``: the module to trace (a torchao-quantized step, quantization/executorch.py);
    default the fp32 :class:`ExecuTorchStep` (``last_logits``: its head on the last position only).
    Example inputs come from ``model.config`` (fp32 state): ``model`` may have been quantized in
    place, its embedding no longer a table.
    """
    from torch._decomp import get_decompositions

    step = ExecuTorchStep(model.eval(), last_logits) if step is None else step.eval()
    # einsum too, so that fold_constants sees (and folds) the permutes of its weight operand.
    decompositions = {
        **get_decompositions([torch.ops.aten.gelu.default]),
        torch.ops.aten.einsum.default: torch.export.default_decompositions()[torch.ops.aten.einsum.default],
    }
    out = {}
    with torch.no_grad(), xnnpack_friendly(step):
        for name, seq in seq_lens.items():
            ids = torch.zeros(1, seq, dtype=torch.int64)
            example = (ids, positions(0, seq, 1), *flatten_state(init_state(model.config, 1)))
            ep = torch.export.export(step, example, strict=False)
            ep = ep.run_decompositions(decompositions)  # only these; the rest stays for the partitioner
            out[name] = fold_constants(ep)
    return out


# Namespaces of the quantization ops: a weight's dequantize must stay in the graph, next to its
# linear, for XNNPACK to take the pair as one integer GEMM (folded, it would be an fp32 weight).
_KEEP_NAMESPACES = ("torchao", "quantized_decomposed")


def fold_constants(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Compute once, at export, what depends only on weights and constants (ExecuTorch's pass).

    Without it every decode step recomputes them: the permutes of each RG-LRU gate's
    [h, i, j] weight that ``einsum`` traces to (two weight-sized copies per gate per step),
    ``softplus(a_param)``, the Conv1D taps ``weight[:, 0, k]``, RoPE's inverse frequencies,
    ``arange`` results and dtype casts of scalar constants. Quantization ops are never folded.
    """
    from executorch.exir.passes.constant_prop_pass import constant_prop_pass

    keep = {
        n.target
        for n in ep.graph.nodes
        if n.op == "call_function" and getattr(n.target, "namespace", "") in _KEEP_NAMESPACES
    }
    keep.add(torch.ops.aten.full.default)  # as ExecuTorch's default: a fill is cheaper than its constant
    return constant_prop_pass(ep, custom_skip_targets=keep)


def constant_methods(config: GriffinConfig, prefill_chunk: int) -> dict[str, Any]:
    """Metadata stored as ExecuTorch constant methods (LLM-runner keys first, then rgmobile's)."""
    return {
        "get_vocab_size": config.vocab_size,
        "get_bos_id": config.bos_id,
        "get_eos_ids": [config.eos_id],
        "get_max_seq_len": prefill_chunk,  # most tokens one call takes
        "get_max_context_len": UNBOUNDED_CONTEXT,
        "use_kv_cache": True,
        "use_sdpa_with_kv_cache": False,
        "enable_dynamic_shape": False,
        "get_n_layers": config.num_layers,
        "get_pad_id": config.pad_id,
        "get_window": config.window,
        "get_prefill_chunk": prefill_chunk,
        "get_n_state_tensors": 2 * config.num_layers,
        "get_batch_size": 1,
    }


def lower(
    programs: dict[str, torch.export.ExportedProgram],
    metadata: dict[str, Any],
    xnnpack: bool = True,
    spill_dir: Path | None = None,
    spill_min_bytes: int = SPILL_MIN_BYTES,
) -> EdgeProgramManager:
    """Edge programs lowered together (shared weights); ``xnnpack=False`` keeps everything portable.

    ``spill_dir``: XNNPACK's serialized weights of at least ``spill_min_bytes`` go to files there
    instead of memory (ExecuTorch's own ``FileBackedData``, streamed into the .pte when it is
    written). The directory must outlive the returned program's serialization.
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    partitioner = [XnnpackPartitioner()] if xnnpack else None
    with lean_xnnpack_preprocess(spill_dir, spill_min_bytes):
        return to_edge_transform_and_lower(programs, partitioner=partitioner, constant_methods=metadata)


def tag_weights_external(programs: dict[str, torch.export.ExportedProgram]) -> None:
    """Send every weight and constant the XNNPACK delegate serializes to the ``model.ptd`` data file.

    XNNPACK reads the tag from each constant placeholder's ``custom`` metadata and keys its blobs
    by content, so per-method constants are safe there; the portable kernels' constants are
    tagged at ``to_executorch`` (:func:`_external_config`).
    """
    from torch.export.graph_signature import InputKind

    kinds = (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)
    for ep in programs.values():
        constants = {s.arg.name for s in ep.graph_signature.input_specs if s.kind in kinds}
        for node in ep.graph.nodes:
            if node.op == "placeholder" and node.name in constants:
                node.meta.setdefault("custom", {})["delegate_constant_tag"] = DATA_TAG


# Constants that constant_prop_pass creates are named _prop_tensor_constant<N> per method: the same
# name is another tensor in the other method, and a data file is keyed by name (ExecuTorch loads
# the wrong tensor, "Scalar type mismatch"). They stay in the .pte; weights have one name everywhere.
_PER_METHOD_CONSTANT = "_prop_tensor_constant"


def _external_tag(node: torch.fx.Node) -> str | None:
    return None if _PER_METHOD_CONSTANT in node.name else DATA_TAG


def _external_config() -> Any:
    """``to_executorch`` config that puts the portable kernels' weights in the ``model.ptd`` data file."""
    from executorch.exir import ExecutorchBackendConfig

    return ExecutorchBackendConfig(external_constants=_external_tag)


def delegation_summary(edge: EdgeProgramManager, method: str) -> dict[str, Any]:
    """Which ops of ``method`` XNNPACK took and which run on portable kernels (counts per op)."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(edge.exported_program(method).graph_module)
    delegated: Counter[str] = Counter()
    portable: Counter[str] = Counter()
    for op, stats in info.delegation_by_operator.items():
        if op in _NOT_OPS:
            continue
        if stats.delegated:
            delegated[op] += stats.delegated
        if stats.non_delegated:
            portable[op] += stats.non_delegated
    return {
        "delegates": info.num_delegated_subgraphs,
        "delegated_ops": sum(delegated.values()),
        "portable_ops": sum(portable.values()),
        "delegated": dict(sorted(delegated.items())),
        "portable": dict(sorted(portable.items())),
    }


def pte_breakdown(path: Path, data_file: Path | None = None) -> dict[str, int]:
    """Bytes of a .pte by kind: XNNPACK weights (named data), portable constants, delegate graphs,
    and ``data_file``: the size of the program's ``.ptd`` (0 without one).

    Reads only the header and the program flatbuffer (the segments are sized from the
    program's segment table, not loaded): the whole-file parse would hold ~3 copies of a
    multi-GB .pte in memory.
    """
    # Private but pinned (executorch==1.5.1): the same parser ExecuTorch's tools use.
    from executorch.exir._serialize._program import (
        _flatbuffer_to_program,
        _get_extended_header,
        deserialize_pte_binary,
    )
    from executorch.exir.schema import DataLocation

    path = Path(path)
    data_bytes = data_file.stat().st_size if data_file is not None else 0
    with path.open("rb") as f:
        eh = _get_extended_header(f.read(64))
        if eh is None:  # no segments: everything is inline in the flatbuffer
            f.seek(0)
            pte = deserialize_pte_binary(f.read())
            named = sum(len(b) for b in pte.named_data.buffers) if pte.named_data is not None else 0
            return {
                "file": path.stat().st_size,
                "xnnpack_weights": named,
                "portable_constants": sum(len(b.storage) for b in pte.program.constant_buffer),
                "delegate_graphs": sum(len(d.data) for d in pte.program.backend_delegate_data),
                "data_file": data_bytes,
            }
        f.seek(0)
        prog = _flatbuffer_to_program(f.read(eh.program_size))
    sizes = [s.size for s in prog.segments]
    named = sum(sizes[i] for i in {entry.segment_index for entry in prog.named_data or ()})
    constants = sum(len(b.storage) for b in prog.constant_buffer)
    if prog.constant_segment is not None and prog.constant_segment.offsets:
        constants += sizes[prog.constant_segment.segment_index] - prog.constant_segment.offsets[0]
    delegates = sum(len(d.data) for d in prog.backend_delegate_data) + sum(
        sizes[d.processed.index]
        for plan in prog.execution_plan
        for d in plan.delegates
        if d.processed.location == DataLocation.SEGMENT
    )
    return {"file": path.stat().st_size, "xnnpack_weights": named, "portable_constants": constants,
            "delegate_graphs": delegates,
            "data_file": data_bytes}  # fmt: skip


def check_methods(path: Path, spec: IOSpec, seq_lens: dict[str, int], data_file: Path | None = None) -> None:
    """Load the written .pte (with its data file) and check every method's positional I/O against the IOSpec."""
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(str(path), data_path=None if data_file is None else str(data_file))
    for name, seq in seq_lens.items():
        if name not in program.method_names:
            raise RuntimeError(f"{path.name}: method {name!r} missing; has {sorted(program.method_names)}")
        meta = program.metadata(name)
        if meta.num_inputs() != len(spec.inputs) or meta.num_outputs() != len(spec.outputs):
            n_in, n_out = meta.num_inputs(), meta.num_outputs()
            raise RuntimeError(f"{path.name}:{name}: {n_in} -> {n_out} tensors, the IOSpec differs")
        pairs = [(s, meta.input_tensor_meta(i)) for i, s in enumerate(spec.inputs)]
        pairs += [(s, meta.output_tensor_meta(i)) for i, s in enumerate(spec.outputs)]
        for s, info in pairs:
            if tuple(info.sizes()) != s.concrete_shape(1, seq) or info.dtype() != dtype(s.dtype).executorch:
                raise RuntimeError(f"{path.name}:{name}: {s.name} is {tuple(info.sizes())}, IOSpec says {s.shape}")


def _write_data_file(et_program: Any, dest: Path) -> None:
    """Write the program's one data file (tag ``model``) to ``dest`` atomically."""
    data = et_program._tensor_data or {}  # private but pinned (executorch==1.5.1): {tag: serialized .ptd}
    if set(data) != {DATA_TAG}:
        raise RuntimeError(f"ExecuTorch wrote data files {sorted(data)}; expected only {DATA_TAG!r}")
    with atomic_file(dest) as tmp, tmp.open("wb") as f:
        data[DATA_TAG].write_to_file(f)


def _malloc_trim() -> None:
    """Hand the heap's free pages back to the OS (glibc): lowering frees many weight-sized blobs."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):  # not glibc
        pass


def _stage(stages: dict[str, int], name: str) -> None:
    """Record (and log) the process RSS after an export stage: where the memory of an export goes."""
    from exporter.resources import current_rss_bytes

    gc.collect()  # the previous stage's graphs and programs hold tensors in reference cycles
    _malloc_trim()
    rss = current_rss_bytes()
    if rss is not None:
        stages[name] = rss
        log.info("executorch export: RSS %.2f GB after %s", rss / 1e9, name)


def export(
    model: Griffin,
    out_dir: Path,
    options: TargetOptions,
    source: str,
    given: GivenQuantization | None = None,
    weights: WeightsOf | None = None,
) -> TargetResult:
    """Write ``model.pte`` (methods prefill, its extra lengths, decode) for ``model`` (loaded from ``source``)
    into ``out_dir``."""
    if weights is not None:
        raise RgMobileError("--stream-weights exports to onnx only; executorch needs the model's weights in memory")
    if model.embed_tokens.weight.dtype != torch.float32:
        raise RgMobileError("the executorch target exports fp32 weights; load the checkpoint as float32")
    seq_lens = program_lengths(options.prefill_chunk, options.prefill_lengths)
    last = options.prefill_logits == "last"
    spec = build_iospec(model.config, last_logits=last)
    recipe = given.recipe if given is not None else options.quant_recipe
    step, quant_facts = None, None
    rss: dict[str, int] = {}
    _stage(rss, "start")
    t0 = time.perf_counter()
    if recipe.is_quantized:  # torchao before torch.export (quantization/executorch.py)
        from quantization.executorch import quantized_step

        # In place: the model has no other user after this target (the caller reads its config).
        # A quantized checkpoint's integers go in as they are (``given``), not chosen again.
        step, quant_facts = quantized_step(model, recipe, in_place=True, given=given, last_logits=last)
        _stage(rss, "quantize")
    programs = export_programs(model, seq_lens, step, last)
    del step
    separate = not recipe.is_quantized  # fp32: the weights go to model.ptd, the tied table once (module doc)
    if separate:
        tag_weights_external(programs)
    _stage(rss, "torch.export")
    t1 = time.perf_counter()
    log.info("torch.export of %s took %.1fs; lowering to ExecuTorch/XNNPACK", seq_lens, t1 - t0)
    path = Path(out_dir) / PTE_NAME
    # XNNPACK's serialized weights wait on disk, beside the output, until the .pte is written.
    with tempfile.TemporaryDirectory(prefix=".xnnpack-spill-", dir=out_dir) as spill:
        edge = lower(programs, constant_methods(model.config, options.prefill_chunk), spill_dir=Path(spill))
        del programs
        _stage(rss, "to_edge_transform_and_lower")
        delegation = {m: delegation_summary(edge, m) for m in (DECODE, PREFILL) if m in seq_lens}
        et_program = edge.to_executorch(_external_config()) if separate else edge.to_executorch()
        del edge
        _stage(rss, "to_executorch")
        with atomic_file(path) as tmp, tmp.open("wb") as f:
            et_program.write_to_file(f)  # streams the serialized pieces: no whole-file bytes object
        data = Path(out_dir) / DATA_NAME if separate else None
        if data is not None:
            _write_data_file(et_program, data)
        del et_program
        _stage(rss, "write")
    t2 = time.perf_counter()
    log.info("lowered and wrote %s (%d bytes) in %.1fs", path, path.stat().st_size, t2 - t1)
    check_methods(path, spec, seq_lens, data)
    import executorch.version

    return TargetResult(
        programs={name: Program(PTE_NAME, seq, entry=name) for name, seq in seq_lens.items()},
        precision=recipe.name if recipe.is_quantized else "fp32",
        quantization={**recipe.to_dict(), "executorch": quant_facts} if quant_facts is not None else None,
        details={
            "executorch_version": executorch.version.__version__,
            "exporter": f"torch.export + to_edge_transform_and_lower, torch {torch.__version__}",
            "rgmobile_version": __version__,
            "backend": "XnnpackBackend (fp32)"
            if quant_facts is None
            else f"XnnpackBackend ({recipe.name}: {quant_facts['activations']}), portable kernels for the rest",
            "batch": 1,
            "symbolic_dims": {"batch": "fixed at 1", "seq": "fixed per method (programs[*].seq_len)"},
            "methods": {name: {"seq_len": seq} for name, seq in seq_lens.items()},
            "constant_methods": constant_methods(model.config, options.prefill_chunk),
            **{f"{m}_delegation": d for m, d in delegation.items()},
            "data_file": DATA_NAME if separate else None,
            "pte_bytes": pte_breakdown(path, data),
            "tied_head": f"stored once in {DATA_NAME}: the portable embedding lookup and XNNPACK's linear read it"
            if separate
            else "stored twice: portable embedding table + XNNPACK-packed linear weight"
            + ("" if recipe.embedding is None else " (both quantized, same integers)"),
            "seconds": {"export": round(t1 - t0, 1), "lower": round(t2 - t1, 1)},
        },
    )
