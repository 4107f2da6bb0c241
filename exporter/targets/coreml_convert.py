"""One step program -> one Core ML ML Program: build, convert, name and describe.

Path: ``torch.export`` (static t) -> :mod:`coreml_rewrites` -> ``coremltools.convert``.
:func:`build_program` returns exactly the program handed to coremltools, so the
PyTorch parity check (``coreml_parity``) runs the same graph.

Precision: with ``fp16`` compute, coremltools 9.0 would make the *outputs* fp16
while the inputs stay fp32 (torch.export inputs cannot be typed), so a state
output would no longer match the input it feeds. We therefore convert in two
steps, to a MIL program in fp32 and then to an ML Program with fp16 compute:
the fp16 cast pass then wraps the graph in casts and every float feature stays
fp32 (int64 token/position inputs become int32, Core ML's integer type).
The RG-LRU and RoPE angles stay fp32 even then (exporter/targets/coreml_precision.py).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from exporter.errors import RgMobileError
from exporter.model.griffin import Griffin
from exporter.step.dtypes import dtype
from exporter.step.iospec import IOSpec, TensorSpec
from exporter.step.step import export_step
from exporter.targets import coreml_stateful
from exporter.targets.coreml_precision import fp16_op_selector
from exporter.targets.coreml_rewrites import check_convertible, feature_name, float32_weights_, rewrite_program
from exporter.upstream.coremltools_9_0 import lean_coremltools, pass_pipeline

log = logging.getLogger(__name__)

ComputePrecision = Literal["fp16", "fp32"]
StateMode = Literal["explicit", "internal"]
IOS_VERSIONS = (17, 18)
# Core ML specification version written for each minimum deployment target.
SPEC_VERSION = {17: 8, 18: 9}
# IOSpec dtype -> Core ML multiarray dtype of the feature.


@dataclass(frozen=True)
class CoreMLSettings:
    """How a Core ML artifact is built (``rgmobile export --format coreml`` options).

    Fields:
      ios: minimum deployment target, 17 or 18. 18 writes one multifunction
        .mlpackage (prefill + decode share weights); 17 writes one .mlpackage per program.
      compute_precision: "fp16" (Core ML's default, needed for the Neural Engine; the
        RG-LRU and RoPE angles still compute in fp32) or "fp32". Graph I/O is fp32 either way.
      state: "explicit" (every state tensor is an input and an output) or "internal"
        (KV ring buffers are fp16 Core ML states; iOS 18 only; see coreml_stateful).
    """

    ios: int = 18
    compute_precision: ComputePrecision = "fp16"
    state: StateMode = "explicit"

    def __post_init__(self) -> None:
        if self.ios not in IOS_VERSIONS:
            raise RgMobileError(f"--ios must be one of {list(IOS_VERSIONS)}, got {self.ios!r}")
        if self.compute_precision not in ("fp16", "fp32"):
            raise RgMobileError(f"--compute-precision must be fp16 or fp32, got {self.compute_precision!r}")
        if self.state not in ("explicit", "internal"):
            raise RgMobileError(f"--coreml-state must be explicit or internal, got {self.state!r}")
        if self.state == "internal" and self.ios < 18:
            raise RgMobileError("--coreml-state internal needs --ios 18 (Core ML states are new in iOS 18)")

    @property
    def deployment_target(self) -> str:
        return f"iOS{self.ios}"

    @property
    def multifunction(self) -> bool:
        return self.ios >= 18


def feature_map(io: IOSpec, state: StateMode) -> dict[str, dict[str, str]]:
    """IOSpec name -> {"name": Core ML feature or state name, "kind": input|output|state, "dtype"}.

    With ``internal`` state, ``past_key_values.{i}.key`` and ``present.{i}.key``
    both map to the Core ML state ``past_key_values_{i}_key``.
    """
    out: dict[str, dict[str, str]] = {}
    for s in io.inputs:
        if state == "internal" and coreml_stateful.is_internal(s):
            out[s.name] = {"name": feature_name(s.name), "kind": "state", "dtype": "float16"}
        else:
            out[s.name] = {"name": feature_name(s.name), "kind": "input", "dtype": dtype(s.dtype).coreml}
    for s in io.outputs:
        if state == "internal" and coreml_stateful.is_internal(s):
            out[s.name] = {"name": feature_name(s.pair or ""), "kind": "state", "dtype": "float16"}
        else:
            out[s.name] = {"name": feature_name(s.name), "kind": "output", "dtype": dtype(s.dtype).coreml}
    return out


def float32_model(model: Griffin) -> Griffin:
    """``model`` itself when it is all fp32, else an fp32 copy (bf16 does not convert)."""
    if all(t.dtype == torch.float32 for t in list(model.parameters()) + list(model.buffers())):
        return model.eval()
    model = copy.deepcopy(model)
    float32_weights_(model)
    return model.eval()


def build_program(model: Griffin, seq: int, state: StateMode) -> torch.export.ExportedProgram:
    """The exact program handed to coremltools for a step of ``seq`` tokens (batch 1)."""
    model = float32_model(model)
    with torch.no_grad():
        if state == "explicit":
            program = export_step(model, seq, batch=1)
        else:
            step = coreml_stateful.StatefulStep(model).eval()
            program = torch.export.export(step, coreml_stateful.example_inputs(model, seq), strict=False)
    program, _ = rewrite_program(program)
    check_convertible(program)
    return program


def convert_program(program: torch.export.ExportedProgram, settings: CoreMLSettings, mem: Any = None) -> Any:
    """``coremltools.convert`` of a program from :func:`build_program`; returns an unloaded MLModel.

    ``mem``: a :class:`exporter.targets.coreml_memory.StageMemory` to mark the MIL stage in.
    """
    import coremltools as ct

    target = {17: ct.target.iOS17, 18: ct.target.iOS18}[settings.ios]

    internal = settings.state == "internal"  # coremltools 9.0 needs a pass left out then (exporter/upstream)
    t0 = time.perf_counter()
    common = dict(minimum_deployment_target=target, pass_pipeline=pass_pipeline(internal))
    with lean_coremltools():  # chunked numpy checks: no whole-embedding temporaries (exporter/upstream)
        if settings.compute_precision == "fp32":
            mlmodel = ct.convert(
                program, convert_to="mlprogram", compute_precision=ct.precision.FLOAT32, skip_model_load=True, **common
            )
        else:  # see the module docstring: fp32 MIL first keeps the graph I/O fp32
            mil = ct.convert(program, convert_to="milinternal", compute_precision=ct.precision.FLOAT32, **common)
            if mem is not None:
                mem.mark("convert to MIL (fp32)")
            common["pass_pipeline"] = pass_pipeline(internal)
            fp16 = ct.transform.FP16ComputePrecision(op_selector=fp16_op_selector)  # RG-LRU and RoPE stay fp32
            mlmodel = ct.convert(mil, convert_to="mlprogram", compute_precision=fp16, skip_model_load=True, **common)
            del mil
    log.info("coremltools.convert (%s, %s): %.1fs", settings.deployment_target, settings.compute_precision,
             time.perf_counter() - t0)  # fmt: skip
    return mlmodel


def _describe(s: TensorSpec, fmap: dict[str, dict[str, str]], window: int) -> str:
    f = fmap[s.name]
    if s.role == "tokens":
        return "token ids [1, t] (int32)"
    if s.role == "positions":
        return "absolute positions [1, t] (int32), contiguous; position 0 starts a new sequence"
    if s.role == "logits":
        return "next-token logits [1, t, vocab], soft-capped"
    what = {
        "key": f"key ring buffer of attention layer {s.layer} (slot = position % {window})",
        "value": f"value ring buffer of attention layer {s.layer} (slot = position % {window})",
        "conv_state": f"Conv1D state of recurrent layer {s.layer} (last inputs, oldest first)",
        "recurrent_state": f"RG-LRU state of recurrent layer {s.layer}",
    }[s.field or ""]
    if f["kind"] == "state":
        return f"{what}; Core ML state (fp16), updated in place by every call"
    pair = fmap[s.pair or ""]["name"]
    if s.role == "state" and f["kind"] == "input":
        return f"{what}; zeros at position 0, else the previous call's {pair}"
    return f"{what} after this call; feed it as {pair} of the next call"


def describe_features(description: Any, io: IOSpec, fmap: dict[str, dict[str, str]], window: int) -> None:
    """Set the description of every feature of one (function) description, in place."""
    want_in = [s for s in io.inputs if fmap[s.name]["kind"] == "input"]
    want_out = [s for s in io.outputs if fmap[s.name]["kind"] == "output"]
    if len(description.input) != len(want_in) or len(description.output) != len(want_out):
        raise RgMobileError(
            f"coreml: converted model has {len(description.input)} inputs / {len(description.output)} outputs, "
            f"expected {len(want_in)} / {len(want_out)}"
        )
    for feature, s in zip(list(description.input) + list(description.output), want_in + want_out, strict=True):
        feature.shortDescription = _describe(s, fmap, window)
    states = {fmap[s.name]["name"]: s for s in io.inputs if fmap[s.name]["kind"] == "state"}
    for feature in description.state:
        if feature.name in states:
            feature.shortDescription = _describe(states[feature.name], fmap, window)


def rename_spec(spec: Any, io: IOSpec, fmap: dict[str, dict[str, str]]) -> None:
    """Rename the features of a single-function spec (and its MIL program) to the feature map names."""
    import coremltools as ct

    want = [fmap[s.name]["name"] for s in io.inputs if fmap[s.name]["kind"] == "input"]
    have = [f.name for f in spec.description.input]
    want_out = [fmap[s.name]["name"] for s in io.outputs if fmap[s.name]["kind"] == "output"]
    have_out = [f.name for f in spec.description.output]
    if len(have) != len(want) or len(have_out) != len(want_out):
        raise RgMobileError(f"coreml: converted I/O {have} -> {have_out} does not match the IOSpec")
    # Two passes through temporary names: an old name may equal another feature's new name.
    for i, old in enumerate(have):
        ct.utils.rename_feature(spec, old, f"__rgm_in_{i}", rename_outputs=False)
    for i, old in enumerate(have_out):
        ct.utils.rename_feature(spec, old, f"__rgm_out_{i}", rename_inputs=False)
    for i, new in enumerate(want):
        ct.utils.rename_feature(spec, f"__rgm_in_{i}", new, rename_outputs=False)
    for i, new in enumerate(want_out):
        ct.utils.rename_feature(spec, f"__rgm_out_{i}", new, rename_inputs=False)


def package_spec_path(package: Path) -> Path:
    """The model spec (protobuf) inside an .mlpackage, from its Manifest.json."""
    info = json.loads((package / "Manifest.json").read_text())
    entry = info["itemInfoEntries"][info["rootModelIdentifier"]]
    return package / "Data" / entry["path"]


def read_package_spec(package: Path) -> Any:
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    try:
        spec.ParseFromString(package_spec_path(package).read_bytes())
    except (OSError, KeyError, ValueError) as exc:
        raise RgMobileError(f"{package}: not a readable .mlpackage ({exc})") from None
    return spec


def write_package_spec(package: Path, spec: Any) -> None:
    """Replace the spec of an .mlpackage in place (weights untouched)."""
    path = package_spec_path(package)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(spec.SerializeToString())
    tmp.replace(path)


def set_metadata(spec: Any, short_description: str, version: str, user: dict[str, str]) -> None:
    meta = spec.description.metadata
    meta.author = "rgmobile (RecurrentGemma / Griffin export)"
    meta.shortDescription = short_description
    meta.versionString = version
    meta.license = "Model weights: see the source checkpoint's license (Gemma Terms of Use for Google's weights)"
    for key, value in user.items():
        meta.userDefined[key] = value
