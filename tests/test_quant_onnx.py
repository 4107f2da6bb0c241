"""ONNX quantization (``rgmobile export --quant int8|int4``) and the quality report of ``rgmobile validate``.

Mechanics on the tiny random model (one int8 and one int4 artifact per session); quality numbers
that mean something on the bundled trained model (skipped only while it is not trained yet).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx_helpers import CHUNK, ROW_BY_ROW, rehash
from typer.testing import CliRunner

from exporter.artifact.manifest import read_manifest
from exporter.checkpoint.loader import BUNDLED_DIR, load_checkpoint
from exporter.errors import RgMobileError
from quantization.onnx import ort_reference, weight_bytes
from quantization.recipe import load_recipe
from quantization.reference import fake_quantized, weight_classes
from rgmobile.cli import app
from rgmobile.export import ExportOptions, export
from runtime_py.onnx_backend import OnnxBackend
from runtime_py.quality import QualityOptions, artifact_size, sequences
from runtime_py.thresholds import QUALITY_THRESHOLDS, quality_thresholds_for, thresholds_for
from runtime_py.tokenizer import Tokenizer
from runtime_py.torch_backend import TorchBackend
from runtime_py.validate import PROMPT_TEXT, ValidateOptions, compare, prompt_ids, summarize, validate

log = logging.getLogger(__name__)

RECIPES = ("int8", "int4")
GRAPHS = ("decode.onnx", "prefill.onnx")
QUALITY_TOKENS = 600  # tiny model: a few sequences, enough to cross the window (16) many times
_CACHE: dict[str, Path] = {}


def _quantized(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path, recipe: str) -> Path:
    if recipe not in _CACHE:
        out = tmp_path_factory.mktemp(f"onnx-{recipe}") / f"tiny-{recipe}"
        # accuracy level 0 (fp32 activations): the eager reference with the graph's integers is then exact
        export(ExportOptions(out=out, checkpoint=checkpoint, prefill_chunk=CHUNK, quant=recipe, accuracy_level=0,
                             **ROW_BY_ROW))  # fmt: skip
        _CACHE[recipe] = out
    return _CACHE[recipe]


@pytest.fixture(scope="session", params=RECIPES)
def quantized(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path):
    """(recipe name, tiny artifact quantized with it): built once per session."""
    return request.param, _quantized(tmp_path_factory, tiny_checkpoint, request.param)


def _initializers(path: Path) -> list[onnx.TensorProto]:
    return list(onnx.load(str(path), load_external_data=False).graph.initializer)


def _external(init: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in init.external_data}


# --- options -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"quant": "int3"}, "valid"),
        ({"quant": "int8", "accuracy_level": 5}, "accuracy-level"),
        ({"quant": "int8", "embedding_bits": 3}, "embedding-bits"),
        ({"quant": "int4", "group_size": 512}, "group size 512"),
        ({"quant": "int4", "group_size": 12}, "power of two"),
    ],
)
def test_quant_options_are_checked_before_exporting(tmp_path: Path, changes: dict, match: str) -> None:
    with pytest.raises(RgMobileError, match=match):
        ExportOptions(out=tmp_path / "a", **changes)


def test_quant_on_a_format_without_quantization_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rgmobile.export

    monkeypatch.setattr(rgmobile.export, "QUANT_FORMATS", ("onnx",))
    with pytest.raises(RgMobileError, match="not supported for --format executorch"):
        ExportOptions(out=tmp_path / "a", format="executorch", quant="int8")
    ExportOptions(out=tmp_path / "b", format="executorch")  # fp32 is always fine


def test_quant_options_map_to_the_recipe(tmp_path: Path) -> None:
    opts = ExportOptions(out=tmp_path / "a", quant="int4", group_size=64, embedding_bits=4)
    r = opts.quant_recipe
    assert (r.name, r.linears.group_size, r.embedding.bits, r.embedding.group_size) == ("int4", 64, 4, 64)
    assert not ExportOptions(out=tmp_path / "b").quant_recipe.is_quantized
    assert ExportOptions(out=tmp_path / "c").accuracy_level == 4  # onnxruntime's fast int8-activation kernels


def test_default_accuracy_level_is_written_to_every_matmulnbits(
    quantized, tmp_path: Path, tiny_checkpoint: Path, tiny_tokenizer: Path
) -> None:
    """The default export (accuracy level 4) differs from the level-0 one only in that attribute,
    and stays within the recipe's thresholds of fp32."""
    name, level0 = quantized
    out = tmp_path / "default"
    export(ExportOptions(out=out, checkpoint=tiny_checkpoint, prefill_chunk=CHUNK, quant=name, **ROW_BY_ROW))
    m = read_manifest(out)
    assert m.quantization["onnx"]["accuracy_level"] == 4
    for graph in GRAPHS:
        nodes = [n for n in onnx.load(str(out / graph), load_external_data=False).graph.node]
        nbits = [n for n in nodes if n.op_type == "MatMulNBits"]
        assert nbits and all(onnx.helper.get_node_attr_value(n, "accuracy_level") == 4 for n in nbits)
    assert (out / "weights.bin").read_bytes() == (level0 / "weights.bin").read_bytes()  # same integers
    report = validate(ValidateOptions(artifact=out, greedy_tokens=8))
    assert report.passed, [f.message() for f in report.failures]


