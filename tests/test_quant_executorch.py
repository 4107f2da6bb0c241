"""ExecuTorch quantization (``rgmobile export --format executorch --quant int4|int8``).

Lowering costs 1-3 minutes per .pte on the shared machine, so the session builds two:
the tiny int4 (8da4w) artifact through the CLI, and a decode-only one whose quantized
eager program had one linear's scales doubled before lowering; and, when the bundled model
is present, its int8 and int4 artifacts through ``validate`` with the quality gate.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from exporter.artifact.manifest import read_manifest, write_manifest
from exporter.checkpoint.loader import load_checkpoint
from exporter.errors import RgMobileError
from exporter.targets.executorch import ExecuTorchStep
from quantization.executorch import StepBackend, check_recipe, quantized_step
from quantization.executorch_modules import split_gates
from quantization.executorch_readback import read_back, read_shipped
from quantization.recipe import WeightScheme, load_recipe
from quantization.reference import weight_classes
from rgmobile.cli import app
from rgmobile.export import ExportOptions, export
from runtime_py.executorch_backend import open_artifact
from runtime_py.thresholds import thresholds_for
from runtime_py.validate import ValidateOptions, compare, prompt_ids, summarize, validate

pytestmark = pytest.mark.filterwarnings("ignore")

CHUNK = 8
QUALITY_TOKENS = 600
# Lowering correctness: the .pte against the torchao-quantized eager step (the same program
# before lowering). Measured on the tiny model, int4 (67 positions, prefill 8 + t=1 + 48
# decode steps): max_rel 0.036, max_abs 0.106, min_cosine 0.99935, top1 0.970. Wider than the
# ~1e-2 measured earlier (one graph, fewer steps): XNNPACK's dynamic int8 activation rounding
# differs from torchao's eager emulation and the recurrence carries it. Bound ~2x the worst.
LOWERING_MAX_REL = 8e-2


@pytest.fixture(scope="session")
def int4_pte(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    out = tmp_path_factory.mktemp("et-int4") / "tiny-int4"
    args = ["export", str(tiny_checkpoint), "--format", "executorch", "--quant", "int4", "--out", str(out),
            "--prefill-chunk", str(CHUNK), "--prefill-logits", "all"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def test_recipe_checks_refuse_unverified_paths(tmp_path: Path) -> None:
    recipe = load_recipe("int8")
    weight_only_int8_groups = replace(recipe, linears=WeightScheme(8, "per_group", 32))
    with pytest.raises(RgMobileError, match="no verified XNNPACK path"):
        check_recipe(weight_only_int8_groups)
    with pytest.raises(RgMobileError, match="--group-size"):
        check_recipe(load_recipe("int4").with_options(group_size=64), widths=(96,))
    # int4 gate groups wider than a gate head: the recipe sets them, so the hint names the recipe
    int4_gates = replace(recipe, rglru_gates=WeightScheme(4, "per_group", 32))
    with pytest.raises(RgMobileError, match="recipe's rglru_gates group_size to a divisor of 16") as info:
        check_recipe(int4_gates, widths=(64,), gate_width=16)
    assert "\n" not in str(info.value)
    check_recipe(int4_gates, widths=(64,), gate_width=64)  # a head of 64 inputs takes groups of 32
    ExportOptions(out=tmp_path / "a", format="executorch", quant="int4")  # accepted


@torch.no_grad()
def test_quantized_step_ties_embedding_to_head_integers(tiny_checkpoint: Path) -> None:
    """The lookup table holds the head's integers: embedding rows == dequantized head rows."""
    model = load_checkpoint(tiny_checkpoint).model
    step, facts = quantized_step(model, load_recipe("int8"))
    head = step.lm_head.weight
    deq = head.qdata.float() * head.scale.reshape(head.qdata.shape[0], -1)
    ids = torch.arange(model.config.vocab_size)[None]
    assert torch.equal(step.model.embed_tokens(ids)[0], deq)
    assert (deq - model.embed_tokens.weight).abs().max() <= head.scale.max() / 2 + 1e-6
    assert "int8" in facts["activations"] and "rglru_gates" not in facts["kept_float"]
    # The RG-LRU gates: one int8 linear per head, the block-diagonal parameters gone.
    assert "8da8w" in facts["applied"]["rglru_gates"]["scheme"]
    assert not any(n.endswith("gate_weight") for n, _ in step.named_parameters())
    heads = [m for n, m in step.named_modules() if ".input_gate.heads." in n or ".recurrent_gate.heads." in n]
    recurrent = len(model.config.layers_of("recurrent"))
    assert len(heads) == 2 * recurrent * model.config.num_heads
    assert all(type(h.weight).__name__ == "IntxUnpackedToInt8Tensor" for h in heads)


