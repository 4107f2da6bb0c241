"""Execute one function of a saved Core ML ML Program with coremltools' numpy op definitions.

The saved ``.mlpackage`` (spec protobuf + ``weights/weight.bin``) is read back into MIL with
``coremltools.converters.mil.frontend.milproto.load``: the very program a device would compile,
not the PyTorch program it was converted from. Every MIL op class carries a numpy
``value_inference`` (constexpr ops: ``materialized_val_inference``); :class:`EmulatedFunction`
binds values to the op's input variables and calls it, op after op, in program order.

* Constants (``const``, ``constexpr_*`` dequantization: ``constexpr_blockwise_shift_scale``,
  ``constexpr_affine_dequantize``, ``constexpr_lut_to_dense``, ...) and every op that depends on
  constants alone are evaluated once, when the function is loaded, not per step.
* Core ML states: ``read_state`` returns the state's value, ``coreml_update_state`` and
  ``write_state`` replace it; the caller passes the states in and gets them back (values).
* An op without a numpy definition (or whose definition returns nothing) raises
  :class:`RgMobileError` naming the op: nothing is skipped.
* Precision. An op whose output is typed fp16 produces fp16 values: its result is rounded to
  fp16. The arithmetic itself runs in fp32 on those fp16-rounded values (numpy's fp16 matmul
  is very slow), so each op rounds once, at its output. Activations are held as float32 arrays
  holding fp16-representable values; fp16 weights stay fp16 in memory (numpy promotes them).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from exporter.errors import RgMobileError

log = logging.getLogger(__name__)

STATE_READ = "read_state"
STATE_WRITES = ("coreml_update_state", "write_state")


class _Value:
    """Stands in for a builtin-typed symbolic value: ``Var.val`` reads ``_sym_val.val``."""

    __slots__ = ("val",)

    def __init__(self, val: Any) -> None:
        self.val = val


def load_program(package: Path, functions: set[str] | None = None) -> Any:
    """The MIL program of a saved ``.mlpackage``, weights read from its folder.

    ``functions``: load only these functions (None = all); each loaded function holds its own
    copy of the weights, so a multifunction package is loaded per program when memory matters.
    """
    from coremltools.converters.mil.frontend.milproto import load as milproto

    from exporter.targets.coreml_convert import read_package_spec

    spec = read_package_spec(package)
    if spec.WhichOneof("Type") != "mlProgram":
        raise RgMobileError(f"{package}: not an ML Program package; re-export it with rgmobile")
    weights = package / "Data" / "com.apple.CoreML" / "weights"
    if functions is not None:
        have = set(spec.mlProgram.functions)
        if not functions <= have:
            raise RgMobileError(f"{package}: no function(s) {sorted(functions - have)} (has {sorted(have)})")
        for name in have - functions:
            del spec.mlProgram.functions[name]
    try:
        return milproto.load(spec, spec.specificationVersion, str(weights))
    except (ValueError, TypeError, OSError, NotImplementedError) as exc:
        raise RgMobileError(f"{package}: coremltools cannot read its program back ({exc})") from None


def _np_dtype(var: Any) -> Any:
    """The numpy dtype of a tensor/scalar variable's declared type (None for states and lists)."""
    from coremltools.converters.mil.mil import types

    try:
        return types.nptype_from_builtin(var.dtype)
    except (TypeError, KeyError, AttributeError):
        return None


def _as_declared(value: Any, dtype: Any, keep_fp16: bool = False) -> Any:
    """``value`` as its op declares it: fp16 rounded (held as float32 unless ``keep_fp16``: folded
    constants stay fp16, half the memory, and numpy promotes them against fp32 activations), fp32,
    ints, bools."""
    if dtype is None or isinstance(value, (str, bytes)):
        return value
    arr = np.asarray(value)
    if dtype == np.float16:
        return arr.astype(np.float16) if keep_fp16 else arr.astype(np.float16).astype(np.float32)
    if arr.dtype != dtype:
        return arr.astype(dtype)
    return arr