def test_cli_bad_quant_is_one_line_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", "--out", str(tmp_path / "a"), "--quant", "int5"])
    assert result.exit_code == 2 and "int5" in result.output and "Traceback" not in result.output


# --- the quantized graphs ------------------------------------------------------------------------


def test_manifest_records_recipe_and_facts(quantized) -> None:
    name, artifact = quantized
    m = read_manifest(artifact)
    recipe = load_recipe(name)
    assert m.precision == name
    assert {k: v for k, v in m.quantization.items() if k != "onnx"} == recipe.to_dict()
    applied = m.quantization["onnx"]  # the per-format facts
    assert applied["accuracy_level"] == 0 and "MatMulNBits" in applied["tool"]
    model = load_checkpoint(Path(m.source_checkpoint)).model
    classes = weight_classes(model)
    params = dict(model.named_parameters())
    for cls in ("linears", "embedding", "rglru_gates"):
        assert applied["classes"][cls]["params"] == sum(params[n].numel() for n in classes[cls]), cls
        assert applied["classes"][cls]["bits"] == getattr(recipe, cls).bits
    assert applied["classes"]["linears"]["block_sizes"] == ({"64": 38} if name == "int8" else {"32": 38})
    assert applied["classes"]["rglru_gates"]["block_sizes"] == {"16": 32}  # 8 gates x 4 heads, K = 16
    assert applied["largest_fp32_initializer"]["params"] <= 256  # biases, norms, conv: nothing big left


def test_head_and_embedding_are_quantized_and_tied(quantized) -> None:
    """The tied head is untied in the graph so the quantizer takes it; the embedding Gather reads
    the head's integers and scales; no fp32 tensor of any quantized weight's size remains."""
    name, artifact = quantized
    m = read_manifest(artifact)
    c = m.config
    big = {(c.vocab_size, c.width), (c.width, c.vocab_size)}
    model = load_checkpoint(Path(m.source_checkpoint)).model
    params = dict(model.named_parameters())
    for names in weight_classes(model).values():
        for n in names:
            shape = tuple(params[n].shape)
            big |= {shape, shape[::-1], shape[-2:]}  # a weight, its transpose, one gate head [i, j]
    for graph in GRAPHS:
        proto = onnx.load(str(artifact / graph), load_external_data=False)
        floats = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
        assert not [i.name for i in floats if tuple(i.dims) in big and not i.name.endswith("_scales")], graph
        ops = [n.op_type for n in proto.graph.node]
        heads = c.num_heads * 2 * len(c.layers_of("recurrent"))
        assert "Einsum" not in ops and ops.count("MatMulNBits") == 38 + 1 + heads  # linears, head, gate heads
        gbq = next(n for n in proto.graph.node if n.op_type == "GatherBlockQuantized")
        head = next(n for n in proto.graph.node if n.op_type == "MatMulNBits" and n.input[1].startswith("lm_head"))
        assert gbq.input[2] == head.input[2]  # one scales initializer for both
        inits = {i.name: i for i in proto.graph.initializer}
        # the embedding's integers are the head's bytes in weights.bin (stored once)
        e, h = _external(inits[gbq.input[0]]), _external(inits[head.input[1]])
        assert e["location"] == h["location"] == "weights.bin"
        assert (e["offset"], e["length"]) == (h["offset"], h["length"])


