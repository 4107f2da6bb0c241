"""Which ops stay fp32 when a Core ML model computes in fp16 (``--compute-precision fp16``).

Two parts of Griffin do not survive fp16 arithmetic:

* the RG-LRU (exporter/model/layers.py ``RGLRU.forward``): a trained model has
  channels with decay ``a`` within 1e-4 of 1, which fp16 (spacing 4.9e-4 below 1)
  rounds to 1 or far below it, and ``sqrt(1 - a^2)`` to 0: long memory is lost
  or never fed. Upstream keeps this state in fp32 for the same reason.
* RoPE angles (``apply_rope``): ``position * inv_freq`` in fp16 has a spacing of
  0.06 rad at angle 100, and positions above 2048 are not even integers.

Measured in PyTorch (a random ``small`` model whose RG-LRU has a quarter of
its channels at ``a`` ~ 1 - 8e-5, 1200 tokens): all-fp16 logits drift to a max
error of 2.1 (19 % relative) and keep growing; with these two parts in fp32 the
error stays flat at 1.7e-2.

The ops are picked by the source lines they were traced from: coremltools keeps
each torch.export node's stack trace as the MIL op's ``EXIR_STACK_TRACE`` scope,
and an op is kept fp32 when a frame of its trace lies inside one of
:data:`FP32_FUNCTIONS` (line ranges read from the code itself, so edits to
layers.py move them along) or calls one of them by name. fp32 ops run on the GPU/CPU, not the Neural Engine.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
from collections.abc import Callable
from typing import Any

from exporter.model import layers

FP32_FUNCTIONS: tuple[Callable[..., Any], ...] = (layers.RGLRU.forward, layers.apply_rope)
FP32_DESCRIPTION = "RG-LRU (gates, decay, scan) and RoPE angles stay fp32 (exporter/targets/coreml_precision.py)"
# One frame of a Python stack trace: file, line, function, and the source line's text.
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\w+)\n[ \t]*([^\n]*)')


@functools.cache
def _ranges() -> tuple[tuple[str, int, int], ...]:
    out = []
    for fn in FP32_FUNCTIONS:
        lines, start = inspect.getsourcelines(fn)
        out.append((os.path.realpath(inspect.getsourcefile(fn) or ""), start, start + len(lines) - 1))
    return tuple(out)


def traced_from_fp32_function(stack_trace: str) -> bool:
    """True when a frame of ``stack_trace`` lies inside, or calls, one of :data:`FP32_FUNCTIONS`.

    torch.export records frames of module ``forward``s only, so an op of a plain
    function (``apply_rope``) shows up as its call site: ``q = apply_rope(...)``.
    """
    calls = tuple(f"{fn.__name__}(" for fn in FP32_FUNCTIONS if fn.__name__ != "forward")
    for file, line, _, text in _FRAME.findall(stack_trace or ""):
        path, n = os.path.realpath(file), int(line)
        if any(path == f and lo <= n <= hi for f, lo, hi in _ranges()) or any(c in text for c in calls):
            return True
    return False


def fp16_op_selector(op: Any) -> bool:
    """coremltools ``FP16ComputePrecision(op_selector=...)``: True = compute this op in fp16."""
    from coremltools.converters.mil.mil.scope import ScopeSource

    traces = op.scopes.get(ScopeSource.EXIR_STACK_TRACE, []) if hasattr(op, "scopes") else []
    return not any(traced_from_fp32_function(t) for t in traces if isinstance(t, str))
