"""Core ML export, checked as far as Linux allows.

* conversion: a tiny random model (3 layers: recurrent, recurrent, attention; window 16)
  converts for iOS 17 and 18, fp16 and fp32 compute, explicit and internal state;
* spec: every saved .mlpackage matches its manifest (names, dtypes, shapes,
  deployment target, functions), read from the spec protobuf;
* parity: the exact programs handed to coremltools (after every Core ML rewrite)
  run in PyTorch against the eager reference over prefill chunks + 3 x window
  decode steps, and a broken rewrite is caught;
* Core ML predictions need macOS: off macOS the backend opens the emulator
  (tests/test_coreml_emulator.py) and ``rgmobile validate`` reports the runtime's
  predictions as "not run" with status "emulated-pass", never "passed".

Every .mlpackage is built once per session (conversion costs seconds per program).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from exporter.artifact.manifest import read_manifest
from exporter.checkpoint.save import save_hf_folder
from exporter.config import griffin_pattern
from exporter.errors import RgMobileError
from exporter.step.iospec import build_iospec
from exporter.step.step import export_step
from exporter.targets import coreml_rewrites
from exporter.targets.coreml_check import check_spec
from exporter.targets.coreml_convert import build_program, feature_map, read_package_spec
from exporter.targets.coreml_memory import StageMemory
from exporter.targets.coreml_parity import ProgramBackend, build_programs
from exporter.upstream import coremltools_9_0
from rgmobile.cli import app
from rgmobile.export import ExportOptions, export
from runtime_py.torch_backend import TorchBackend
from runtime_py.validate import ValidateOptions, compare, summarize, validate
from tests.conftest import tiny_config, tiny_model

CHUNK = 8
BUNDLED_CONFIG = Path(__file__).resolve().parent.parent / "exporter" / "bundled" / "brown-small" / "config.json"
# (ios, compute precision, state, prefill chunk); chunk 1 = decode program only (one conversion).
VARIANTS = {
    "ios18-fp16": (18, "fp16", "explicit", CHUNK),
    "ios17-fp32": (17, "fp32", "explicit", CHUNK),
    "ios18-fp32": (18, "fp32", "explicit", 1),
    "ios17-fp16": (17, "fp16", "explicit", 1),
    "ios18-fp16-internal": (18, "fp16", "internal", CHUNK),
}
_BUILT: dict[str, Path] = {}


def small_config():
    return tiny_config(block_types=griffin_pattern(3))


@pytest.fixture(scope="session")
def coreml_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path) -> Path:
    model = tiny_model(small_config())
    return save_hf_folder(
        model.config, model.state_dict(), tmp_path_factory.mktemp("cm") / "hf", tokenizer=tiny_tokenizer
    )


@pytest.fixture(scope="session")
def artifact(tmp_path_factory: pytest.TempPathFactory, coreml_checkpoint: Path):
    """variant name -> exported artifact folder (each built once per session, on first use)."""

    def get(name: str) -> Path:
        if name not in _BUILT:
            ios, precision, state, chunk = VARIANTS[name]
            out = tmp_path_factory.mktemp("coreml") / name
            export(ExportOptions(out=out, format="coreml", checkpoint=coreml_checkpoint, prefill_chunk=chunk,
                                 ios=ios, compute_precision=precision, coreml_state=state))  # fmt: skip
            _BUILT[name] = out
        return _BUILT[name]

    return get


# --- rewrites and options (no conversion) ------------------------------------------------


def test_feature_names_are_identifiers() -> None:
    assert coreml_rewrites.feature_name("past_key_values.12.key") == "past_key_values_12_key"
    assert coreml_rewrites.feature_name("present.0.conv_state") == "present_0_conv_state"
    fmap = feature_map(build_iospec(small_config()), "internal")
    assert fmap["past_key_values.2.key"] == {"name": "past_key_values_2_key", "kind": "state", "dtype": "float16"}
    assert fmap["present.2.key"]["name"] == "past_key_values_2_key"  # the same state, read and written
    assert fmap["input_ids"]["dtype"] == "int32" and fmap["present.0.recurrent_state"]["kind"] == "output"


@torch.no_grad()
def test_rewrites_make_the_program_convertible_and_keep_its_values() -> None:
    exported = export_step(tiny_model(small_config()), 1)
    raw = exported.run_decompositions({})
    assert "aten.alias.default" in coreml_rewrites.unsupported_ops(raw)
    with pytest.raises(RgMobileError, match="no converter"):
        coreml_rewrites.check_convertible(raw)
    program, counts = coreml_rewrites.rewrite_program(exported)
    assert counts["aten.alias.default"] >= 1
    assert coreml_rewrites.unsupported_ops(program) == []


class _SelectScalar(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, x, -1e30)  # aten.where.ScalarOther: no converter in coremltools 9.0


@torch.no_grad()
def test_where_with_a_scalar_other_is_rewritten_to_the_same_values() -> None:
    x = torch.tensor([[-2.0, 0.0, 3.0]])
    exported = torch.export.export(_SelectScalar(), (x,))
    assert "aten.where.ScalarOther" in coreml_rewrites.unsupported_ops(exported.run_decompositions({}))
    program, counts = coreml_rewrites.rewrite_program(exported)
    assert counts == {"aten.where.ScalarOther": 1}
    assert coreml_rewrites.unsupported_ops(program) == []
    assert torch.equal(program.module()(x), _SelectScalar()(x))


def test_bf16_weights_are_cast_to_fp32() -> None:
    model = tiny_model(small_config()).to(torch.bfloat16)
    changed = coreml_rewrites.float32_weights_(model)
    assert changed and all(p.dtype == torch.float32 for p in model.parameters())


def test_options_are_checked() -> None:
    with pytest.raises(RgMobileError, match="needs --ios 18"):
        ExportOptions(out=Path("x"), format="coreml", ios=17, coreml_state="internal")
    with pytest.raises(RgMobileError, match="--ios must be one of"):
        ExportOptions(out=Path("x"), format="coreml", ios=16)
    with pytest.raises(RgMobileError, match="--compute-precision"):
        ExportOptions(out=Path("x"), format="coreml", compute_precision="int8")


# --- memory: chunked coremltools checks (exporter/targets/coremltools_9_0.py) ---------------------


def _original_overflow(value: np.ndarray) -> bool:
    """coremltools 9.0 ``FP16ComputePrecision.fp16_overflow`` on one const value."""
    a = np.abs(np.expand_dims(value, 0))
    return bool(np.max(a[np.where(a < 1e38)], initial=0.0) > 65504)


def test_chunked_fp16_overflow_matches_coremltools(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coremltools_9_0, "CHUNK", 7)  # many chunks, a ragged last one
    rng = np.random.default_rng(0)
    base = rng.normal(size=(5, 9)).astype(np.float32)
    cases = [base, np.float32(3.0), np.float32(7e4), np.zeros((0, 3), np.float32)]
    for where, v in [((4, 8), 7e4), ((0, 0), -7e4), ((2, 3), np.inf), ((1, 1), -np.inf), ((3, 3), np.nan),
                     ((4, 7), 1e38), ((4, 7), 9.9e37), ((2, 2), 65504.0)]:  # fmt: skip
        x = base.copy()
        x[where] = v
        cases.append(x)
    cases.append(base.T)  # not contiguous
    for x in cases:
        assert coremltools_9_0.exceeds_fp16(x) == _original_overflow(np.asarray(x)), x


def test_chunked_allclose_matches_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coremltools_9_0, "CHUNK", 5)
    rng = np.random.default_rng(1)
    a = rng.normal(size=(6, 7)).astype(np.float16)
    q = rng.integers(-8, 8, size=(6, 7)).astype(np.int8)
    pairs = [(a, a.copy()), (a, a + np.float16(1e-3)), (q, q.copy()), (q, np.where(q == 0, 1, q).astype(np.int8))]
    nan = a.copy()
    nan[5, 6] = np.nan
    pairs += [(nan, nan.copy()), (a, a[:1])]  # the last broadcasts: plain np.allclose
    for x, y in pairs:
        for kw in ({"rtol": 0.0, "atol": 1e-12}, {"rtol": 0.0, "atol": 1e-2}, {"equal_nan": True}):
            assert coremltools_9_0.chunked_allclose(x, y, **kw) == np.allclose(x, y, **kw), (x, y, kw)


def test_lean_coremltools_patches_and_restores() -> None:
    import importlib

    from coremltools.converters.mil.mil.passes.defs.quantization import FP16ComputePrecision

    dedup = importlib.import_module("coremltools.converters.mil.mil.passes.defs.cleanup.const_deduplication")
    before = FP16ComputePrecision.__dict__["fp16_overflow"]
    with coremltools_9_0.lean_coremltools():
        assert dedup.np.allclose is coremltools_9_0.chunked_allclose and dedup.np.sum is np.sum
        assert FP16ComputePrecision.fp16_overflow is coremltools_9_0._fp16_overflow
        with coremltools_9_0.lean_coremltools():  # nested: a no-op
            pass
        assert dedup.np.allclose is coremltools_9_0.chunked_allclose
    assert dedup.np is np and FP16ComputePrecision.__dict__["fp16_overflow"] is before


def _blob_bytes(writer_fn, cases: list[tuple[object, np.ndarray]], path: Path) -> tuple[list[int], bytes]:
    """Every case written by ``writer_fn`` into one fresh blob file: the offsets and the file's bytes."""
    import types as pytypes

    from coremltools.libmilstoragepython import _BlobStorageWriter

    writer = _BlobStorageWriter(str(path))
    offsets = [writer_fn(pytypes.SimpleNamespace(dtype=mil, val=val), writer) for mil, val in cases]
    del writer  # flushes and closes the file
    return offsets, path.read_bytes()