def test_both_programs_share_one_weights_file(quantized) -> None:
    _, artifact = quantized
    files = {f.path for f in read_manifest(artifact).files}
    assert files == {"decode.onnx", "prefill.onnx", "weights.bin", "tokenizer.model"}
    spans = []
    for graph in GRAPHS:
        ext = [_external(i) for i in _initializers(artifact / graph) if i.data_location == onnx.TensorProto.EXTERNAL]
        assert ext and {e["location"] for e in ext} == {"weights.bin"}
        spans.append({(e["offset"], e["length"]) for e in ext})
    assert spans[0] == spans[1]  # identical weights, identical bytes: nothing stored twice


def test_weight_bytes_formula_matches_the_artifact(quantized) -> None:
    """quantization.onnx.weight_bytes (used for the 2B size estimate) against what was written."""
    name, artifact = quantized
    m = read_manifest(artifact)
    seen, actual = set(), 0
    for init in _initializers(artifact / "decode.onnx"):
        if init.data_location == onnx.TensorProto.EXTERNAL:
            e = _external(init)
            if (e["offset"], e["length"]) not in seen:
                seen.add((e["offset"], e["length"]))
                actual += int(e["length"])
        elif init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.UINT8):  # small tensors stay inline
            actual += numpy_helper.to_array(init).nbytes
    expected = weight_bytes(m.config, load_recipe(name))["total"]
    # the graph also holds a few non-parameter float constants (RoPE, masks): well under 1%
    assert expected <= actual <= expected * 1.01, (expected, actual)


def test_onnxruntime_matches_the_quantized_eager_reference(quantized, tiny_tokenizer: Path) -> None:
    """Same integers (ort_reference): float rounding only. Recipe maths (fake_quantized, amax/(2^(b-1)-1)
    scales vs onnxruntime's max-magnitude/-2^(b-1)): different rounding, quantization-noise level."""
    name, artifact = quantized
    m = read_manifest(artifact)
    model = load_checkpoint(Path(m.source_checkpoint)).model
    recipe = load_recipe(name)
    backend = OnnxBackend(artifact, m)
    prompt = prompt_ids(Tokenizer(tiny_tokenizer), 2 * CHUNK + 3)
    errors = {}
    for label, ref in (("ort", ort_reference(model, recipe)), ("fake", fake_quantized(model, recipe)), ("fp32", model)):
        cmp, greedy = compare(backend, TorchBackend(ref), prompt, steps=40, greedy_tokens=8)
        errors[label] = summarize(cmp, greedy)[0]
    worst = {label: e["max_abs_logits"] for label, e in errors.items()}
    log.info("%s: max abs logits vs ort_reference / fake_quantized / fp32: %s", name, worst)
    assert errors["ort"]["max_abs_logits"] < 2e-5 and errors["ort"]["max_state_abs"] < 2e-5  # measured ~2.4e-6
    assert errors["ort"]["top1_agreement"] == 1.0
    # the two roundings are independent draws of the same noise: neither is far from fp32
    limit = thresholds_for("onnx", name)["max_abs_logits"]
    assert errors["fake"]["max_abs_logits"] < 2 * limit and errors["fp32"]["max_abs_logits"] < limit


def test_inline_quantized_graphs_match_the_shared_weights_file(
    quantized, tmp_path: Path, tiny_checkpoint: Path, tiny_tokenizer: Path
) -> None:
    """--external-data never: every graph self-contained, the same integers (same logits)."""
    name, artifact = quantized
    out = tmp_path / "inline"
    export(ExportOptions(out=out, checkpoint=tiny_checkpoint, prefill_chunk=CHUNK, quant=name, external_data="never",
                         accuracy_level=0, **ROW_BY_ROW))  # fmt: skip
    m = read_manifest(out)
    assert {f.path for f in m.files} == {"decode.onnx", "prefill.onnx", "tokenizer.model"}
    for graph in GRAPHS:
        assert not [i.name for i in _initializers(out / graph) if i.data_location == onnx.TensorProto.EXTERNAL]
    prompt = prompt_ids(Tokenizer(tiny_tokenizer), CHUNK + 3)
    cmp, greedy = compare(OnnxBackend(out, m), OnnxBackend(artifact, read_manifest(artifact)), prompt, 6, 4)
    assert summarize(cmp, greedy)[0]["max_abs_logits"] == 0.0


# --- validate + quality --------------------------------------------------------------------------


