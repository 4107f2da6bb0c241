"""Core ML from a quantized checkpoint: the checkpoint's own integers and scales, shipped unchanged.

The checkpoints hold perturbed integers (tests/given_weights.py: off round-to-nearest, scales
stretched), so only a package that stores exactly those integers reads back equal.

* read-back: every quantized weight's integers and scales read out of the saved package
  (quantization/coreml_readback.py ``read_integers``) equal the checkpoint's exactly (scales
  after the cast to the dtype the manifest names), the tied head included, for int8 and int4
  on iOS 18 (fp16 and fp32 packages) and int8 on iOS 17 (gates kept as exact fp32 consts);
* numerics: the emulated package (coremltools' op definitions) against the eager model holding
  the dequantized given weights: fp32 package within the fp32 thresholds, fp16 within fp16's;
* end to end through ``rgmobile export`` of the checkpoint folder: manifest
  ``quantization.coreml.given`` and the scale dtypes;
* refusal: an int4 checkpoint on iOS 17, in one line naming --ios 18.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from exporter.artifact.manifest import read_manifest
from exporter.checkpoint.quantized import read_quantized_checkpoint
from exporter.errors import RgMobileError
from quantization.coreml_readback import read_integers, read_weights
from quantization.qweights import GivenQuantization, load_dequantized
from quantization.recipe import load_recipe
from rgmobile.cli import app
from rgmobile.export import ExportOptions, export
from runtime_py.coreml_emulator import CoreMLEmulatedBackend
from runtime_py.thresholds import thresholds_for
from runtime_py.torch_backend import TorchBackend
from runtime_py.validate import check, compare, summarize
from runtime_py.validate_integers import integers_check
from tests.conftest import tiny_config, tiny_model
from tests.given_weights import write_perturbed_checkpoint

# name -> (recipe, rgmobile export arguments); each artifact is exported once, from its checkpoint
# folder, through the CLI. Two layers (one recurrent, one attention block) keep conversion short.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "int8-ios18": ("int8", ["--ios", "18", "--prefill-chunk", "4"]),  # multifunction: decode + prefill
    "int4-ios18-fp32": ("int4", ["--ios", "18", "--prefill-chunk", "1", "--compute-precision", "fp32"]),
    "int8-ios17": ("int8", ["--ios", "17", "--prefill-chunk", "1"]),
}
_BUILT: dict[str, Path] = {}


@pytest.fixture(scope="module")
def gmodel():
    return tiny_model(tiny_config(block_types=("recurrent", "attention")))


@pytest.fixture(scope="module")
def gcheckpoint(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path, gmodel):
    made: dict[str, Path] = {}

    def get(recipe: str) -> Path:
        if recipe not in made:
            out = tmp_path_factory.mktemp("gcm") / f"{recipe}-q"
            made[recipe] = write_perturbed_checkpoint(out, gmodel, load_recipe(recipe), tiny_tokenizer, seed=3)
        return made[recipe]

    return get


@pytest.fixture(scope="module")
def gartifact(tmp_path_factory: pytest.TempPathFactory, gcheckpoint):
    def get(name: str) -> Path:
        if name not in _BUILT:
            recipe, args = VARIANTS[name]
            out = tmp_path_factory.mktemp("gcm") / name
            cmd = ["export", str(gcheckpoint(recipe)), "--format", "coreml", "--out", str(out), *args]
            result = CliRunner().invoke(app, cmd)
            assert result.exit_code == 0, result.output
            _BUILT[name] = out
        return _BUILT[name]

    return get


def given_of(folder: Path) -> GivenQuantization:
    return read_quantized_checkpoint(folder).quantization


def _packages(art: Path) -> list[Path]:
    return sorted({art / p.file for p in read_manifest(art).programs.values()})


@pytest.mark.parametrize("name", list(VARIANTS))
def test_read_back_equals_the_checkpoint_integers(gartifact, gcheckpoint, gmodel, name: str) -> None:
    art = gartifact(name)
    given = given_of(gcheckpoint(VARIANTS[name][0]))
    facts = read_manifest(art).quantization["coreml"]  # type: ignore[index]
    kept = set(facts["kept_float"])
    assert len(given.weights) == 16  # 13 linears, 2 RG-LRU gates, the tied embedding/head
    for package in _packages(art):
        shipped = read_integers(package, gmodel)
        assert len(shipped.weights) + len(kept) == len(given.weights)
        assert shipped.head_tied  # the head linear reads the embedding's constexpr
        for pname, qt in given.weights.items():
            if pname in kept:
                continue
            got = shipped.weights[pname]
            dtype = shipped.scale_dtypes[pname]
            assert got.scheme.bits == qt.scheme.bits, pname
            assert got.block_diagonal == qt.block_diagonal
            assert torch.equal(got.q, qt.q), f"{pname}: integers differ"
            want = torch.from_numpy(qt.scale.numpy().astype(dtype).astype(np.float32))
            assert torch.equal(got.scale, want), f"{pname}: scales differ (after the cast to {dtype})"
        cls_dtypes = facts["scale_dtypes"]
        fp32 = "fp32" in VARIANTS[name][1]
        assert cls_dtypes["linears"] == cls_dtypes["embedding"] == ("float32" if fp32 else "float16")
        if "rglru_gates" in cls_dtypes:
            assert cls_dtypes["rglru_gates"] == "float32"  # the RG-LRU computes in fp32
        if kept:  # iOS 17: the gates are fp32 consts holding exactly q * scale
            assert name == "int8-ios17" and all("rg_lru" in k for k in kept) and len(kept) == 2
            floats = read_weights(package, gmodel).float_weights
            for k in kept:
                assert floats[k].dtype == np.float32
                assert np.array_equal(floats[k], given.weights[k].dequantize().numpy()), k


def test_multifunction_stores_the_integers_once(gartifact, gmodel) -> None:
    art = gartifact("int8-ios18")
    assert set(read_integers(art / "model.mlpackage", gmodel).functions) == {"decode", "prefill"}
    blob = art / "model.mlpackage" / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    ints = sum(p.numel() for p in gmodel.parameters())  # one byte per int8 value, every weight once
    assert blob.stat().st_size < 1.5 * ints  # two copies would be >= 2x


def test_int4_data_is_stored_as_int4(gartifact, gmodel, gcheckpoint) -> None:
    shipped = read_integers(gartifact("int4-ios18-fp32") / "model.mlpackage", gmodel)
    given = given_of(gcheckpoint("int4"))
    linears = [n for n, qt in given.weights.items() if qt.scheme.bits == 4]
    assert linears and all(shipped.weights[n].scheme.bits == 4 for n in linears)
    assert all(shipped.weights[n].scheme == given.weights[n].scheme for n in linears)  # groups of 32


@pytest.mark.parametrize("name,precision", [("int4-ios18-fp32", "fp32"), ("int8-ios18", "fp16"),
                                            ("int8-ios17", "fp16")])  # fmt: skip
def test_emulated_package_matches_the_dequantized_given_model(
    gartifact, gcheckpoint, gmodel, name: str, precision: str
) -> None:
    art = gartifact(name)
    manifest = read_manifest(art)
    given = given_of(gcheckpoint(VARIANTS[name][0]))
    reference = load_dequantized(tiny_model(gmodel.config), given.weights).float().eval()
    cmp, greedy = compare(CoreMLEmulatedBackend(art, manifest), TorchBackend(reference), list(range(2, 10)), 6, 4)
    summary, where = summarize(cmp, greedy)
    failures = check(summary, where, thresholds_for("coreml", precision))
    assert not failures, [f.message() for f in failures]


def test_cli_export_records_given_integers(gartifact, gcheckpoint) -> None:
    m = read_manifest(gartifact("int8-ios18"))
    q = m.quantization
    assert q is not None and q["name"] == "int8" and m.precision == "int8"
    facts = q["coreml"]
    assert facts["given"] is True and facts["method"] == "rtn"
    assert facts["op"] == "constexpr_blockwise_shift_scale" and facts["kept_float"] == []
    assert facts["scale_dtypes"] == {"embedding": "float16", "linears": "float16", "rglru_gates": "float32"}
    assert facts["quantized_consts"] == len(given_of(gcheckpoint("int8")).weights)
    ios17 = read_manifest(gartifact("int8-ios17")).quantization["coreml"]  # type: ignore[index]
    assert ios17["given"] is True and ios17["op"] == "constexpr_affine_dequantize"
    assert ios17["scale_dtypes"] == {"embedding": "float16", "linears": "float16"}


def test_int4_checkpoint_on_ios17_is_refused(gcheckpoint, tmp_path: Path) -> None:
    with pytest.raises(RgMobileError, match="--ios 18") as info:
        export(ExportOptions(out=tmp_path / "x", format="coreml", checkpoint=gcheckpoint("int4"), ios=17))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "x").exists()


def test_int4_per_channel_on_ios17_is_refused() -> None:
    from quantization.coreml import check_recipe
    from quantization.recipe import WeightScheme

    recipe = replace(load_recipe("int8"), linears=WeightScheme(4))
    with pytest.raises(RgMobileError, match="--ios 18") as info:
        check_recipe(recipe, 17)
    assert "\n" not in str(info.value)
    check_recipe(recipe, 18)  # iOS 18 holds it


def test_a_scale_fp16_cannot_hold_is_refused() -> None:
    from quantization.coreml_given import scale_as

    with pytest.raises(RgMobileError, match="--compute-precision fp32"):
        scale_as(np.array([[1e-9], [0.01]], np.float32), "float16", "w")
    assert scale_as(np.array([[1e-9]], np.float32), "float32", "w")[0, 0] == np.float32(1e-9)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_validate_checks_the_integers_against_the_checkpoint(gartifact, gcheckpoint, gmodel, name: str) -> None:
    """validate's check passes on the checkpoint the packages came from; a changed integer is named
    (on iOS 17 a gate's: those ship as float q * scale)."""
    art = gartifact(name)
    given = given_of(gcheckpoint(VARIANTS[name][0]))
    manifest = read_manifest(art)
    record = integers_check(art, manifest, given, gmodel)
    assert record["status"] == "passed", record
    param = next(p for p in given.weights if p.endswith("rg_lru.input_gate_weight"))
    if name != "int8-ios17":
        param = "layers.0.mlp_block.up_proj.weight"
    q = given.weights[param].q.clone()
    q.view(-1)[0] = 1 if q.view(-1)[0] != 1 else 0
    changed = GivenQuantization(given.recipe, {**given.weights, param: replace(given.weights[param], q=q)})
    record = integers_check(art, manifest, changed, gmodel)
    want = "the float weight is not q * scale" if name == "int8-ios17" else "1 integers differ"
    assert record["status"] == "failed" and f"{param}: {want}" in record["detail"], record
