"""Core ML quantization, verified on the weights the packages ship (no Core ML on Linux).

* int8 iOS 17 (two packages) and int4 iOS 18 (one multifunction package) export;
  int4 on iOS 17 is refused, naming --ios 18;
* the spec holds constexpr quantized ops for every linear and the tied embedding/head,
  and no float const of vocab x width size; the iOS 18 functions share their weights;
* the weights read back from the packages and dequantized with our maths match
  ``fake_quantized`` of the recipe (within one fp16 rounding step), and a package with a
  corrupted scale blob or checked against the wrong recipe is rejected;
* ``rgmobile validate`` on Linux reports the check, the emulated program and
  "Core ML runtime predictions: not run" (status "emulated-pass");
* bundled model (slow): size ratio and held-out perplexity of the as-shipped weights.

Each .mlpackage is built once per session.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from exporter.artifact.manifest import read_manifest
from exporter.checkpoint.save import save_hf_folder
from exporter.config import griffin_pattern
from exporter.errors import RgMobileError
from exporter.targets.coreml_convert import package_spec_path, read_package_spec
from quantization.coreml_readback import as_shipped_model, check_weights, read_weights
from quantization.recipe import Recipe, load_recipe
from rgmobile.export import ExportOptions, export
from runtime_py import validate_coreml
from runtime_py.validate import ValidateOptions, validate
from tests.conftest import tiny_config, tiny_model

pytestmark = pytest.mark.slow
CHUNK = 8
VARIANTS = {"int8-ios17": ("int8", 17), "int4-ios18": ("int4", 18)}
_BUILT: dict[str, Path] = {}


@pytest.fixture(scope="session")
def qmodel():
    return tiny_model(tiny_config(block_types=griffin_pattern(3)))


@pytest.fixture(scope="session")
def qcheckpoint(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path, qmodel) -> Path:
    return save_hf_folder(
        qmodel.config, qmodel.state_dict(), tmp_path_factory.mktemp("cmq") / "hf", tokenizer=tiny_tokenizer
    )


@pytest.fixture(scope="session")
def qartifact(tmp_path_factory: pytest.TempPathFactory, qcheckpoint: Path):
    def get(name: str) -> Path:
        if name not in _BUILT:
            quant, ios = VARIANTS[name]
            out = tmp_path_factory.mktemp("cmq") / name
            export(
                ExportOptions(
                    out=out, format="coreml", checkpoint=qcheckpoint, prefill_chunk=CHUNK, ios=ios, quant=quant
                )
            )
            _BUILT[name] = out
        return _BUILT[name]

    return get


def applied(artifact: Path) -> Recipe:
    return Recipe.from_dict(read_manifest(artifact).quantization["coreml"]["applied"])  # type: ignore[index]


def test_int4_on_ios17_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RgMobileError, match="--ios 18"):
        ExportOptions(out=tmp_path / "x", format="coreml", ios=17, quant="int4")


@pytest.mark.parametrize("name", list(VARIANTS))
def test_manifest_and_spec(qartifact, qmodel, name: str) -> None:
    art = qartifact(name)
    m = read_manifest(art)
    quant, ios = VARIANTS[name]
    assert m.precision == quant and m.quantization is not None and m.quantization["name"] == quant
    files = {p.file for p in m.programs.values()}
    assert files == ({"model.mlpackage"} if ios == 18 else {"decode.mlpackage", "prefill.mlpackage"})
    want_op = "constexpr_blockwise_shift_scale" if ios == 18 else "constexpr_affine_dequantize"
    for f in files:
        w = read_weights(art / f, qmodel)
        linears = _classes(qmodel)["linears"]
        assert linears and all(w.op_types.get(n) == want_op for n in linears)
        assert w.op_types["embed_tokens.weight"] == want_op  # the tied gather + head const
        vw = qmodel.config.vocab_size * qmodel.config.width
        assert max(n for _, n, _ in w.float_const_sizes) < vw  # no float copy of the head left
        gates = _classes(qmodel)["rglru_gates"]
        if ios == 18:
            assert all(w.op_types[g] == want_op for g in gates)
        else:  # one scale axis on iOS 17: kept float and reported
            assert not any(g in w.op_types for g in gates)
            assert sorted(m.quantization["coreml"]["kept_float"]) == sorted(gates)


def test_multifunction_shares_quantized_weights(qartifact, qmodel) -> None:
    art = qartifact("int4-ios18")
    weights_file = package_spec_path(art / "model.mlpackage").parent / "weights" / "weight.bin"
    n = {c: sum(dict(qmodel.named_parameters())[p].numel() for p in ps) for c, ps in _classes(qmodel).items()}
    one_copy = n["linears"] / 2 + n["embedding"] + n["rglru_gates"]  # payload of the integers alone
    assert weights_file.stat().st_size < 1.5 * one_copy  # two copies would be >= 2x
    assert set(read_weights(art / "model.mlpackage", qmodel).functions) == {"decode", "prefill"}


def _classes(model):
    from quantization.reference import weight_classes

    return weight_classes(model)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_shipped_weights_match_fake_quant(qartifact, qmodel, name: str) -> None:
    art = qartifact(name)
    for f in {p.file for p in read_manifest(art).programs.values()}:
        result = check_weights(qmodel, read_weights(art / f, qmodel), applied(art))
        assert result.passed, result.summary()
        assert result.max_steps <= 1.1 and result.flip_fraction < 0.05


def test_wrong_recipe_is_rejected(qartifact, qmodel) -> None:
    art = qartifact("int4-ios18")
    result = check_weights(qmodel, read_weights(art / "model.mlpackage", qmodel), load_recipe("int8"))
    assert not result.passed and result.max_steps > 2


def _corrupt_scale(package: Path, const_stem: str) -> None:
    """Double the fp16/fp32 scale blob of one constexpr op inside weight.bin."""
    spec = read_package_spec(package)
    func = next(iter(spec.mlProgram.functions.values()))
    block = next(iter(func.block_specializations.values()))
    op = next(o for o in block.operations if o.outputs[0].name == const_stem + "_quantized")
    value = op.inputs["scale"].arguments[0].value  # constexpr inputs are bound inline, as blobs
    assert value.WhichOneof("value") == "blobFileValue"
    offset = value.blobFileValue.offset
    path = package_spec_path(package).parent / "weights" / "weight.bin"
    data = bytearray(path.read_bytes())
    _sentinel, mil_dtype, size, data_offset = struct.unpack_from("<IIQQ", data, offset)
    dtype = {1: np.float16, 2: np.float32}.get(mil_dtype, np.float16)
    vals = np.frombuffer(bytes(data[data_offset : data_offset + size]), dtype) * 2
    data[data_offset : data_offset + size] = vals.astype(dtype).tobytes()
    path.write_bytes(bytes(data))


def test_corrupted_scale_is_rejected(qartifact, qmodel, tmp_path: Path) -> None:
    broken = tmp_path / "model.mlpackage"
    shutil.copytree(qartifact("int4-ios18") / "model.mlpackage", broken)
    _corrupt_scale(broken, "p_model_layers_0_mlp_block_up_proj_weight_to_fp16")
    result = check_weights(qmodel, read_weights(broken, qmodel), applied(qartifact("int4-ios18")))
    assert not result.passed and result.max_steps > 2, result.summary()


def test_validate_reports_shipped_weights_and_no_predictions(qartifact) -> None:
    report = validate(ValidateOptions(artifact=qartifact("int4-ios18"), steps=4, greedy_tokens=4, quality=False))
    checks = {c["name"]: c for c in report.checks}
    assert checks[validate_coreml.SHIPPED_WEIGHTS]["status"] == "passed", checks
    assert checks[validate_coreml.PREDICTIONS]["status"] == validate_coreml.NOT_RUN
    assert checks[validate_coreml.EMULATED]["status"] == "passed", checks
    assert report.status == validate_coreml.EMULATED_PASS


# --- the bundled model: sizes and quality of the as-shipped weights --------------------------------


def _quality(art: Path, shipped, model, max_tokens: int = 2048):
    from exporter.checkpoint.loader import default_checkpoint
    from runtime_py.quality import QualityOptions, evaluate_quality
    from runtime_py.torch_backend import TorchBackend

    return evaluate_quality(TorchBackend(shipped), TorchBackend(model), read_manifest(art), art, default_checkpoint(),
                            QualityOptions(max_tokens=max_tokens, greedy_prompts=2), "")  # fmt: skip


@pytest.mark.parametrize("quant,ios", [("none", 18), ("int8", 17), ("int4", 18)])
def test_bundled_quality(tmp_path_factory: pytest.TempPathFactory, quant: str, ios: int) -> None:
    from exporter.checkpoint.loader import default_checkpoint, load_checkpoint

    model = load_checkpoint(default_checkpoint()).model.float().eval()
    art = tmp_path_factory.mktemp("bundled") / f"{quant}-ios{ios}"
    export(ExportOptions(out=art, format="coreml", prefill_chunk=1, ios=ios, quant=quant))
    m = read_manifest(art)
    weights = read_weights(art / m.programs["decode"].file, model)
    shipped = as_shipped_model(model, weights)
    if quant != "none":
        check = check_weights(model, weights, applied(art))
        assert check.passed, check.summary()
    q = _quality(art, shipped, model)
    mt = q.metrics
    print(f"\n| Core ML {quant} iOS{ios} | {q.size['artifact_bytes']:,} B | {q.size['ratio']:.3f} | "
          f"{mt['ppl_artifact']:.3f} vs {mt['ppl_reference']:.3f} ({mt['ppl_increase_pct']:+.2f}%) | "
          f"{mt['top1_agreement_text']:.4f} | KL {mt['kl_mean']:.2e} | SQNR {mt['sqnr_db']:.1f} dB |")  # fmt: skip
    limits = {"none": (0.55, 0.5, 0.98), "int8": (0.3, 0.5, 0.97), "int4": (0.2, 3.0, 0.9)}[quant]
    assert q.size["ratio"] < limits[0]
    assert mt["ppl_increase_pct"] < limits[1] and mt["top1_agreement_text"] > limits[2]