def test_validate_passes_with_recipe_thresholds(quantized, tmp_path: Path) -> None:
    name, artifact = quantized
    report = tmp_path / "report.json"
    result = CliRunner().invoke(
        app, ["validate", str(artifact), "--quality-tokens", str(QUALITY_TOKENS), "--report", str(report)]
    )
    assert result.exit_code == 0, result.output
    assert "quality" in result.output and "perplexity" in result.output
    data = json.loads(report.read_text())
    q = data["quality"]
    assert data["thresholds"] == thresholds_for("onnx", name)
    assert q["thresholds"] == quality_thresholds_for("onnx", name) == QUALITY_THRESHOLDS[name]
    assert q["tokens"] == QUALITY_TOKENS and q["sequences"] == 2  # 511 + 89 tokens
    assert q["size"] == artifact_size(read_manifest(artifact))
    for key in ("ppl_artifact", "ppl_reference", "kl_mean", "top1_agreement_text", "sqnr_db", "rel_l2",
                "cosine_min", "greedy_match_mean", "size_ratio"):  # fmt: skip
        assert np.isfinite(q["metrics"][key]), key
    log.info("tiny %s quality: %s", name, json.dumps(q["metrics"]))


def _double_scales(artifact: Path, scales: str) -> None:
    """Scales x 2 in one MatMulNBits node: the bytes in weights.bin (shared by both programs)."""
    init = next(i for i in _initializers(artifact / "decode.onnx") if i.name == scales)
    e = _external(init)
    offset, length = int(e["offset"]), int(e["length"])
    with open(artifact / e["location"], "r+b") as f:
        f.seek(offset)
        doubled = np.frombuffer(f.read(length), np.float32) * 2
        f.seek(offset)
        f.write(doubled.tobytes())


@pytest.mark.slow
def test_validate_rejects_wrong_scales(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> None:
    artifact = tmp_path_factory.mktemp("broken") / "int4-broken"
    shutil.copytree(_quantized(tmp_path_factory, tiny_checkpoint, "int4"), artifact)
    _double_scales(artifact, "layers.0.mlp_block.down_proj.weight_t_scales")
    rehash(artifact)  # the manifest is consistent again: only the numerics are wrong
    report = validate(ValidateOptions(artifact=artifact, quality_tokens=QUALITY_TOKENS))
    failed = {f.metric for f in report.failures}
    assert not report.passed
    # both the parity check and the quality report see it, each naming its metric
    assert {"kl_mean", "sqnr_db"} <= failed and "min_cosine" in failed, failed
    result = CliRunner().invoke(app, ["validate", str(artifact), "--quality-tokens", str(QUALITY_TOKENS)])
    assert result.exit_code == 1 and "validate failed: kl_mean" in result.output


def test_quality_sequences_follow_the_training_protocol() -> None:
    seqs = sequences(list(range(10, 30)), bos_id=2, seq_len=8, max_tokens=17)
    assert seqs == [[2, *range(10, 17)], [2, *range(17, 24)], [2, *range(24, 27)]]
    with pytest.raises(RgMobileError, match="no such file"):
        QualityOptions(text=Path("/nonexistent/heldout.txt"))
    assert PROMPT_TEXT  # the fallback text when there is no heldout.txt


# --- the bundled trained model -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    not (BUNDLED_DIR / "config.json").exists(),
    reason=f"bundled model not trained yet ({BUNDLED_DIR}/config.json missing; training/train.py writes it)",
)
@pytest.mark.parametrize("name", RECIPES)
def test_bundled_model_quantized_passes_validate(tmp_path: Path, name: str) -> None:
    artifact = tmp_path / f"brown-small-{name}"
    export(ExportOptions(out=artifact, quant=name))
    report = validate(ValidateOptions(artifact=artifact, greedy_tokens=32))
    q = report.quality
    measured = {"recipe": name, "size_bytes": q["size"]["artifact_bytes"], "size_ratio": q["size"]["ratio"],
                **{k: q["metrics"][k] for k in ("ppl_reference", "ppl_artifact", "ppl_increase_pct", "kl_mean",
                                               "top1_agreement_text", "sqnr_db", "greedy_match_mean")}}  # fmt: skip
    log.warning("bundled %s: %s", name, json.dumps(measured))
    assert q["text"].endswith("heldout.txt") and q["tokens"] == 4096
    assert report.passed, [f.message() for f in report.failures]
    assert q["metrics"]["ppl_increase_pct"] <= {"int8": 0.5, "int4": 3.0}[name]  # the goals