@torch.no_grad()
def test_split_gates_computes_the_same_gates(tiny_checkpoint: Path) -> None:
    """One linear per head is the block-diagonal gate: the same logits and state (float, before
    quantization), and a recipe that leaves the gates float keeps them as they were."""
    model = load_checkpoint(tiny_checkpoint).model
    split = copy.deepcopy(model)
    names = split_gates(split)
    assert len(names) == 2 * len(model.config.layers_of("recurrent")) * model.config.num_heads
    ids = torch.tensor([[2, 17, 250, 3, 99, 4, 8, 1]])
    pos = torch.arange(ids.shape[1])[None]
    state = StepBackend(model, model.config).init_state()
    a, b = ExecuTorchStep(model)(ids, pos, *state), ExecuTorchStep(split)(ids, pos, *state)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    float_gates = replace(load_recipe("int8"), rglru_gates=None)
    step, facts = quantized_step(model, float_gates)
    assert facts["kept_float"]["rglru_gates"]["params"] > 0 and "rglru_gates" not in facts["applied"]
    assert sum(n.endswith("gate_weight") for n, _ in step.named_parameters()) == 2 * len(
        model.config.layers_of("recurrent")
    )


@torch.no_grad()
def test_in_place_quantization_equals_the_copying_mode(tiny_checkpoint: Path) -> None:
    """The export target's in-place mode (no deep copy of the fp32 model) builds the same step:
    same logits and state; it consumes the model, the copying mode leaves it untouched."""
    recipe = load_recipe("int4")
    model = load_checkpoint(tiny_checkpoint).model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copied, facts = quantized_step(model, recipe)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # copying mode: untouched
    in_place, facts_in_place = quantized_step(model, recipe, in_place=True)
    assert in_place.model is model and facts_in_place == facts
    assert not any(p.dtype == torch.float32 and p.ndim == 2 for p in model.embed_tokens.parameters())
    ids = torch.tensor([[2, 17, 250, 3, 99, 4, 8, 1]])
    pos = torch.arange(ids.shape[1])[None]
    state = StepBackend(copied, model.config).init_state()
    for a, b in zip(copied(ids, pos, *state), in_place(ids, pos, *state), strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_int4_manifest_and_size(int4_pte: Path, tiny_checkpoint: Path) -> None:
    m = read_manifest(int4_pte)
    assert m.format == "executorch" and m.precision == "int4"
    facts = m.quantization["executorch"]
    assert "8da4w" in facts["applied"]["linears"]["scheme"] and "8da8w" in facts["applied"]["embedding"]["head"]
    assert "dynamic per token" in facts["activations"] and "rglru_gates" not in facts["kept_float"]
    assert "8da8w" in facts["applied"]["rglru_gates"]["scheme"]  # the int4 recipe's gates: int8 per channel
    model = load_checkpoint(tiny_checkpoint).model
    params = sum(p.numel() for p in model.parameters())
    fp32 = 4 * params  # the fp32 program's weights (model.ptd: the tied table once)
    # Weights only: at this size the file is dominated by the two methods' XNNPACK graphs
    # (measured 232 KB of 653 KB); weights measured 263 KB = 0.20 x fp32 (both tables quantized).
    sizes = m.format_details["pte_bytes"]
    assert m.format_details["data_file"] is None and sizes["data_file"] == 0  # one .pte, as Android loads it
    assert not any(f.path.endswith(".ptd") for f in m.files)
    assert sizes["xnnpack_weights"] + sizes["portable_constants"] < 0.25 * fp32, sizes
    assert m.format_details["decode_delegation"]["delegated_ops"] > 0


@pytest.mark.slow
def test_pte_matches_quantized_eager(int4_pte: Path, tiny_checkpoint: Path) -> None:
    """Correctness of lowering: the .pte vs the torchao-quantized eager step, prefill + 3 windows of decode."""
    m = read_manifest(int4_pte)
    model = load_checkpoint(tiny_checkpoint).model
    step, _ = quantized_step(model, load_recipe("int4"))
    artifact, eager = open_artifact(int4_pte, m), StepBackend(step, model.config)
    from runtime_py.tokenizer import Tokenizer

    prompt = prompt_ids(Tokenizer(int4_pte / m.tokenizer_file), 2 * CHUNK + 3)
    cmp, greedy = compare(artifact, eager, prompt, 3 * m.config.window, greedy_tokens=8)
    s, _ = summarize(cmp, greedy)
    assert s["max_rel_logits"] <= LOWERING_MAX_REL, s
    assert s["min_cosine"] >= 0.998 and s["top1_agreement"] >= 0.94, s


@pytest.mark.slow
def test_validate_passes_with_int4_thresholds(int4_pte: Path, tmp_path: Path) -> None:
    """Parity against fp32 with the int4 row. Perplexity is not gated on the random tiny model:
    8da4w measured +3.62% there (over the 3% of QUALITY_THRESHOLDS), +1.16% on the trained
    brown-small (passes), where the quality gate means something."""
    report = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["validate", str(int4_pte), "--no-quality", "--report", str(report)])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["thresholds"] == thresholds_for("executorch", "int4")


