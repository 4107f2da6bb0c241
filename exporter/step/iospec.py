"""The one I/O spec of an exported step, read by every target, runtime and app.

Names follow onnxruntime-genai (global layer index i):
  in : input_ids [batch, seq] int64, position_ids [batch, seq] int64,
       past_key_values.{i}.key|value            (attention layers)
       past_key_values.{i}.conv_state|recurrent_state (recurrent layers)
  out: logits [batch, seq, vocab], present.{i}.<same field>
Every state input names the output that feeds it on the next step. An artifact
exported with last-position logits has logits [batch, 1, vocab] instead: every
program computes the head for its last position only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from exporter.config import GriffinConfig
from exporter.errors import RgMobileError
from exporter.step.dtypes import DTYPES

Role = Literal["tokens", "positions", "state", "logits"]
Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output.

    ``shape`` uses symbolic dims "batch" and "seq"; ``pair`` on a state input is
    the output that feeds it on the next step (and on a state output, the input
    it feeds); ``init`` is the state's value at position 0 ("zeros").
    """

    name: str
    dtype: str
    shape: tuple[Dim, ...]
    role: Role
    layer: int | None = None
    field: str | None = None
    pair: str | None = None
    init: str | None = None

    def concrete_shape(self, batch: int = 1, seq: int = 1) -> tuple[int, ...]:
        dims = {"batch": batch, "seq": seq}
        return tuple(dims[d] if isinstance(d, str) else d for d in self.shape)


def _check_types(s: TensorSpec) -> None:
    """The JSON types of one tensor spec read from a manifest."""
    optional = (s.layer, s.field, s.pair, s.init)
    if (
        not isinstance(s.name, str) or not isinstance(s.dtype, str) or not isinstance(s.role, str)
        or not all(isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool) and d >= 0) for d in s.shape)
        or not (s.layer is None or (isinstance(s.layer, int) and not isinstance(s.layer, bool)))
        or not all(v is None or isinstance(v, str) for v in optional[1:])
    ):  # fmt: skip
        raise RgMobileError(f"io spec: tensor {str(s.name)[:60]!r} has a field of the wrong type")
    if any(isinstance(d, str) and d not in ("batch", "seq") for d in s.shape):
        raise RgMobileError(f"io spec: tensor {s.name!r} has a symbolic dim other than 'batch' or 'seq'")


@dataclass(frozen=True)
class IOSpec:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @staticmethod
    def state_input_name(layer: int, field: str) -> str:
        """The name of layer ``layer``'s state ``field`` as an input: ``past_key_values.{layer}.{field}``."""
        return f"past_key_values.{layer}.{field}"

    @staticmethod
    def state_output_name(layer: int, field: str) -> str:
        """The name of layer ``layer``'s state ``field`` as an output: ``present.{layer}.{field}``."""
        return f"present.{layer}.{field}"

    @property
    def state_inputs(self) -> tuple[TensorSpec, ...]:
        return tuple(s for s in self.inputs if s.role == "state")

    @property
    def state_outputs(self) -> tuple[TensorSpec, ...]:
        return tuple(s for s in self.outputs if s.role == "state")

    def state_pairs(self) -> list[tuple[str, str]]:
        """(input name, output name) for every state tensor, in canonical order."""
        return [(s.name, s.pair or "") for s in self.state_inputs]

    @property
    def last_logits_only(self) -> bool:
        """Whether every program returns only its last position's logits ([batch, 1, vocab])."""
        return self.outputs[0].shape[1:2] == (1,)

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def to_dict(self) -> dict[str, Any]:
        def enc(s: TensorSpec) -> dict[str, Any]:
            d = asdict(s)
            d["shape"] = list(s.shape)
            return {k: v for k, v in d.items() if v is not None}

        return {"inputs": [enc(s) for s in self.inputs], "outputs": [enc(s) for s in self.outputs]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IOSpec:
        try:
            ins = tuple(TensorSpec(**{**s, "shape": tuple(s["shape"])}) for s in data["inputs"])
            outs = tuple(TensorSpec(**{**s, "shape": tuple(s["shape"])}) for s in data["outputs"])
        except (KeyError, TypeError) as exc:
            raise RgMobileError(f"io spec: malformed ({exc})") from None
        for s in ins + outs:  # types first: the checks below hash names and compare shapes
            _check_types(s)
        if not ins or not outs:
            raise RgMobileError("io spec: needs inputs and outputs")
        spec = cls(ins, outs)
        spec.validate()
        return spec

    def validate(self) -> None:
        names = self.input_names + self.output_names
        if len(set(names)) != len(names):
            raise RgMobileError("io spec: duplicate tensor names")
        outs = {s.name: s for s in self.outputs}
        for s in self.inputs + self.outputs:
            if s.dtype not in DTYPES:
                raise RgMobileError(f"io spec: {s.name} has unsupported dtype {s.dtype!r}")
        for s in self.state_inputs:
            o = outs.get(s.pair or "")
            if o is None or o.role != "state":
                raise RgMobileError(f"io spec: state input {s.name} is not paired with a state output")
            if o.shape != s.shape or o.dtype != s.dtype:
                raise RgMobileError(f"io spec: {s.name} and {o.name} differ in shape or dtype")
        roles = [s.role for s in self.inputs]
        if roles[:2] != ["tokens", "positions"] or [s.role for s in self.outputs][0] != "logits":
            raise RgMobileError(
                "io spec: expected inputs (input_ids, position_ids, state...) and outputs (logits, ...)"
            )
        logits = self.outputs[0].shape
        if len(logits) != 3 or logits[0] != "batch" or logits[1] not in ("seq", 1) or not isinstance(logits[2], int):
            raise RgMobileError(f"io spec: logits must be [batch, seq or 1, vocab], got {list(logits)}")


def build_iospec(config: GriffinConfig, state_dtype: str = "float32", last_logits: bool = False) -> IOSpec:
    """The I/O spec of the step for ``config``; the recurrent state is always fp32.
    ``last_logits``: the programs return the last position's logits only ([batch, 1, vocab])."""
    from exporter.model.state import state_shapes  # imported here: runtimes read specs without torch

    inputs = [
        TensorSpec("input_ids", "int64", ("batch", "seq"), "tokens"),
        TensorSpec("position_ids", "int64", ("batch", "seq"), "positions"),
    ]
    outputs = [TensorSpec("logits", "float32", ("batch", 1 if last_logits else "seq", config.vocab_size), "logits")]
    for layer, field, shape in state_shapes(config, batch=1):
        dims: tuple[Dim, ...] = ("batch", *shape[1:])
        dtype = "float32" if field == "recurrent_state" else state_dtype
        i_name, o_name = IOSpec.state_input_name(layer, field), IOSpec.state_output_name(layer, field)
        inputs.append(TensorSpec(i_name, dtype, dims, "state", layer, field, o_name, "zeros"))
        outputs.append(TensorSpec(o_name, dtype, dims, "state", layer, field, i_name))
    spec = IOSpec(tuple(inputs), tuple(outputs))
    spec.validate()
    return spec
