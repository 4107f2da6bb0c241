"""The Core ML emulator: saved .mlpackage programs run with coremltools' op definitions.

* unit: an in-memory MIL program (no conversion): fp16-typed ops give fp16 values, constants
  (and constexpr dequantization) are evaluated once, an op without a definition fails loudly;
* the GELU fix: RecurrentGemma's tanh GELU reaches the saved package as tanh GELU (coremltools
  9.0 would write erf GELU), read back from the saved program;
* parity: each exported variant of a tiny model (window 16) runs emulated against the PyTorch
  reference through ``validate`` (prompt + 3 x window decode steps) within its precision's
  thresholds: iOS 18 fp16 multifunction (with ``--prefill-lengths 4,2``), iOS 18 fp32, iOS 17 two
  packages, int8, int4, internal state;
* broken packages (a weight blob altered, an op's constant changed in the saved spec) pass the
  spec check and fail the emulated check.

Every .mlpackage is built once per session (conversion costs seconds per program).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from exporter.artifact.manifest import read_manifest
from exporter.checkpoint.save import save_hf_folder
from exporter.config import griffin_pattern
from exporter.errors import RgMobileError
from exporter.targets.coreml_check import check_spec
from exporter.targets.coreml_convert import read_package_spec, write_package_spec
from rgmobile.cli import app
from rgmobile.export import ExportOptions, export
from runtime_py import validate_coreml
from runtime_py.coreml_emulator import DESCRIPTION, CoreMLEmulatedBackend
from runtime_py.coreml_emulator_program import EmulatedFunction, load_program, op_modes
from runtime_py.thresholds import thresholds_for
from runtime_py.torch_backend import TorchBackend
from runtime_py.validate import ValidateOptions, check, compare, summarize, validate
from tests.conftest import tiny_config, tiny_model

CHUNK = 8
WINDOW = 16
# name -> ExportOptions fields (prefill chunk CHUNK: a decode and a prefill program each).
VARIANTS: dict[str, dict[str, object]] = {
    "ios18-fp16": {"ios": 18, "compute_precision": "fp16", "prefill_lengths": (4, 2)},  # 4 functions
    "ios18-fp32": {"ios": 18, "compute_precision": "fp32"},
    "ios17-fp16": {"ios": 17, "compute_precision": "fp16"},
    "ios18-int8": {"ios": 18, "quant": "int8"},
    "ios18-int4": {"ios": 18, "quant": "int4"},
    "ios18-fp16-internal": {"ios": 18, "compute_precision": "fp16", "coreml_state": "internal"},
}
_BUILT: dict[str, Path] = {}


@pytest.fixture(scope="session")
def emu_model():
    return tiny_model(tiny_config(block_types=griffin_pattern(3)))


@pytest.fixture(scope="session")
def emu_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path, emu_model) -> Path:
    return save_hf_folder(
        emu_model.config, emu_model.state_dict(), tmp_path_factory.mktemp("cme") / "hf", tokenizer=tiny_tokenizer
    )


@pytest.fixture(scope="session")
def emu_artifact(tmp_path_factory: pytest.TempPathFactory, emu_checkpoint: Path):
    """variant name -> exported artifact folder (each built once per session, on first use)."""

    def get(name: str) -> Path:
        if name not in _BUILT:
            out = tmp_path_factory.mktemp("cme") / name
            export(ExportOptions(out=out, format="coreml", checkpoint=emu_checkpoint, prefill_chunk=CHUNK,
                                 **VARIANTS[name]))  # type: ignore[arg-type]  # fmt: skip
            _BUILT[name] = out
        return _BUILT[name]

    return get


# --- the executor on an in-memory MIL program (fast) ---------------------------------------------


def _mil_function(fp16: bool = True):
    import coremltools as ct
    from coremltools.converters.mil.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    weight = np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(3, 4)

    @mb.program(input_specs=[mb.TensorSpec((1, 4), dtype=types.fp32)], opset_version=ct.target.iOS18)
    def prog(x):
        w = mb.const(val=weight.astype(np.float16) if fp16 else weight)
        h = mb.cast(x=x, dtype="fp16") if fp16 else x
        y = mb.linear(x=h, weight=w)  # [1, 3]
        z = mb.mul(x=y, y=y)
        return mb.cast(x=z, dtype="fp32") if fp16 else z

    return prog.functions["main"], weight


def test_fp16_ops_give_fp16_values() -> None:
    function, weight = _mil_function(fp16=True)
    emu = EmulatedFunction(function, "main")
    x = np.array([[0.3, -1.7, 2.05, 0.011]], np.float32)
    (out,) = emu.run({emu.input_names[0]: x}, {})[0].values()
    h = x.astype(np.float16).astype(np.float32)
    y = (h @ weight.astype(np.float16).astype(np.float32).T).astype(np.float16).astype(np.float32)
    want = (y * y).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(out, want)
    exact = (x @ weight.T) ** 2
    assert np.abs(out - exact).max() > 1e-5  # the fp16 rounding is visible: the comparison means something


def test_constants_are_folded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    function, _ = _mil_function(fp16=True)
    emu = EmulatedFunction(function, "main")
    assert {op.op_type for op in emu.ops} == {"cast", "linear", "mul"}  # the const is not run per step
    x = np.ones((1, 4), np.float32)
    first = emu.run({emu.input_names[0]: x}, {})[0]
    from coremltools.converters.mil.mil.ops.defs.iOS15.control_flow import const

    def fail(self):  # a const evaluated again would raise
        raise AssertionError("const evaluated per step")

    monkeypatch.setattr(const, "value_inference", fail)
    again = emu.run({emu.input_names[0]: x}, {})[0]
    assert all(np.array_equal(first[k], again[k]) for k in first)


def test_op_without_definition_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    from coremltools.converters.mil.mil.ops.defs.iOS15.elementwise_binary import mul

    def missing(self):
        raise NotImplementedError

    monkeypatch.setattr(mul, "value_inference", missing)
    function, _ = _mil_function(fp16=False)
    emu = EmulatedFunction(function, "main")
    with pytest.raises(RgMobileError, match="type 'mul' has no numpy definition"):
        emu.run({emu.input_names[0]: np.ones((1, 4), np.float32)}, {})


def test_wrong_input_shape_is_refused() -> None:
    function, _ = _mil_function(fp16=False)
    emu = EmulatedFunction(function, "main")
    with pytest.raises(RgMobileError, match="has shape"):
        emu.run({emu.input_names[0]: np.ones((1, 5), np.float32)}, {})


# --- the GELU mode of the saved package ------------------------------------------------------------


def _gelu_ops(function) -> list[tuple[str, object]]:
    return [(op.op_type, op.mode.val) for op in function.operations if op.op_type == "gelu"]


@pytest.mark.slow
def test_saved_package_computes_tanh_gelu(emu_artifact, emu_model) -> None:
    """No erf GELU in the saved program (coremltools would write mode EXACT for approximate="tanh"),
    and the saved fp32 program meets the fp32 thresholds against the reference (erf GELU measures
    ~4e-4 or more, over the 1e-4 threshold)."""
    art = emu_artifact("ios18-fp32")
    program = load_program(art / "model.mlpackage")
    for name, function in program.functions.items():
        modes = op_modes(function, "gelu", "mode")
        assert "EXACT" not in modes, f"{name}: erf GELU in the saved program"
        kinds = {op.op_type for op in function.operations}
        assert "tanh" in kinds
        assert "inverse" not in kinds  # MIL inverse adds epsilon 1e-4 (the RoPE frequencies were off)
    manifest = read_manifest(art)
    cmp, greedy = compare(CoreMLEmulatedBackend(art, manifest), TorchBackend(emu_model), list(range(2, 22)), 24, 8)
    summary, where = summarize(cmp, greedy)
    assert not check(summary, where, thresholds_for("coreml", "fp32")), summary
    assert summary["max_abs_logits"] < 1e-4


@pytest.mark.slow
def test_unfixed_gelu_is_caught(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, emu_checkpoint: Path, emu_model):
    """Without the decomposition, coremltools writes gelu mode EXACT; the emulated fp32 check catches it."""
    import torch

    from exporter.targets import coreml_rewrites

    real = torch.export.ExportedProgram.run_decompositions

    def no_gelu_decomposition(self, table=None, **kw):
        return real(self, {}, **kw)

    monkeypatch.setattr(torch.export.ExportedProgram, "run_decompositions", no_gelu_decomposition)
    assert coreml_rewrites.REWRITES  # the rewrites themselves still run
    out = tmp_path / "unfixed"
    export(ExportOptions(out=out, format="coreml", checkpoint=emu_checkpoint, prefill_chunk=1, ios=18,
                         compute_precision="fp32"))  # fmt: skip
    monkeypatch.undo()
    modes = op_modes(load_program(out / "model.mlpackage").functions["decode"], "gelu", "mode")
    assert modes and set(modes) == {"EXACT"}  # the coremltools bug, as saved
    manifest = read_manifest(out)
    check_spec(out, manifest)  # the spec alone does not see it
    cmp, greedy = compare(CoreMLEmulatedBackend(out, manifest), TorchBackend(emu_model), list(range(2, 10)), 24, 8)
    summary, where = summarize(cmp, greedy)
    assert "max_abs_logits" in {f.metric for f in check(summary, where, thresholds_for("coreml", "fp32"))}


# --- every variant, emulated, against the reference -------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "darwin", reason="off-macOS behaviour")
@pytest.mark.parametrize("name", list(VARIANTS))
def test_emulated_variant_matches_reference(emu_artifact, name: str) -> None:
    art = emu_artifact(name)
    manifest = read_manifest(art)
    report = validate(ValidateOptions(artifact=art, greedy_tokens=8, quality=False))
    assert report.compared == DESCRIPTION
    assert report.decode_steps == 3 * WINDOW and report.summary["positions"] >= 3 * WINDOW
    assert report.thresholds == thresholds_for("coreml", manifest.precision)
    assert not report.failures, [f.message() for f in report.failures]
    assert report.status == validate_coreml.EMULATED_PASS and not report.passed
    checks = {c["name"]: c["status"] for c in report.checks}
    assert checks[DESCRIPTION] == "passed"
    assert checks[validate_coreml.PREDICTIONS] == validate_coreml.NOT_RUN
    if name == "ios18-fp32":
        assert report.summary["max_abs_logits"] < 1e-4
    if name == "ios18-fp16":  # the prompt's 3-token remainder: the t = 2 function, then decode
        assert manifest.seq_lens() == (CHUNK, 4, 2, 1) and manifest.programs["prefill_4"].entry == "prefill_4"
        assert {p.file for p in manifest.programs.values()} == {"model.mlpackage"}
        assert {s.t for s in report.steps} == {CHUNK, 2, 1}
    if name == "ios17-fp16":
        assert {p.file for p in manifest.programs.values()} == {"decode.mlpackage", "prefill.mlpackage"}
    if name == "ios18-fp16-internal":
        assert {f["kind"] for f in manifest.format_details["features"].values()} >= {"state"}


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "darwin", reason="off-macOS behaviour")
def test_every_prefill_function_matches_reference(emu_artifact, emu_model) -> None:
    """A 31-token prompt runs as [8, 8, 8, 4, 2, 1] (every function of ``--prefill-lengths 4,2``, across the
    16-token window), then decode steps, against the PyTorch reference within fp16's thresholds."""
    art = emu_artifact("ios18-fp16")
    manifest = read_manifest(art)
    cmp, greedy = compare(CoreMLEmulatedBackend(art, manifest), TorchBackend(emu_model), list(range(2, 33)), 8, 4)
    assert [s.t for s in cmp.steps][:6] == [CHUNK, CHUNK, CHUNK, 4, 2, 1]
    summary, where = summarize(cmp, greedy)
    assert not check(summary, where, thresholds_for("coreml", manifest.precision))


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "darwin", reason="off-macOS behaviour")
def test_quantized_quality_uses_the_emulated_program(emu_artifact) -> None:
    report = validate(ValidateOptions(artifact=emu_artifact("ios18-int4"), greedy_tokens=4, steps=4,
                                      quality_tokens=256))  # fmt: skip
    assert report.quality and report.compared == DESCRIPTION
    names = [c["name"] for c in report.checks]
    assert validate_coreml.SHIPPED_WEIGHTS in names and DESCRIPTION in names


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "darwin", reason="off-macOS behaviour")
def test_cli_validate_exits_3_with_emulated_pass(emu_artifact, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["validate", str(emu_artifact("ios18-fp16")), "--greedy-tokens", "8",
                                      "--report", str(report)])  # fmt: skip
    assert result.exit_code == 3, result.output
    assert "validate emulated pass" in result.output and "validate passed" not in result.output
    data = json.loads(report.read_text())
    assert data["status"] == "emulated-pass" and data["passed"] is False
    assert data["compared"] == DESCRIPTION


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "darwin", reason="off-macOS behaviour")
def test_generate_runs_the_emulator(emu_artifact) -> None:
    from runtime_py.open import open_path

    opened = open_path(emu_artifact("ios18-fp16-internal"))
    backend = opened.backend
    assert backend.name == "coreml-emulated"
    _, state = backend.step(np.array([[2]]), np.array([[0]]), backend.init_state())
    again = backend.state_from_arrays(backend.state_arrays(state))
    assert all(again[k].dtype == state[k].dtype and np.array_equal(again[k], state[k]) for k in state)
    assert {str(v.dtype) for v in state.values()} == {"float32", "float16"}  # explicit and Core ML states