@pytest.mark.slow
def test_validate_rejects_a_manifest_claiming_fp32(int4_pte: Path, tmp_path: Path) -> None:
    artifact = tmp_path / "lying"
    shutil.copytree(int4_pte, artifact)
    m = read_manifest(artifact)
    write_manifest(artifact, replace(m, precision="fp32", quantization=None))
    report = validate(ValidateOptions(artifact=artifact, quality=False))
    assert not report.passed and "max_abs_logits" in {f.metric for f in report.failures}


@pytest.mark.slow
def test_validate_rejects_doubled_scales(
    tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One linear's int4 scales x 2 in the quantized eager program before lowering: validate fails."""
    import quantization.executorch as qet

    def broken(model, recipe, **kwargs):  # type: ignore[no-untyped-def]
        step, facts = quantized_step(model, recipe, **kwargs)
        name = weight_classes(model)["linears"][0].removesuffix(".weight")
        step.model.get_submodule(name).weight.scale.mul_(2)
        return step, facts

    monkeypatch.setattr(qet, "quantized_step", broken)
    out = tmp_path_factory.mktemp("et-broken") / "tiny-int4-broken"
    export(ExportOptions(out=out, format="executorch", checkpoint=tiny_checkpoint, prefill_chunk=1, quant="int4"))
    report = validate(ValidateOptions(artifact=out, quality_tokens=QUALITY_TOKENS))
    failed = {f.metric for f in report.failures}
    assert not report.passed, report.summary
    result = CliRunner().invoke(app, ["validate", str(out), "--quality-tokens", str(QUALITY_TOKENS)])
    assert result.exit_code == 1 and "validate failed" in result.output, failed


@pytest.mark.slow
def test_a_recipe_leaving_the_gates_float_ships_them_float(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """A recipe with no gate scheme: the .pte keeps the block-diagonal fp32 gates, the read-back
    finds the model's own values, and what the artifact ships of a quantization leaves them out."""
    recipe = tmp_path / "float-gates.json"
    recipe.write_text(json.dumps({**load_recipe("int8").to_dict(), "name": "int8-float-gates", "rglru_gates": None}))
    out = tmp_path / "float-gates"
    export(ExportOptions(out=out, format="executorch", checkpoint=tiny_checkpoint, prefill_chunk=1, quant=str(recipe)))
    m = read_manifest(out)
    assert m.quantization["executorch"]["kept_float"]["rglru_gates"]["params"] > 0
    model = load_checkpoint(tiny_checkpoint).model
    classes, params = weight_classes(model), dict(model.named_parameters())
    rb = read_back(out / "model.pte", m.config)
    assert set(rb.weights) == set(classes["linears"]) | {"embed_tokens.weight"}
    assert set(rb.float_weights) == set(classes["rglru_gates"])
    for name in classes["rglru_gates"]:
        assert torch.equal(rb.float_weights[name], params[name].detach()), name
    [(_, shipped)] = read_shipped(out, m, model)
    assert not shipped.float_weights and set(shipped.weights) == set(rb.weights)


BUNDLED_CONFIG = Path(__file__).resolve().parent.parent / "exporter" / "bundled" / "brown-small" / "config.json"


@pytest.mark.slow
@pytest.mark.skipif(not BUNDLED_CONFIG.is_file(), reason="the bundled model (exporter/bundled/brown-small) is missing")
@pytest.mark.parametrize("name", ["int8", "int4"])
def test_bundled_model_quantized_passes_validate(tmp_path: Path, name: str) -> None:
    """The bundled model's int8 (8da8w) and int4 (8da4w) .pte pass validate with the quality gate."""
    artifact = tmp_path / f"brown-small-et-{name}"
    export(ExportOptions(out=artifact, format="executorch", quant=name))
    report = validate(ValidateOptions(artifact=artifact, greedy_tokens=32))
    q = report.quality
    assert q is not None and q["text"].endswith("heldout.txt")
    assert report.passed, [f.message() for f in report.failures]
    assert q["metrics"]["ppl_increase_pct"] <= {"int8": 0.5, "int4": 3.0}[name]  # the quantization goals
    print(name, json.dumps({"size": q["size"], **{k: q["metrics"][k] for k in ("ppl_reference", "ppl_artifact",
          "ppl_increase_pct", "top1_agreement_text", "kl_mean")}}))  # fmt: skip
