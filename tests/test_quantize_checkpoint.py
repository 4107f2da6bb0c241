"""The quantized checkpoint (exporter/checkpoint/quantized.py) and ``rgmobile quantize`` (rgmobile/quantize.py)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from exporter.checkpoint.loader import BUNDLED_DIR, load_checkpoint
from exporter.checkpoint.quantized import (
    QuantizationConfig,
    pack_int4,
    read_quantized_checkpoint,
    unpack_int4,
    write_quantized_checkpoint,
)
from exporter.errors import RgMobileError
from quantization.qweights import quantize_weights
from quantization.recipe import load_recipe
from quantization.reference import fake_quantized
from rgmobile.cli import app
from tests.conftest import tiny_model

runner = CliRunner()
LINEAR = "model.layers.0.mlp_block.gate_proj.weight"  # int4 per group under the int4 recipe
EMBED = "model.embed_tokens.weight"  # int8 per channel under int4
GATE = "model.layers.0.temporal_block.rg_lru.input_gate_weight"  # block-diagonal, int8


def test_int4_packing_is_low_nibble_first_value_plus_8() -> None:
    q = torch.tensor([[-8, 7, 0, -1]], dtype=torch.int8)
    packed = pack_int4(q)
    # (-8 + 8) | (7 + 8) << 4 = 0xF0; (0 + 8) | (-1 + 8) << 4 = 0x78
    assert packed.dtype == torch.uint8 and packed.tolist() == [[0xF0, 0x78]]
    every = torch.randint(-8, 8, (3, 5, 64), dtype=torch.int8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(unpack_int4(pack_int4(every)), every)
    with pytest.raises(RgMobileError, match="odd"):
        pack_int4(torch.zeros(2, 3, dtype=torch.int8))


def _write(folder: Path, tokenizer: Path, recipe_name: str = "int4", embedding_bits: int | None = None):
    model = tiny_model()
    recipe = load_recipe(recipe_name).with_options(embedding_bits=embedding_bits)
    weights = quantize_weights(model, recipe)
    write_quantized_checkpoint(folder, model, QuantizationConfig(recipe), weights, tokenizer)
    return model, recipe, weights


@pytest.mark.parametrize(("recipe", "embedding_bits"), [("int8", None), ("int4", None), ("int4", 4)])
def test_round_trip_keeps_exact_integers_and_scales(tmp_path: Path, tiny_tokenizer: Path, recipe, embedding_bits):
    model, rec, weights = _write(tmp_path / "q", tiny_tokenizer, recipe, embedding_bits)
    read = read_quantized_checkpoint(tmp_path / "q")
    assert read.quantization.recipe == rec and read.quantization.method == "rtn"
    assert set(read.quantization.weights) == set(weights)
    for name, qt in weights.items():
        back = read.quantization.weights[name]
        assert torch.equal(back.q, qt.q) and torch.equal(back.scale, qt.scale), name
        assert back.scheme == qt.scheme and back.block_diagonal == qt.block_diagonal
    stored = load_file(str(tmp_path / "q" / "model.safetensors"))
    if rec.linears is not None and rec.linears.bits == 4:  # packed: half the columns, uint8
        assert stored[LINEAR + ".qweight"].dtype == torch.uint8
        assert stored[LINEAR + ".qweight"].shape[-1] * 2 == weights[LINEAR[6:]].q.shape[-1]
    # the loaded checkpoint is the quantized eager reference: fake-quantized weights, float rest untouched
    ckpt = load_checkpoint(tmp_path / "q")
    assert ckpt.quantization is not None
    expected = fake_quantized(model, rec).state_dict()
    for name, value in ckpt.model.state_dict().items():
        assert torch.equal(value, expected[name]), name


def _edit_tensors(folder: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(str(folder / "model.safetensors"))
    edit(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))


def _edit_qconfig(folder: Path, **changes: object) -> None:
    data = json.loads((folder / "config.json").read_text())
    data["quantization_config"].update(changes)
    (folder / "config.json").write_text(json.dumps(data))


def _truncate(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:5000])


def _set(name: str, value: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        def apply(t: dict[str, torch.Tensor]) -> None:
            t[name] = value(t.get(name, torch.zeros(0)))

        _edit_tensors(folder, apply)

    return edit


def _drop(name: str) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        def apply(t: dict[str, torch.Tensor]) -> None:
            del t[name]

        _edit_tensors(folder, apply)

    return edit


def _scale_nan(s: torch.Tensor) -> torch.Tensor:
    s = s.clone()
    s[0, 0] = float("nan")
    return s


BAD: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated safetensors": (_truncate, "corrupt or truncated"),
    "missing scales": (_drop(LINEAR + ".scales"), f"missing tensor {LINEAR}.scales"),
    "missing qweight": (_drop(EMBED + ".qweight"), f"missing tensor {EMBED}.qweight"),
    "missing float tensor": (_drop("model.final_norm.weight"), "1 missing (e.g. final_norm.weight)"),
    "extra quantized tensor": (
        _set("model.final_norm.weight.qweight", lambda t: torch.zeros(4, dtype=torch.int8)),
        "does not quantize model.final_norm.weight",
    ),
    "quantized weight stored in float": (_set(LINEAR, lambda t: torch.zeros(2)), "stored in float"),
    # With these layouts every stored byte is a legal integer (int8: -128..127; a nibble: -8..7),
    # so out-of-range values can only arrive in a wider integer type, which is refused.
    "8-bit integers outside int8": (
        _set(EMBED + ".qweight", lambda q: q.to(torch.int16) + 300),
        "must be int8",
    ),
    "4-bit values not packed": (_set(LINEAR + ".qweight", unpack_int4), "must be uint8"),
    "mis-shaped qweight": (_set(GATE + ".qweight", lambda q: q[:, :-1]), "the config needs"),
    "scale shape": (_set(LINEAR + ".scales", lambda s: s[:, :-1]), "does not fit"),
    "negative scale": (_set(EMBED + ".scales", lambda s: -s), "negative or non-finite"),
    "nan scale": (_set(LINEAR + ".scales", _scale_nan), "negative or non-finite"),
    "scales not float32": (_set(LINEAR + ".scales", lambda s: s.half()), "must be float32"),
    "newer format_version": (lambda f: _edit_qconfig(f, format_version=2), "upgrade rgmobile"),
    "other quant_method": (lambda f: _edit_qconfig(f, quant_method="gptq"), "not supported"),
    "unknown method": (lambda f: _edit_qconfig(f, method="awq"), "method must be one of"),
    "bad recipe": (lambda f: _edit_qconfig(f, recipe={"name": "x", "linears": {"bits": 3}}), "bits must be 4 or 8"),
}


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path) -> Path:
    folder = tmp_path_factory.mktemp("qgood") / "q"
    _write(folder, tiny_tokenizer)
    return folder


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_quantized_folder_is_one_clear_line(case: str, tmp_path: Path, good_folder: Path) -> None:
    make, needle = BAD[case]
    folder = tmp_path / "q"
    shutil.copytree(good_folder, folder)
    make(folder)
    with pytest.raises(RgMobileError) as info:
        load_checkpoint(folder)
    message = str(info.value)
    assert "\n" not in message and needle in message, message
    res = runner.invoke(app, ["info", str(folder)])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output


# --- rgmobile quantize ---------------------------------------------------------------------------
def _heldout_checkpoint(tmp_path: Path, tiny_checkpoint: Path) -> Path:
    """The tiny checkpoint with a heldout.txt beside it (words its tokenizer was trained on)."""
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_checkpoint, folder)
    lines = [f"the {w} cat sat on the mat and ran far away from the big house {i}." for i, w in
             enumerate(["dog", "tree", "river", "stone"] * 20)]  # fmt: skip
    (folder / "heldout.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_quantize_cli_on_tiny_checkpoint(tmp_path: Path, tiny_checkpoint: Path) -> None:
    out = tmp_path / "q8"
    res = runner.invoke(app, ["quantize", str(tiny_checkpoint), "--recipe", "int8", "--out", str(out),
                              "--eval-tokens", "200"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "perplexity" in res.stdout and "weights SQNR" in res.stdout
    report = json.loads((out / "quality_report.json").read_text())
    assert report["method"] == "rtn" and report["recipe"]["name"] == "int8"
    assert report["text"]["source"].startswith("built-in sample")  # no heldout.txt beside it: said so
    assert not (out / "heldout.txt").exists()
    assert report["size"]["checkpoint_bytes"] == (out / "model.safetensors").stat().st_size
    assert 0.2 < report["size"]["ratio"] < 0.5  # int8 weights + fp32 scales and small float parameters
    assert report["weights_sqnr_db"]["all_db"] > 30
    # the quantized folder is the quantized eager reference of the fp32 checkpoint
    fp32 = load_checkpoint(tiny_checkpoint).model
    expected = fake_quantized(fp32, load_recipe("int8")).state_dict()
    ckpt = load_checkpoint(out)
    assert all(torch.equal(v, expected[n]) for n, v in ckpt.model.state_dict().items())

    info = runner.invoke(app, ["info", str(out)])
    assert info.exit_code == 0 and "int8 (rtn)" in info.stdout and "weights file" in info.stdout
    gen = runner.invoke(app, ["generate", str(out), "--prompt", "the cat", "--max-new-tokens", "8"])
    assert gen.exit_code == 0, gen.output
    # quantizing again: an earlier quantized folder is replaced; a quantized input is refused
    again = runner.invoke(app, ["quantize", str(tiny_checkpoint), "--recipe", "int4", "--out", str(out),
                                "--eval-tokens", "100"])  # fmt: skip
    assert again.exit_code == 0, again.output
    assert load_checkpoint(out).quantization.recipe.name == "int4"  # type: ignore[union-attr]
    twice = runner.invoke(app, ["quantize", str(out), "--out", str(tmp_path / "qq")])
    assert twice.exit_code == 2 and "already quantized" in twice.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--calibration", "CAL"], "only applies to --method gptq"),
        (["--recipe", "none"], "quantizes nothing"),
        (["--method", "awq"], "--method must be one of"),
        (["--embedding-bits", "2"], "--embedding-bits must be 8 or 4"),
        (["--eval-text", "/no/such.txt"], "no such file"),
        (["--out", "NOTOURS"], "not replaced"),
    ],
)
def test_quantize_user_errors(args: list[str], needle: str, tmp_path: Path, tiny_checkpoint: Path) -> None:
    (tmp_path / "cal.txt").write_text("the cat")
    (tmp_path / "notours").mkdir()
    (tmp_path / "notours" / "notes.txt").write_text("mine")
    args = [a.replace("CAL", str(tmp_path / "cal.txt")).replace("NOTOURS", str(tmp_path / "notours")) for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "q")]
    res = runner.invoke(app, ["quantize", str(tiny_checkpoint), *out, *args])
    assert res.exit_code == 2, res.output
    assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert (tmp_path / "notours" / "notes.txt").exists() and not (tmp_path / "q").exists()


def test_gptq_is_wired_to_quantization_gptq(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """--method gptq: calibration batches from the first half of heldout.txt; the report scores the second."""
    ckpt = _heldout_checkpoint(tmp_path, tiny_checkpoint)
    out = tmp_path / "g"
    res = runner.invoke(app, ["quantize", str(ckpt), "--method", "gptq", "--recipe", "int4", "--out", str(out),
                              "--calibration-tokens", "1100", "--eval-tokens", "200"])  # fmt: skip
    assert res.exit_code == 0, res.output
    qcfg = json.loads((out / "config.json").read_text())["quantization_config"]
    report = json.loads((out / "quality_report.json").read_text())
    assert qcfg["method"] == "gptq" and "first half" in qcfg["calibration"]["text"]
    assert qcfg["calibration"]["tokens"] == 2 * 511  # whole sequences of 512 (BOS first), at most 1100 tokens
    assert report["text"]["calibration_overlap"].startswith("none")
    text = (ckpt / "heldout.txt").read_text()
    written = (out / "heldout.txt").read_text()  # the evaluated half, for later reports on this folder
    assert text.endswith(written) and 0.3 * len(text) < len(written) < 0.7 * len(text)
    loaded = load_checkpoint(out).quantization
    assert loaded is not None and loaded.method == "gptq"
    rtn = quantize_weights(load_checkpoint(ckpt).model, loaded.recipe)
    assert rtn.keys() == loaded.weights.keys()
    differ = [n for n in rtn if not torch.equal(rtn[n].q, loaded.weights[n].q)]
    assert differ  # calibrated integers, not round-to-nearest ones


@pytest.mark.slow
def test_export_validate_a_quantized_checkpoint(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """export QUANT_DIR --format onnx: the manifest's precision is the recipe; validate takes it as --checkpoint."""
    q = tmp_path / "q4"
    res = runner.invoke(app, ["quantize", str(tiny_checkpoint), "--recipe", "int4", "--out", str(q),
                              "--eval-tokens", "100"])  # fmt: skip
    assert res.exit_code == 0, res.output
    again = ["export", str(q), "--format", "onnx", "--quant", "int8", "--out", str(tmp_path / "x")]
    refused = runner.invoke(app, again)
    assert refused.exit_code == 2 and "already quantized" in refused.stderr
    art = tmp_path / "onnx"
    exp = runner.invoke(app, ["export", str(q), "--format", "onnx", "--prefill-chunk", "8", "--out", str(art)])
    assert exp.exit_code == 0, exp.output
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["precision"] == "int4" and manifest["quantization"]["name"] == "int4"
    val = runner.invoke(app, ["validate", str(art), "--checkpoint", str(q), "--steps", "40", "--no-quality"])
    assert val.exit_code == 0, val.output


@pytest.mark.slow
def test_quantize_bundled_model_int4(tmp_path: Path) -> None:
    """The bundled model at int4: a sane perplexity next to fp32, weights equal to the fake-quant reference."""
    out = tmp_path / "brown-int4"
    res = runner.invoke(app, ["quantize", "--recipe", "int4", "--out", str(out), "--eval-tokens", "2048"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "quality_report.json").read_text())
    m = report["metrics"]
    assert report["text"]["source"].endswith("heldout.txt") and report["text"]["tokens"] == 2048
    assert 40 < m["ppl_reference"] < 200  # the bundled model's held-out perplexity is ~90
    assert -1.0 < m["ppl_increase_pct"] < 3.0  # the int4 quality goal (+3%)
    assert m["top1_agreement_text"] > 0.85 and m["kl_mean"] < 0.05
    assert report["size"]["ratio"] < 0.25
    expected = fake_quantized(load_checkpoint(BUNDLED_DIR).model, load_recipe("int4")).state_dict()
    ckpt = load_checkpoint(out)
    assert all(torch.equal(v, expected[n]) for n, v in ckpt.model.state_dict().items())
