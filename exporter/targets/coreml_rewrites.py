"""Core ML-specific rewrites of the exported step, kept apart so they are visible and testable.

coremltools 9.0 converts a ``torch.export`` program (ATen dialect) op by op; a
few things our step contains are not handled, or are converted wrongly
(docs/coreml.md). Each rewrite below is semantics-preserving and is checked
numerically in PyTorch (``exporter/targets/coreml_parity.py``) on the very
program that is handed to ``coremltools.convert``:

* bfloat16 / float16 parameters and buffers -> float32 (coremltools rejects
  bf16 constants; fp16 compute is applied by coremltools itself, afterwards).
* ``aten.alias`` (torch 2.13 emits it for no-op slices such as
  ``positions[:, :1]`` at t = 1) -> its input: an identity with no converter.
* ``aten.where.ScalarOther(c, x, s)`` (``torch.where(mask, x, -inf)``; the attention mask
  was one until it became an additive mask) has no converter; ``where.ScalarSelf(~c, s, x)``
  does and is the same value.
* ``aten.gelu(x, approximate="tanh")`` is decomposed (``torch._decomp``) into its
  tanh formula: coremltools 9.0's converter reads ``approximate`` only as a
  positional input, torch.export passes it as a keyword (and a positional string
  reaches the converter as a bare ``str``, which it cannot read), so the converter
  silently wrote MIL ``gelu`` with mode ``EXACT`` (erf GELU) for RecurrentGemma's
  tanh GELU. The saved program then computes the formula with mul/add/tanh ops (no
  ``gelu`` op: coremltools' ``fuse_gelu_tanh_approximation`` pass does not match torch's
  decomposition). tests/test_coreml_emulator.py reads the saved package back: no erf GELU.
* ``aten.reciprocal(x)`` -> ``aten.pow(x, -1)``: coremltools 9.0 converts reciprocal to MIL
  ``inverse``, whose default ``epsilon`` (1e-4) makes it 1 / (x + 1e-4): the RoPE inverse
  frequencies became 0.9999, 0.099999, ... and the angle at position p drifted by p * 1e-4 rad
  (found by running the saved package, runtime_py/coreml_emulator.py).

Feature names: Core ML program variables must be identifiers (coremltools'
NameSanitizer turns "a.b" into "a_b"), so IOSpec names such as
``past_key_values.3.key`` become ``past_key_values_3_key``; the manifest keeps
the map (:func:`feature_name`).
"""

from __future__ import annotations

import logging
import re
from collections import Counter

import torch
from torch import nn

from exporter.errors import RgMobileError

log = logging.getLogger(__name__)

_A = torch.ops.aten


def feature_name(iospec_name: str) -> str:
    """The Core ML feature name for an IOSpec tensor name (dots and other non-identifier chars -> "_")."""
    name = re.sub(r"[^0-9A-Za-z_]", "_", iospec_name)
    return f"_{name}" if name[:1].isdigit() else name


def float32_weights_(module: nn.Module) -> list[str]:
    """Cast bfloat16 / float16 parameters and buffers to float32 in place; returns what changed.

    Fp16 compute is coremltools' job (``compute_precision``); a bf16 constant
    fails conversion, and an fp16 weight would make the PyTorch program differ
    from the one we check.
    """
    changed = []
    with torch.no_grad():
        for name, p in list(module.named_parameters()) + list(module.named_buffers()):
            if p.dtype in (torch.bfloat16, torch.float16):
                p.data = p.data.float()
                changed.append(name)
    if changed:
        log.info("coreml rewrite: %d bf16/fp16 tensors cast to fp32", len(changed))
    return changed


def _node(arg: object) -> torch.fx.Node:
    if not isinstance(arg, torch.fx.Node):
        raise TypeError(f"coreml rewrite: expected a graph node, got {type(arg).__name__}")
    return arg


def _drop_alias(graph: torch.fx.Graph, node: torch.fx.Node) -> None:
    node.replace_all_uses_with(_node(node.args[0]))
    graph.erase_node(node)


def _where_scalar_other(graph: torch.fx.Graph, node: torch.fx.Node) -> None:
    cond, x, scalar = _node(node.args[0]), node.args[1], node.args[2]
    with graph.inserting_before(node):
        inv = graph.call_function(_A.logical_not.default, (cond,))
        new = graph.call_function(_A.where.ScalarSelf, (inv, scalar, x))
    if "val" in cond.meta:  # keep fake-tensor metadata so the program stays well-formed
        inv.meta["val"] = cond.meta["val"]
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    graph.erase_node(node)


def _reciprocal_as_pow(graph: torch.fx.Graph, node: torch.fx.Node) -> None:
    with graph.inserting_before(node):
        new = graph.call_function(_A.pow.Tensor_Scalar, (_node(node.args[0]), -1.0))
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    graph.erase_node(node)


# op -> rewrite; applied in one pass over the graph.
REWRITES = {
    _A.alias.default: _drop_alias,
    _A.where.ScalarOther: _where_scalar_other,
    _A.reciprocal.default: _reciprocal_as_pow,
}


def rewrite_program(program: torch.export.ExportedProgram) -> tuple[torch.export.ExportedProgram, dict[str, int]]:
    """ATen-decompose ``program`` (GELU too) and apply :data:`REWRITES`; returns (program, counts by op).

    The result is exactly what :func:`exporter.targets.coreml_convert.convert_program`
    hands to coremltools, and what the PyTorch parity check runs.
    """
    from torch._decomp import get_decompositions

    # GELU in its formula: see the module docstring (coremltools would drop approximate="tanh").
    decomposed = program.run_decompositions(get_decompositions([_A.gelu.default]))
    graph = decomposed.graph
    counts: Counter[str] = Counter()
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in REWRITES:
            REWRITES[node.target](graph, node)
            counts[str(node.target)] += 1
    graph.lint()
    decomposed.graph_module.recompile()
    log.info("coreml rewrites: %s", dict(counts) or "none needed")
    return decomposed, dict(counts)


def unsupported_ops(program: torch.export.ExportedProgram) -> list[str]:
    """ATen ops in ``program`` with no coremltools converter (empty when it will convert)."""
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY
    from coremltools.converters.mil.frontend.torch.utils import sanitize_op_kind

    missing = set()
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        try:
            kind = node.target.name()
        except AttributeError:
            kind = getattr(node.target, "__name__", str(node.target))
        if sanitize_op_kind(kind) not in _TORCH_OPS_REGISTRY:
            missing.add(str(node.target))
    return sorted(missing)


def check_convertible(program: torch.export.ExportedProgram) -> None:
    """Fail early, with the op names, when coremltools would not convert ``program``."""
    missing = unsupported_ops(program)
    if missing:
        raise RgMobileError(
            f"coreml: coremltools {_ct_version()} has no converter for {missing}; "
            "add a rewrite in exporter/targets/coreml_rewrites.py"
        )


def _ct_version() -> str:
    import coremltools

    return str(coremltools.__version__)