# --- broken packages: the spec check passes, the emulated check fails ---------------------------------


def _emulated_failures(art: Path, model, manifest) -> set[str]:
    """Threshold failures of the emulated ``art``; ``manifest`` read before the package was altered
    (as an export that wrote a wrong package would have hashed it), so the file hashes agree."""
    check_spec(art, manifest)  # raises on a spec mismatch: these packages pass it
    cmp, greedy = compare(CoreMLEmulatedBackend(art, manifest), TorchBackend(model), list(range(2, 22)), 16, 4)
    summary, where = summarize(cmp, greedy)
    return {f.metric for f in check(summary, where, thresholds_for("coreml", manifest.precision))}


@pytest.mark.slow
def test_altered_weight_blob_is_caught(emu_artifact, emu_model, tmp_path: Path) -> None:
    art = tmp_path / "blob"
    shutil.copytree(emu_artifact("ios18-fp32"), art)
    manifest = read_manifest(art)
    assert not _emulated_failures(art, emu_model, manifest)  # the intact copy passes
    blob = art / "model.mlpackage" / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    data = bytearray(blob.read_bytes())
    values = np.frombuffer(bytes(data[len(data) // 2 : len(data) // 2 + 4096]), np.float32).copy()
    data[len(data) // 2 : len(data) // 2 + 4096] = (values * 1.5 + 0.25).astype(np.float32).tobytes()
    blob.write_bytes(bytes(data))
    assert _emulated_failures(art, emu_model, manifest) & {"max_abs_logits", "max_state_abs"}


@pytest.mark.slow
def test_changed_op_constant_is_caught(emu_artifact, emu_model, tmp_path: Path) -> None:
    """An RMSNorm ``rsqrt`` epsilon in the saved spec set to 1.0 (from 1e-12)."""
    art = tmp_path / "attr"
    shutil.copytree(emu_artifact("ios18-fp32"), art)
    manifest = read_manifest(art)
    package = art / "model.mlpackage"
    spec = read_package_spec(package)
    for fname in ("decode", "prefill"):
        function = spec.mlProgram.functions[fname]
        ops = function.block_specializations[function.opset].operations
        eps = next(op.inputs["epsilon"].arguments[0].name for op in ops if op.type == "rsqrt")
        const = next(op for op in ops if op.type == "const" and op.outputs[0].name == eps)
        tensor = const.attributes["val"].immediateValue.tensor
        assert len(tensor.floats.values) == 1
        tensor.floats.values[0] = 1.0
    write_package_spec(package, spec)
    assert _emulated_failures(art, emu_model, manifest) & {"max_abs_logits", "max_state_abs"}


def test_bench_holds_an_emulated_subject_to_no_speed_goal() -> None:
    from runtime_py.bench_goals import compute_goals

    def subject(name: str, backend: str, kind: str = "artifact") -> dict:
        rows = {"decode_tokens_per_s": 2.0, "prefill_tokens_per_s": 30.0, "roofline_fraction": 0.1,
                "decode_flatness": 0.0, "rss_flatness": 0.0}  # fmt: skip
        return {"name": name, "kind": kind, "backend": backend, "precision": "int4", "error": None,
                "summary": rows, "export_stats": None}  # fmt: skip

    goals = compute_goals([subject("cm", "coreml-emulated"), subject("ox", "onnxruntime"),
                           subject("transformers", "transformers", "baseline")])  # fmt: skip
    cm = [g for g in goals if g["subject"] == "cm"]
    assert [g["goal"] for g in cm] == ["speedup_vs_transformers_fp32", "export_peak_rss_bytes"]
    assert cm[0]["met"] is None and "emulator" in cm[0]["note"]
    assert any(g["subject"] == "ox" and g["goal"] == "int4_roofline_fraction" and g["met"] is False for g in goals)