def _weight_writer_cases() -> list[tuple[object, np.ndarray]]:
    from coremltools.converters.mil.mil import types

    rng = np.random.default_rng(2)
    base = rng.normal(size=(7, 13, 3)) * 100  # odd sizes: not a multiple of the 64-byte blob alignment
    full_byte = [
        (types.fp16, np.float16), (types.fp32, np.float32), (types.int8, np.int8), (types.uint8, np.uint8),
        (types.int16, np.int16), (types.uint16, np.uint16), (types.int32, np.int32), (types.uint32, np.uint32),
    ]  # fmt: skip
    cases: list[tuple[object, np.ndarray]] = []
    for mil, dt in full_byte:
        a = base.astype(dt)
        cases += [(mil, a), (mil, a.transpose(2, 0, 1)), (mil, a[::2, 1:, ::-1]), (mil, a[3:4, 5:6, 1:2]),
                  (mil, np.asfortranarray(a)), (mil, a.reshape(-1)[1:]), (mil, np.asarray(a[0, 0, 0]))]  # fmt: skip
    special = base.astype(np.float16).reshape(-1)[:6].copy()
    special[:] = [np.nan, -np.inf, np.inf, -0.0, 65504, 6e-8]  # fp16 bits pass through unchanged
    cases.append((types.fp16, special))
    cases.append((types.fp16, base.astype(">f2")))  # big-endian: the same raw bytes as the original
    small = rng.integers(0, 16, size=(5, 9)).astype(np.uint8)  # sub-byte: delegated to coremltools
    cases += [(types.int4, (small.astype(np.int8) - 8)), (types.uint4, small), (types.uint4, small.T),
              (types.uint2, small % 4), (types.uint1, small % 2)]  # fmt: skip
    return cases


