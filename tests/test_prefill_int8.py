"""``rgmobile export --prefill-int8``: the prefill graph's block linears as int8 DynamicQuantizeMatMul.

On the tiny random model: what the graphs hold, that the int8 weights are exactly the decode
integers requantized (and read-back catches one that is not), the prefill program against the eager
model with the same maths, and ``validate`` against the fp32 checkpoint with the recipe's thresholds.
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
from onnx_helpers import CHUNK, rehash

from exporter.artifact.manifest import read_manifest
from exporter.checkpoint.loader import BUNDLED_DIR, load_checkpoint
from exporter.errors import RgMobileError
from quantization.onnx import ort_reference
from quantization.onnx_prefill8 import OP, SUFFIX, dynamic_int8_reference, dynamic_quantize, requantize
from quantization.onnx_readback import read_artifact_weights
from quantization.recipe import load_recipe
from quantization.reference import weight_classes
from rgmobile.export import ExportOptions, export
from runtime_py.onnx_backend import OnnxBackend
from runtime_py.torch_backend import TorchBackend
from runtime_py.validate import ValidateOptions, validate

log = logging.getLogger(__name__)
_CACHE: dict[str, Path] = {}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    """Tiny int4, int8 prefill, accuracy level 0 (the decode graph's maths is then the eager reference's)."""
    if "a" not in _CACHE:
        out = tmp_path_factory.mktemp("prefill8") / "tiny-int4-prefill8"
        export(ExportOptions(out=out, checkpoint=tiny_checkpoint, prefill_chunk=CHUNK, quant="int4", accuracy_level=0,
                             prefill_int8=True))  # fmt: skip
        _CACHE["a"] = out
    return _CACHE["a"]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"quant": "none"}, "pass --quant int4 or int8"),
        ({"format": "executorch", "quant": "int4"}, "onnx option"),
        ({"quant": "int4", "prefill_chunk": 1}, "prefill-chunk must be >= 2"),
        ({"quant": "int4", "one_program": True}, "drop --one-program"),
    ],
)
def test_prefill_int8_refuses_what_it_cannot_do(tmp_path: Path, changes: dict, match: str) -> None:
    with pytest.raises(RgMobileError, match=match):
        ExportOptions(out=tmp_path / "a", prefill_int8=True, **changes)


def test_requantize_and_dynamic_quantize_are_the_documented_maths() -> None:
    w = np.array([[0.5, 0.0, -2.0], [-1.0, 0.0, 1.0]], np.float32)  # B [K=2, N=3]
    q, scale = requantize(w)
    assert scale.tolist() == pytest.approx([1 / 127, 1.0, 2 / 127])  # max |column| / 127; a zero column: 1
    assert q.dtype == np.int8 and q.tolist() == [[64, 0, -127], [-127, 0, 64]]  # rint(63.5) = 64 (half to even)
    import torch

    x = torch.tensor([-1.0, 0.0, 0.5, 3.0])  # range [-1, 3] -> scale 4/255, zero point rint(63.75) = 64
    s = 4 / 255
    expect = (torch.clamp(torch.round(x / s) + 64, 0, 255) - 64) * s
    assert torch.equal(dynamic_quantize(x), expect)
    assert torch.equal(dynamic_quantize(torch.zeros(3)), torch.zeros(3))


def test_the_prefill_graph_holds_int8_linears_the_decode_graph_int4(artifact: Path) -> None:
    m = read_manifest(artifact)
    assert {p.file for p in m.programs.values()} == {"decode.onnx", "prefill.onnx"}
    assert m.precision == "int4" and m.programs["prefill"].seq_len == CHUNK
    model = load_checkpoint(Path(m.source_checkpoint)).model
    linears = len(weight_classes(model)["linears"])
    ops, protos = {}, {}
    for name in ("decode", "prefill"):
        protos[name] = onnx.load(str(artifact / f"{name}.onnx"), load_external_data=False)
        ops[name] = [n.op_type for n in protos[name].graph.node]
    assert ops["decode"].count(OP) == 0 and ops["prefill"].count(OP) == linears
    facts = m.quantization["onnx_prefill"]["prefill_int8"]
    # the int8 linears add their biases themselves (the op's fifth input), as many as have one
    modules = dict(model.named_modules())
    biased = sum(modules[w.removesuffix(".weight")].bias is not None for w in weight_classes(model)["linears"])
    fifth = sum(len(n.input) == 5 for n in protos["prefill"].graph.node if n.op_type == OP)
    assert 0 < biased < linears and fifth == biased == facts["biases_in_op"]
    # the head and the gates keep MatMulNBits in both graphs; the linears only in decode
    assert ops["decode"].count("MatMulNBits") == ops["prefill"].count("MatMulNBits") + linears
    assert facts["op"] == OP and facts["bits"] == 8 and facts["matmuls"] == linears
    assert "prefill_int8" not in m.quantization["onnx"]  # the decode graph's facts
    # read-back: the int8 weights are exactly the decode integers requantized; the rest is shared
    assert read_artifact_weights(artifact).keys() >= {"embed_tokens.weight"}


def test_read_back_catches_an_int8_weight_that_is_not_the_requantization(artifact: Path, tmp_path: Path) -> None:
    broken = Path(shutil.copytree(artifact, tmp_path / "broken"))
    path = broken / "prefill.onnx"
    proto = onnx.load(str(path))  # external data in memory; saved inline below
    init = next(i for i in proto.graph.initializer if i.name.endswith(SUFFIX))
    q = numpy_helper.to_array(init).copy()
    q.flat[0] = q.flat[0] + 1 if q.flat[0] < 127 else 126
    init.CopyFrom(numpy_helper.from_array(q, init.name))
    onnx.save(proto, str(path))
    rehash(broken)  # the manifest's sizes and hashes follow: only the read-back's own check can catch it
    with pytest.raises(RgMobileError, match="is not the requantization"):
        read_artifact_weights(broken)


def test_the_prefill_program_matches_the_eager_model_with_its_maths(artifact: Path) -> None:
    """Two chunks and a shorter remainder from the empty state: the int8 reference (decode integers
    requantized, activations per tensor) matches to float rounding; the decode maths (int4, fp32
    activations) is measurably further."""
    m = read_manifest(artifact)
    model = load_checkpoint(Path(m.source_checkpoint)).model
    int4 = ort_reference(model, load_recipe("int4"))
    refs = {"int8": TorchBackend(dynamic_int8_reference(int4)), "int4": TorchBackend(int4)}
    backend = OnnxBackend(artifact, m)
    assert m.programs["prefill"].lengths == range(2, CHUNK + 1)  # its graph runs any t from 2 (padded scan)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, m.config.vocab_size, (1, 3 * CHUNK))
    errors: dict[str, list[float]] = {k: [] for k in refs}
    for label, ref in refs.items():
        sa, sr, start = backend.init_state(1), ref.init_state(1), 0
        for n in (CHUNK, CHUNK, CHUNK - 3):  # two whole chunks, then a remainder as one call
            chunk, pos = ids[:, start : start + n], np.arange(start, start + n)[None, :]
            la, sa = backend.step(chunk, pos, sa)
            lr, sr = ref.step(chunk, pos, sr)
            errors[label].append(float(np.abs(la[0, -1] - lr[0, -1]).max()))
            arrays_a, arrays_r = backend.state_arrays(sa), ref.state_arrays(sr)
            errors[label].append(max(float(np.abs(arrays_a[k] - arrays_r[k]).max()) for k in arrays_r))
            start += n
    assert max(errors["int8"]) < 1e-4, errors  # float rounding (measured ~1e-6)
    assert min(errors["int4"]) > 10 * max(errors["int8"]), errors  # the reference is the int8 maths, not int4


def test_validate_passes_the_recipe_thresholds(artifact: Path) -> None:
    report = validate(ValidateOptions(artifact=artifact, steps=40, quality=False))
    assert report.failures == [], report.failures


@pytest.mark.slow
@pytest.mark.skipif(
    not (BUNDLED_DIR / "config.json").exists(),
    reason=f"bundled model not trained yet ({BUNDLED_DIR}/config.json missing; training/train.py writes it)",
)
def test_bundled_model_with_an_int8_prefill_keeps_the_int4_quality_goal(tmp_path: Path) -> None:
    """The trained model: validate passes the int4 thresholds, and text scored after a prompt that ran
    through the int8 prefill program (per-tensor activations) stays within the int4 goal (+3%)."""
    artifact = tmp_path / "brown-small-int4-prefill8"
    export(ExportOptions(out=artifact, quant="int4", prefill_int8=True))
    report = validate(ValidateOptions(artifact=artifact, greedy_tokens=32))
    q = report.quality
    assert q is not None and q["text"].endswith("heldout.txt")
    m = q["metrics"]
    log.warning("bundled int4 --prefill-int8: %s", json.dumps({k: v for k, v in m.items() if "after_prompt" in k}))
    assert report.passed, [f.message() for f in report.failures]
    assert m["tokens_after_prompt"] == 2 * 255  # the first two sequences of 511 tokens, their second halves
    assert m["ppl_increase_pct_after_prompt"] <= 3.0 and m["top1_agreement_text_after_prompt"] >= 0.85


def test_quality_after_a_prompt_scores_what_the_prefill_program_leaves(artifact: Path, tmp_path: Path) -> None:
    """The text metrics run a last-logits artifact one position at a time, so a broken prefill program
    leaves them unchanged; the after-prompt metrics (first half as a prompt) see it."""
    from runtime_py.quality import text_metrics

    broken = Path(shutil.copytree(artifact, tmp_path / "broken"))
    path = broken / "prefill.onnx"
    proto = onnx.load(str(path))
    for init in proto.graph.initializer:  # every int8 linear's scales doubled
        if init.name.endswith(f"{SUFFIX}_scale"):
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 2, init.name))
    onnx.save(proto, str(path))
    rehash(broken)
    m = read_manifest(artifact)
    reference = TorchBackend(load_checkpoint(Path(m.source_checkpoint)).model)
    rng = np.random.default_rng(1)
    seqs = [[m.config.bos_id, *rng.integers(3, m.config.vocab_size, 40).tolist()] for _ in range(3)]
    good, n = text_metrics(OnnxBackend(artifact, m), reference, seqs, after_prompt=3)
    bad, _ = text_metrics(OnnxBackend(broken, read_manifest(broken)), reference, seqs, after_prompt=3)
    assert n == 3 * 40 and good["tokens_after_prompt"] == 3 * 20
    assert bad["kl_mean"] == good["kl_mean"] and bad["ppl_increase_pct"] == good["ppl_increase_pct"]
    assert bad["kl_mean_after_prompt"] > 3 * good["kl_mean_after_prompt"], (good, bad)


def test_a_quantized_checkpoint_exports_with_an_int8_prefill_of_its_own_integers(
    tmp_path: Path, tiny_tokenizer: Path
) -> None:
    """From ``rgmobile quantize`` integers (not round to nearest): the decode graph ships them, the
    prefill graph their requantization (read-back checks both), through the CLI."""
    from conftest import tiny_model
    from given_weights import write_perturbed_checkpoint
    from typer.testing import CliRunner

    from quantization.onnx_readback import differences
    from rgmobile.cli import app

    qdir = write_perturbed_checkpoint(tmp_path / "q", tiny_model(), load_recipe("int4"), tiny_tokenizer, seed=7)
    out = tmp_path / "artifact"
    args = ["export", str(qdir), "--format", "onnx", "--out", str(out), "--prefill-chunk", str(CHUNK), "--prefill-int8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    given = load_checkpoint(qdir).quantization
    assert given is not None
    assert differences(given.weights, read_artifact_weights(out)) == []
    assert read_manifest(out).quantization["onnx_prefill"]["prefill_int8"]["matmuls"] > 0


def test_an_fp32_checkpoint_without_quant_is_refused_before_exporting(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """The options cannot tell a quantized checkpoint from an fp32 one; the target refuses the latter."""
    with pytest.raises(RgMobileError, match="checkpoint is not quantized"):
        export(ExportOptions(out=tmp_path / "a", checkpoint=tiny_checkpoint, prefill_chunk=CHUNK, prefill_int8=True))
    assert not (tmp_path / "a").exists()