def _plain(value: Any) -> Any:
    """numpy scalars that coremltools' definitions compare as Python values (a numpy bool in
    ``reduce_mean(keep_dims=...)`` is rejected by numpy's ``keepdims``) -> Python scalars."""
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype == np.bool_:
        return bool(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


class EmulatedFunction:
    """One function of a MIL program, ready to run: constants folded, the step's ops in order.

    ``run(inputs, states)`` takes numpy arrays keyed by the function's input names (states keyed
    by state name) and returns (outputs by output name, new states by state name).
    """

    def __init__(self, function: Any, name: str) -> None:
        self.name = name
        self.function = function
        self.input_names = [n for n, v in function.inputs.items() if not _is_state(v)]
        self.state_names = [n for n, v in function.inputs.items() if _is_state(v)]
        self.output_names = [v.name for v in function.outputs]
        self.input_dtypes = {n: _np_dtype(v) for n, v in function.inputs.items() if not _is_state(v)}
        self.input_shapes = {n: tuple(v.shape) for n, v in function.inputs.items() if not _is_state(v)}
        self.consts: dict[str, Any] = {}
        self.ops: list[Any] = []  # the ops that run every step, in program order
        self.op_types: dict[str, int] = {}
        self._fold_constants()

    def _fold_constants(self) -> None:
        """Evaluate ``const``/``constexpr_*`` ops and everything computed from constants alone, once."""
        dynamic = set(self.function.inputs)
        for op in self.function.operations:
            self.op_types[op.op_type] = self.op_types.get(op.op_type, 0) + 1
            if op.blocks:
                raise RgMobileError(f"coreml emulator: op {op.name!r} ({op.op_type}) has nested blocks; not supported")
            names = [v.name for v in _input_vars(op)]
            if op.op_type != "const" and (any(n in dynamic for n in names) or op.op_type == STATE_READ):
                self.ops.append(op)
                dynamic.update(o.name for o in op.outputs)
                continue
            for out, value in zip(op.outputs, self._evaluate(op, self.consts, keep_fp16=True), strict=True):
                self.consts[out.name] = value
        # Keep only what the step reads: the quantized data and scales behind a dequantized weight go.
        read = {v.name for op in self.ops for v in _input_vars(op)} | set(self.output_names)
        for op in self.function.operations:
            for out in op.outputs:
                if out.name in self.consts and out.name not in read:
                    del self.consts[out.name]
                    if op.op_type == "const":
                        out._sym_val = None  # the loaded blob: never read again
        log.info("coreml emulator: %s: %d ops per step, %d constants folded", self.name, len(self.ops),
                 len(self.consts))  # fmt: skip

    def _evaluate(self, op: Any, env: dict[str, Any], keep_fp16: bool = False) -> list[Any]:
        """Run one op on the values in ``env``; returns its outputs as declared (fp16 rounded)."""
        if op.op_type == "const":
            return [_plain(op.outputs[0].val)]
        bound = []
        for var in _input_vars(op):
            if var.name not in env:
                raise RgMobileError(f"coreml emulator: op {op.name!r} ({op.op_type}) reads {var.name!r}, "
                                    "which no earlier op produced")  # fmt: skip
            bound.append((var, var._sym_val))
            var._sym_val = _Value(env[var.name])
        try:
            if op.op_type.startswith("constexpr_"):
                result = op.materialized_val_inference()
            else:
                result = op.value_inference()
        except NotImplementedError:
            raise RgMobileError(
                f"coreml emulator: op {op.name!r} of type {op.op_type!r} has no numpy definition in coremltools; "
                "it cannot be emulated"
            ) from None
        finally:
            for var, old in bound:
                var._sym_val = old
        values = list(result) if isinstance(result, (tuple, list)) and len(op.outputs) > 1 else [result]
        if len(values) != len(op.outputs) or any(v is None for v in values):
            raise RgMobileError(f"coreml emulator: op {op.name!r} ({op.op_type}) produced no value")
        return [_as_declared(v, _np_dtype(o), keep_fp16) for v, o in zip(values, op.outputs, strict=True)]

    def run(
        self, inputs: dict[str, np.ndarray], states: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        env = dict(self.consts)
        for name in self.input_names:
            if name not in inputs:
                raise RgMobileError(f"coreml emulator: {self.name}: input {name!r} missing")
            value = inputs[name]
            if tuple(value.shape) != self.input_shapes[name]:
                raise RgMobileError(f"coreml emulator: {self.name}: input {name!r} has shape {tuple(value.shape)}, "
                                    f"the program wants {self.input_shapes[name]}")  # fmt: skip
            env[name] = _as_declared(value, self.input_dtypes[name])
        new_states = {name: np.asarray(states[name], np.float16).astype(np.float32) for name in self.state_names}
        for op in self.ops:
            kind = op.op_type
            if kind == STATE_READ:
                env[op.outputs[0].name] = new_states[op.input.name]
            elif kind in STATE_WRITES:
                state_var = op.state if kind == "coreml_update_state" else op.input
                value_var = op.value if kind == "coreml_update_state" else op.data
                value = _as_declared(env[value_var.name], np.float16)  # Core ML states are fp16
                new_states[state_var.name] = value
                if op.outputs:
                    env[op.outputs[0].name] = value
            else:
                for out, value in zip(op.outputs, self._evaluate(op, env), strict=True):
                    env[out.name] = value
        return {n: np.asarray(env[n]) for n in self.output_names}, new_states


def _is_state(var: Any) -> bool:
    from coremltools.converters.mil.mil import types

    return bool(types.is_state(var.sym_type))


def _input_vars(op: Any) -> list[Any]:
    """Every variable an op reads (tuple inputs such as concat's ``values`` flattened)."""
    out: list[Any] = []
    for value in op.inputs.values():
        out.extend(value if isinstance(value, (list, tuple)) else [value])
    return out


def op_modes(function: Any, op_type: str, attribute: str) -> list[Any]:
    """The value of ``attribute`` of every ``op_type`` op in a loaded function (e.g. gelu ``mode``)."""
    return [getattr(op, attribute).val for op in function.operations if op.op_type == op_type]
