"""Read the quantized weights back out of a saved .mlpackage and check them, without Core ML.

Off macOS no Core ML prediction runs, so the quantization is verified on the weights
the package actually ships: the MIL program is read from the package's spec and weight
file (coremltools' milproto loader, no ``MLModel``: opening one rewrites the hashed
package's Manifest.json), every ``constexpr_*`` op is dequantized with our own maths
below, mapped back to our parameter name (quantization/coreml.py ``param_of``) and
loaded into a copy of the source :class:`Griffin` ("as-shipped weights"). Float weight
consts (fp16 when the model computes in fp16) are loaded too, when their shape is the
parameter's. That model then:

* is compared weight by weight with ``quantization.reference.fake_quantized`` of the
  recipe the package holds, in units of the reference's quantization step (scale); and
* runs in PyTorch (fp32 arithmetic) for the quality report against the fp32 model.

:func:`read_integers` reads the integers and scales themselves (int8, or int4 data that
coremltools loads as int8 with the declared dtype int4) back into our layout
(quantization/qweights.py), for a package built from a quantized checkpoint's given weights
(quantization/coreml_given.py), which must equal the checkpoint's exactly.

What this cannot show is Core ML's own arithmetic (fp16 compute, the constexpr
kernels): that needs macOS.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from exporter.errors import RgMobileError
from exporter.model.griffin import Griffin
from exporter.targets.coreml_convert import package_spec_path, read_package_spec
from quantization.coreml import class_of, param_of
from quantization.qweights import QuantizedTensor, QuantizedWeights
from quantization.recipe import Recipe, WeightScheme
from quantization.reference import fake_quantized
from quantization.shipped import Shipped
from quantization.tensor import quantize

if TYPE_CHECKING:
    from exporter.artifact.manifest import Manifest

log = logging.getLogger(__name__)

QUANTIZED_SUFFIX = "_quantized"
# coremltools computes round(w / scale) in the weights' dtype: fp16 (spacing 0.06 near 127) when
# the model computes in fp16, so an integer can be one step off fake_quantized's fp32 rounding
# wherever w / scale is within ~0.03 of x.5 (measured: ~1.6% of int8 weights, ~0.3% of int4);
# fp16 scales add < 0.07 step. A wrong scale or a mis-mapped weight is many steps off.
MAX_STEPS = 1.1
MAX_FLIP_FRACTION = 0.05  # weights more than half a step away


# --- pure maths of the two constexpr ops (iOS17 constexpr_affine_dequantize, iOS18 constexpr_blockwise_shift_scale)


def dequantize_affine(q: np.ndarray, zero_point: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    """(q - zero_point) * scale, with 1-D scale / zero point along ``axis`` (or scalars)."""
    shape = [1] * q.ndim
    if np.ndim(scale) == 1:
        shape[axis] = -1
    s = np.reshape(np.asarray(scale, np.float64), shape if np.ndim(scale) == 1 else ())
    z = np.reshape(np.asarray(zero_point, np.float64), shape if np.ndim(zero_point) == 1 else ())
    return (q.astype(np.float64) - z) * s


def dequantize_blockwise(data: np.ndarray, scale: np.ndarray, offset: np.ndarray | None) -> np.ndarray:
    """(data - offset) * scale, each scale entry covering data.shape / scale.shape elements per axis."""
    if scale.ndim != data.ndim or any(d % s for d, s in zip(data.shape, scale.shape, strict=True)):
        raise RgMobileError(f"coreml weights: scale {scale.shape} does not tile data {data.shape}")

    def expand(a: np.ndarray) -> np.ndarray:
        for axis, (d, s) in enumerate(zip(data.shape, a.shape, strict=True)):
            a = np.repeat(a, d // s, axis=axis)
        return a

    x = data.astype(np.float64)
    if offset is not None:
        x = x - expand(np.asarray(offset, np.float64))
    return x * expand(np.asarray(scale, np.float64))


# --- reading the package -----------------------------------------------------------------------


@dataclass
class ShippedWeights:
    """What one .mlpackage holds: dequantized weights and facts about its consts."""

    quantized: dict[str, np.ndarray] = field(default_factory=dict)  # param -> dequantized weight
    float_weights: dict[str, np.ndarray] = field(default_factory=dict)  # param -> float const
    op_types: dict[str, str] = field(default_factory=dict)  # param -> constexpr op type
    float_const_sizes: list[tuple[str, int, str]] = field(default_factory=list)  # (name, elements, dtype)
    functions: list[str] = field(default_factory=list)


def load_program(package: Path) -> Any:
    from coremltools.converters.mil.frontend.milproto.load import load

    spec = read_package_spec(package)
    weights = package_spec_path(package).parent / "weights"
    return load(spec, specification_version=spec.specificationVersion, file_weights_dir=str(weights))


def _val(op: Any, name: str) -> np.ndarray | None:
    v = op.inputs.get(name)
    return None if v is None else np.asarray(v.val)


def read_weights(package: Path, model: Griffin) -> ShippedWeights:
    """Every weight const/constexpr of every function of ``package``, by our parameter name."""
    out = ShippedWeights()
    program = load_program(package)
    for fname, fn in program.functions.items():
        out.functions.append(fname)
        for op in fn.operations:
            if op.op_type.startswith("constexpr_"):
                name = param_of(op.name.removesuffix(QUANTIZED_SUFFIX), model)
                if name is None:
                    continue
                if op.op_type == "constexpr_blockwise_shift_scale":
                    w = dequantize_blockwise(_val(op, "data"), _val(op, "scale"), _val(op, "offset"))  # type: ignore[arg-type]
                elif op.op_type == "constexpr_affine_dequantize":
                    axis = int(_val(op, "axis"))  # type: ignore[arg-type]
                    w = dequantize_affine(_val(op, "quantized_data"), _val(op, "zero_point"), _val(op, "scale"), axis)  # type: ignore[arg-type]
                else:
                    raise RgMobileError(f"coreml weights: {op.name} is a {op.op_type}, which this check cannot read")
                if name in out.quantized and not np.array_equal(out.quantized[name], w):
                    raise RgMobileError(f"coreml weights: functions disagree on {name}")
                out.quantized[name], out.op_types[name] = w, op.op_type
            elif op.op_type == "const":
                val = op.outputs[0].val
                if isinstance(val, np.ndarray) and val.dtype.kind == "f":
                    out.float_const_sizes.append((op.name, int(val.size), str(val.dtype)))
                    name = param_of(op.name, model)
                    if name is not None:
                        out.float_weights[name] = val
    return out


@torch.no_grad()
def as_shipped_model(model: Griffin, weights: ShippedWeights) -> Griffin:
    """A copy of ``model`` (fp32) with every weight the package holds, dequantized."""
    q = copy.deepcopy(model).float().eval()
    params = dict(q.named_parameters())
    for source in (weights.float_weights, weights.quantized):
        for name, w in source.items():
            if tuple(w.shape) == tuple(params[name].shape):
                params[name].copy_(torch.from_numpy(np.asarray(w, np.float32)))
    return q


# --- the checks --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightsCheck:
    """Shipped weights vs ``fake_quantized`` of the recipe, in quantization steps."""

    passed: bool
    problems: tuple[str, ...]
    max_steps: float  # max |shipped - fake_quant| / scale over every quantized weight
    flip_fraction: float  # fraction of weights more than half a step away
    max_abs: float
    quantized: int
    embedding_op: str
    largest_float_const: int

    def summary(self) -> str:
        head = "passed" if self.passed else "FAILED: " + "; ".join(self.problems)
        return (
            f"{head}; {self.quantized} quantized weights, max |shipped - fake_quant| {self.max_abs:.3g} "
            f"({self.max_steps:.3g} steps), {100 * self.flip_fraction:.3g}% weights off by > 1/2 step; "
            f"embedding/head: {self.embedding_op}; largest float const {self.largest_float_const} elements"
        )


def _steps(
    w: torch.Tensor, shipped: torch.Tensor, ref: torch.Tensor, scheme: WeightScheme, gates: bool
) -> torch.Tensor:
    """|shipped - ref| in units of ref's quantization step, per element."""
    if gates:  # [h, in, out]: each head's [out, in] transpose is quantized (quantization/tensor.py)
        return torch.stack([_steps(w[h].t(), shipped[h].t(), ref[h].t(), scheme, False) for h in range(w.shape[0])])
    _, scale = quantize(w, scheme)
    if scheme.granularity == "per_group":
        scale = scale.repeat_interleave(w.shape[1] // scale.shape[1], dim=1)
    return (shipped - ref).abs() / scale


def check_weights(model: Griffin, weights: ShippedWeights, recipe: Recipe) -> WeightsCheck:
    """Compare the shipped weights with ``fake_quantized(model, recipe)`` (``recipe`` = what the package holds)."""
    model = model.float()
    ref = dict(fake_quantized(model, recipe).named_parameters())
    orig = dict(model.named_parameters())
    classes = class_of(model)
    problems: list[str] = []
    max_steps = max_abs = 0.0
    flips = total = 0
    for name, cls in classes.items():
        scheme: WeightScheme | None = getattr(recipe, cls)
        if scheme is None:
            continue
        if name not in weights.quantized:
            problems.append(f"{name} is not quantized in the package")
            continue
        shipped = torch.from_numpy(np.asarray(weights.quantized[name], np.float32))
        if tuple(shipped.shape) != tuple(orig[name].shape):
            problems.append(f"{name}: shape {tuple(shipped.shape)} != {tuple(orig[name].shape)}")
            continue
        steps = _steps(orig[name].detach(), shipped, ref[name].detach(), scheme, cls == "rglru_gates")
        max_steps = max(max_steps, float(steps.max()))
        max_abs = max(max_abs, float((shipped - ref[name].detach()).abs().max()))
        flips += int((steps > 0.5).sum())
        total += steps.numel()
    flip_fraction = flips / max(total, 1)
    if max_steps > MAX_STEPS:
        problems.append(f"a weight is {max_steps:.3g} quantization steps from the reference (max {MAX_STEPS})")
    if flip_fraction > MAX_FLIP_FRACTION:
        problems.append(f"{100 * flip_fraction:.3g}% of weights differ by > 1/2 step (max {100 * MAX_FLIP_FRACTION}%)")
    vocab_width = model.config.vocab_size * model.config.width
    largest = max((n for _, n, _ in weights.float_const_sizes), default=0)
    embed_op = weights.op_types.get("embed_tokens.weight", "float")
    if recipe.embedding is not None and largest >= vocab_width:
        problems.append(f"a float const of {largest} elements (>= vocab x width) remains: the head is not quantized")
    return WeightsCheck(
        passed=not problems, problems=tuple(problems), max_steps=max_steps, flip_fraction=flip_fraction,
        max_abs=max_abs, quantized=len(weights.quantized), embedding_op=embed_op, largest_float_const=largest,
    )  # fmt: skip


# --- the integers themselves: what a package ships, in our layout --------------------------------


@dataclass
class ShippedIntegers:
    """The integers and scales of every ``constexpr_*`` weight of a package, in our layout.

    ``weights`` holds :class:`quantization.qweights.QuantizedTensor` values (scales widened to
    float32 from ``scale_dtypes``, the dtype the package stores); ``head_tied``: the embedding's
    constexpr feeds both the ``gather`` and the head ``linear`` in every function.
    """

    weights: QuantizedWeights = field(default_factory=dict)
    scale_dtypes: dict[str, str] = field(default_factory=dict)
    op_types: dict[str, str] = field(default_factory=dict)
    head_tied: bool = False
    functions: list[str] = field(default_factory=list)


def _bits(var: Any, what: str) -> int:
    """Bit width of a constexpr's integer input from its declared MIL dtype (int4 data loads as int8)."""
    from coremltools.converters.mil.mil import types

    name = types.builtin_to_string(var.dtype)
    if name not in ("int8", "int4"):
        raise RgMobileError(f"coreml weights: {what} stores {name} integers; only signed int8 / int4 are read")
    return 8 if name == "int8" else 4


def _integers_of(op: Any, block_diagonal: bool, what: str) -> tuple[QuantizedTensor, str]:
    """(integers and scales in our layout, stored scale dtype) of one constexpr op."""
    if op.op_type == "constexpr_blockwise_shift_scale":
        offset = _val(op, "offset")
        if offset is not None and np.any(offset != 0):
            raise RgMobileError(f"coreml weights: {what} has a nonzero offset; symmetric integers were expected")
        bits = _bits(op.inputs["data"], what)
        q, s = np.asarray(_val(op, "data")).astype(np.int8), np.asarray(_val(op, "scale"))
        if block_diagonal:  # the program's [h, in, out] -> ours per head [out, in]
            q, s = q.transpose(0, 2, 1), s.transpose(0, 2, 1)
    elif op.op_type == "constexpr_affine_dequantize":
        if np.any(np.asarray(_val(op, "zero_point")) != 0) or int(_val(op, "axis")) != 0 or block_diagonal:  # type: ignore[arg-type]
            raise RgMobileError(f"coreml weights: {what} is not symmetric per output row (zero point 0, axis 0)")
        bits = _bits(op.inputs["quantized_data"], what)
        q, s = np.asarray(_val(op, "quantized_data")).astype(np.int8), np.asarray(_val(op, "scale"))
        s = s.reshape(-1, 1) if s.ndim == 1 else np.broadcast_to(s, (q.shape[0], 1))
    else:
        raise RgMobileError(f"coreml weights: {what} is a {op.op_type}, which this check cannot read")
    groups, cols = s.shape[-1], q.shape[-1]
    scheme = WeightScheme(bits) if groups == 1 else WeightScheme(bits, "per_group", cols // groups)
    qt = QuantizedTensor(
        torch.from_numpy(np.ascontiguousarray(q)),
        torch.from_numpy(np.ascontiguousarray(s.astype(np.float32))),
        scheme,
        block_diagonal=block_diagonal,
    )
    return qt, str(s.dtype)


def _same(a: QuantizedTensor, b: QuantizedTensor) -> bool:
    return bool(torch.equal(a.q, b.q) and torch.equal(a.scale, b.scale))


def read_integers(package: Path, model: Griffin) -> ShippedIntegers:
    """The integers and scales ``package`` stores for each quantized weight of ``model``, by our name.

    Read from the saved spec and weight blob (no Core ML); each function's copy must agree.
    """
    out = ShippedIntegers()
    classes = class_of(model)
    tied: list[bool] = []
    for fname, fn in load_program(package).functions.items():
        out.functions.append(fname)
        for op in fn.operations:
            if not op.op_type.startswith("constexpr_"):
                continue
            name = param_of(op.name.removesuffix(QUANTIZED_SUFFIX), model)
            if name is None or name not in classes:
                continue
            qt, dtype = _integers_of(op, classes[name] == "rglru_gates", f"{fname}:{op.name}")
            if name in out.weights and not _same(out.weights[name], qt):
                raise RgMobileError(f"coreml weights: functions disagree on the integers of {name}")
            out.weights[name], out.scale_dtypes[name], out.op_types[name] = qt, dtype, op.op_type
            if name == "embed_tokens.weight":
                tied.append({c.op_type for c in op.outputs[0].child_ops} >= {"gather", "linear"})
    out.head_tied = bool(tied) and all(tied)
    return out


def read_shipped(artifact: Path, manifest: Manifest, model: Griffin) -> list[tuple[str, Shipped]]:
    """What each package ships, as :class:`quantization.shipped.Shipped`: [(package, shipped)].

    Weights the manifest lists as ``kept_float`` (iOS 17's RG-LRU gates) are read as float consts.
    """
    kept = list(((manifest.quantization or {}).get("coreml") or {}).get("kept_float") or [])
    out = []
    for file in manifest.program_files():
        package = Path(artifact) / file
        ints = read_integers(package, model)
        floats = read_weights(package, model).float_weights if kept else {}
        missing = [k for k in kept if k not in floats]
        if missing:
            raise RgMobileError(f"coreml weights: {file} has no float const for {missing[0]} (listed as kept float)")
        shipped = Shipped(
            weights=ints.weights,
            scale_dtypes=ints.scale_dtypes,
            float_weights={k: torch.from_numpy(np.asarray(floats[k], np.float32)) for k in kept},
            head_tied=ints.head_tied or "embed_tokens.weight" not in ints.weights,
        )
        out.append((file, shipped))
    return out