def test_lean_weight_writer_writes_the_same_blob(tmp_path: Path) -> None:
    from coremltools.converters.mil.backend.mil import helper

    original = helper._get_offset_by_writing_data
    cases = _weight_writer_cases()
    want = _blob_bytes(original, cases, tmp_path / "original.bin")
    with coremltools_9_0.lean_coremltools():
        assert helper._get_offset_by_writing_data is not original
        with coremltools_9_0.lean_coremltools():  # nested: a no-op, the outer patch stays
            patched = helper._get_offset_by_writing_data
            assert patched.func is coremltools_9_0._lean_offset_by_writing_data and patched.args == (original,)
        assert helper._get_offset_by_writing_data is patched
        got = _blob_bytes(helper._get_offset_by_writing_data, cases, tmp_path / "lean.bin")
    assert helper._get_offset_by_writing_data is original
    assert got[0] == want[0] and got[1] == want[1]
    for i, (mil, val) in enumerate(cases):  # one at a time, so a mismatch names its case
        one = _blob_bytes(original, [(mil, val)], tmp_path / f"o{i}.bin")
        assert _blob_bytes(patched, [(mil, val)], tmp_path / f"l{i}.bin") == one, (i, val.dtype, val.shape)


def test_lean_weight_writer_skips_the_copies(tmp_path: Path) -> None:
    import tracemalloc

    from coremltools.converters.mil.backend.mil import helper
    from coremltools.converters.mil.mil import types

    original = helper._get_offset_by_writing_data
    weight = np.ones((1024, 1024), np.float16)  # 2 MB
    with coremltools_9_0.lean_coremltools():
        patched = helper._get_offset_by_writing_data
    peaks = []
    for fn in (original, patched):

        def traced(var, writer, fn=fn):  # the writer call alone, not reading the file back
            tracemalloc.start()
            try:
                return fn(var, writer)
            finally:
                peaks.append(tracemalloc.get_traced_memory()[1])
                tracemalloc.stop()

        _blob_bytes(traced, [(types.fp16, weight)], tmp_path / f"{len(peaks)}.bin")
    assert peaks[0] >= 2 * weight.nbytes and peaks[1] < weight.nbytes // 4, peaks
    with pytest.raises(TypeError, match="Unsupported type"):  # float64: the original's error
        _blob_bytes(patched, [(types.fp32, np.zeros(3))], tmp_path / "f64.bin")


def test_stage_memory_records_stages() -> None:
    mem = StageMemory(interval=0.01)
    mem.mark("one")
    mem.mark("two", collect=False)
    mem.close()
    assert [s["stage"] for s in mem.stages] == ["one", "two"]
    if sys.platform.startswith("linux"):
        assert all(s["peak_gb"] > 0 and s["end_gb"] > 0 for s in mem.stages)


def _program_parity(model, lens: dict[str, int], state: str, steps: int) -> dict:
    backend = ProgramBackend(build_programs(model, lens, state), model.config, state)  # type: ignore[arg-type]
    prompt = list(np.random.default_rng(0).integers(3, model.config.vocab_size, 2 * CHUNK + 3))
    cmp, greedy = compare(backend, TorchBackend(model), prompt, steps=steps, greedy_tokens=4)
    summary, _ = summarize(cmp, greedy)
    return summary


def test_pre_conversion_parity_catches_a_broken_rewrite(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parity check can fail: a reciprocal rewrite that forgets the sign of the power is caught."""
    model = tiny_model(small_config())

    def wrong(graph, node):  # reciprocal(x) -> pow(x, 1): x, not 1 / x
        with graph.inserting_before(node):
            new = graph.call_function(torch.ops.aten.pow.Tensor_Scalar, (node.args[0], 1.0))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        graph.erase_node(node)

    good = _program_parity(model, {"decode": 1}, "explicit", steps=model.config.window)
    assert good["positions"] > model.config.window  # the ring buffer wraps
    assert good["max_abs_logits"] <= 1e-5 and good["max_state_abs"] <= 1e-5
    monkeypatch.setitem(coreml_rewrites.REWRITES, torch.ops.aten.reciprocal.default, wrong)
    bad = _program_parity(model, {"decode": 1}, "explicit", steps=2)
    assert bad["max_abs_logits"] > 1e-2


def test_stateful_program_updates_fp16_kv_buffers_in_place() -> None:
    program = build_program(tiny_model(small_config()), 1, "internal")
    mutated = sorted(program.graph_signature.buffers_to_mutate.values())
    assert mutated == ["past_key_values_2_key", "past_key_values_2_value"]  # the one attention layer
    assert all(program.state_dict[n].dtype == torch.float16 for n in mutated)


# --- conversion and spec checks ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VARIANTS))
def test_converts_and_spec_matches_manifest(artifact, name: str) -> None:
    ios, precision, state, chunk = VARIANTS[name]
    path = artifact(name)
    manifest = read_manifest(path)
    d = manifest.format_details
    assert d["deployment_target"] == f"iOS{ios}" and d["compute_precision"] == precision and d["state"] == state
    assert manifest.precision == precision
    lines = check_spec(path, manifest).lines
    assert len(lines) == 1 + len(manifest.programs)
    stages = [s["stage"] for s in d["memory_stages"]]  # where the export's memory went
    assert {f"{n}: ct.convert" for n in manifest.programs} <= set(stages)
    assert ("save_multifunction" in stages) == (ios == 18)
    files = {p.file for p in manifest.programs.values()}
    if ios == 18:
        assert files == {"model.mlpackage"}
        assert {p.entry for p in manifest.programs.values()} == set(manifest.programs)
    else:
        assert files == {f"{n}.mlpackage" for n in manifest.programs}
    package = path / sorted(files)[0]
    spec = read_package_spec(package)
    assert spec.specificationVersion == {17: 8, 18: 9}[ios]
    meta = spec.description.metadata
    assert meta.author.startswith("rgmobile") and "RecurrentGemma" in meta.shortDescription
    assert json.loads(meta.userDefined["rgmobile.config"]) == manifest.config.to_dict()
    assert meta.userDefined["rgmobile.window"] == "16"
    desc = spec.description.functions[0] if ios == 18 else spec.description
    assert all(f.shortDescription for f in list(desc.input) + list(desc.output) + list(desc.state))
    # fp16 compute: linear layers in fp16, RG-LRU (sigmoid/exp gates) and RoPE (sin/cos) kept fp32.
    dtypes = _op_dtypes(spec, "decode" if ios == 18 else "main")
    assert dtypes["sin"] == dtypes["cos"] == dtypes["sigmoid"] == dtypes["exp"] == {"FLOAT32"}
    assert dtypes["linear"] == ({"FLOAT16"} if precision == "fp16" else {"FLOAT32"})
    # fp16 compute stores fp16 weights (about 2 bytes per parameter), fp32 about 4; prefill and decode
    # functions of a multifunction package share one copy.
    params = manifest.config.parameter_counts()["total"]
    weights = (package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").stat().st_size
    per_param = weights / params
    assert (1.9 < per_param < 2.3) if precision == "fp16" else (3.9 < per_param < 4.5), per_param


def _op_dtypes(spec, function: str) -> dict[str, set[str]]:
    """MIL op type -> the dtypes of its first output, in one function of an ML Program."""
    from coremltools.proto import MIL_pb2

    f = spec.mlProgram.functions[function]
    out: dict[str, set[str]] = {}
    for op in f.block_specializations[f.opset].operations:
        if op.outputs:  # a state update has none
            out.setdefault(op.type, set()).add(MIL_pb2.DataType.Name(op.outputs[0].type.tensorType.dataType))
    return out


def test_fp32_islands_are_found_from_stack_traces() -> None:
    from exporter.model import layers
    from exporter.targets.coreml_precision import traced_from_fp32_function

    f = layers.__file__
    rg_line = layers.RGLRU.forward.__code__.co_firstlineno + 3
    inside = f'File "{f}", line {rg_line}, in forward\n    gate_a = torch.sigmoid(...)'
    call = f'File "{f}", line 186, in forward\n    q = apply_rope(q, positions, self.rotary_dim, self.theta)'
    other = f'File "{f}", line 40, in forward\n    return x * torch.rsqrt(var + self.eps) * (self.weight + 1.0)'
    assert traced_from_fp32_function(inside) and traced_from_fp32_function(call)
    assert not traced_from_fp32_function(other) and not traced_from_fp32_function("")


@pytest.mark.slow
def test_internal_state_variant_holds_kv_as_fp16_states(artifact) -> None:
    path = artifact("ios18-fp16-internal")
    spec = read_package_spec(path / "model.mlpackage")
    for function in spec.description.functions:
        states = [(s.name, s.type.stateType.arrayType.dataType) for s in function.state]
        assert [n for n, _ in states] == ["past_key_values_2_key", "past_key_values_2_value"]
        assert {t for _, t in states} == {65552}  # FLOAT16
        assert "past_key_values_0_recurrent_state" in [i.name for i in function.input]
        assert "present_2_key" not in [o.name for o in function.output]


@pytest.mark.slow
def test_spec_check_catches_a_manifest_mismatch(artifact) -> None:
    path = artifact("ios17-fp32")
    manifest = read_manifest(path)
    features = json.loads(json.dumps(manifest.format_details["features"]))
    features["logits"]["dtype"] = "float16"
    broken = dataclasses.replace(manifest, format_details={**manifest.format_details, "features": features})
    with pytest.raises(RgMobileError, match="output #0"):
        check_spec(path, broken)
    wrong_target = dataclasses.replace(
        manifest, format_details={**manifest.format_details, "deployment_target": "iOS18"}
    )
    with pytest.raises(RgMobileError, match="specification version"):
        check_spec(path, wrong_target)


# --- validate and the backend off macOS ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "darwin", reason="off-macOS behaviour")
def test_backend_off_macos_is_the_emulator(artifact) -> None:
    from runtime_py.open import open_path

    assert open_path(artifact("ios18-fp16")).backend.name == "coreml-emulated"


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "darwin", reason="off-macOS behaviour")
def test_cli_validate_reports_predictions_not_run(artifact, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["validate", str(artifact("ios18-fp16")), "--greedy-tokens", "8",
                                      "--report", str(report)])  # fmt: skip
    assert result.exit_code == 3, result.output
    assert "Core ML runtime predictions" in result.output and "not run" in result.output
    assert "validate passed" not in result.output
    data = json.loads(report.read_text())
    assert data["status"] == "emulated-pass" and data["passed"] is False
    checks = {c["name"]: c["status"] for c in data["checks"]}
    assert checks == {"Core ML spec vs manifest": "passed",
                      "Core ML program: emulated (coremltools op definitions)": "passed",
                      "pre-conversion program vs PyTorch reference": "passed",
                      "Core ML runtime predictions": "not run"}  # fmt: skip
    assert data["summary"]["max_abs_logits"] <= 5e-2  # the emulated fp16 package (fp16 thresholds)
    assert data["summary"]["positions"] >= 3 * 16 and data["prefill_chunk"] == CHUNK


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "darwin", reason="off-macOS behaviour")
def test_validate_off_macos_checks_the_stateful_program(artifact) -> None:
    """Internal state: the program with fp16 KV buffers (and their in-place updates) vs the reference.

    (The explicit-state program depends only on t, not on --ios or precision: the CLI test covers it.)
    """
    report = validate(ValidateOptions(artifact=artifact("ios18-fp16-internal"), greedy_tokens=8))
    assert report.status == "emulated-pass" and not report.passed and not report.failures
    assert report.compared == "Core ML program: emulated (coremltools op definitions)"
    assert [c["status"] for c in report.checks] == ["passed", "passed", "passed", "not run"]
    assert report.summary["positions"] >= 3 * 16
    program = next(c for c in report.checks if c["name"].startswith("pre-conversion"))
    assert program["status"] == "passed"


# --- the bundled model ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    not BUNDLED_CONFIG.is_file(), reason="the bundled model (exporter/bundled/brown-small) is not there yet"
)
@pytest.mark.parametrize(("ios", "precision"), [(18, "fp16"), (17, "fp32")])
def test_bundled_model_converts(tmp_path: Path, ios: int, precision: str) -> None:
    """The bundled model converts for iOS 18 (multifunction, fp16) and iOS 17 (fp32), decode program only
    to save time here; the spec and the pre-conversion program are then checked by ``validate``."""
    from exporter.checkpoint.loader import default_checkpoint

    out = tmp_path / "bundled-coreml"
    options = ExportOptions(
        out=out, format="coreml", checkpoint=default_checkpoint(), prefill_chunk=1, ios=ios,
        compute_precision=precision,
    )  # fmt: skip
    manifest = export(options)
    assert manifest.format_details["deployment_target"] == f"iOS{ios}" and manifest.precision == precision
    package = "model.mlpackage" if ios == 18 else "decode.mlpackage"
    spec = read_package_spec(out / package)
    assert spec.description.metadata.userDefined["rgmobile.window"] == str(manifest.config.window)
    report = validate(ValidateOptions(artifact=out))  # prompt + 3 x window decode steps, emulated
    assert report.status == "emulated-pass" and not report.failures, [f.message() for f in report.failures]
    assert [c["status"] for c in report.checks] == ["passed", "passed", "passed", "not run"]
    print(f"\nbundled Core ML iOS{ios} {precision}, emulated: {report.summary}")
