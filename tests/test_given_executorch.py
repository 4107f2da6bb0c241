"""ExecuTorch exports of a quantized checkpoint ship its integers and scales unchanged.

The checkpoints hold perturbed integers (tests/given_weights.py): off round-to-nearest and with
stretched scales, so only a .pte that stores exactly the given integers reads back equal. Two
artifacts, built once per module from quantized checkpoint folders of a two-layer tiny model
(one recurrent, one attention layer; decode only, to keep lowering short): int8 through
``rgmobile.export.export`` and int4 through the CLI. The integers are compared with the
checkpoint's own (``load_checkpoint(QDIR).quantization``), read back out of the .pte file.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import tiny_config, tiny_model
from given_weights import perturbed_given, write_perturbed_checkpoint
from typer.testing import CliRunner

from exporter.artifact.manifest import read_manifest
from exporter.checkpoint.loader import load_checkpoint
from exporter.errors import RgMobileError
from exporter.model.griffin import Griffin
from quantization.executorch import StepBackend, quantized_step
from quantization.executorch_modules import gate_linears
from quantization.executorch_readback import read_back
from quantization.qweights import GivenQuantization, load_dequantized
from quantization.recipe import load_recipe
from rgmobile.cli import app
from rgmobile.export import ExportOptions, export
from runtime_py.executorch_backend import open_artifact
from runtime_py.tokenizer import Tokenizer
from runtime_py.torch_backend import TorchBackend
from runtime_py.validate import compare, prompt_ids, summarize
from runtime_py.validate_integers import integers_check

pytestmark = pytest.mark.filterwarnings("ignore")

RECIPES = ("int8", "int4")


def _model() -> Griffin:
    return tiny_model(tiny_config(block_types=("recurrent", "attention")))


def _export(root: Path, tokenizer: Path, name: str) -> tuple[Path, Path]:
    """(quantized checkpoint folder, .pte artifact exported from it): int4 through the CLI."""
    qdir = write_perturbed_checkpoint(root / "q", _model(), load_recipe(name), tokenizer, seed=7)
    out = root / "artifact"
    if name == "int4":
        result = CliRunner().invoke(
            app, ["export", str(qdir), "--format", "executorch", "--out", str(out), "--prefill-logits", "all"]
        )
        assert result.exit_code == 0, result.output
    else:
        export(ExportOptions(out=out, format="executorch", checkpoint=qdir, prefill_logits="all"))
    return qdir, out


def _given(qdir: Path) -> GivenQuantization:
    given = load_checkpoint(qdir).quantization
    assert given is not None
    return given


def check_read_back(given: GivenQuantization, out: Path, name: str) -> None:
    """Every quantized weight read out of the .pte: integers equal, scales equal (int4 groups after bf16)."""
    rb = read_back(out / "model.pte", read_manifest(out).config)
    assert len(rb) == len(given.weights) and not rb.float_weights  # every weight as integers
    assert set(rb.weights) == set(given.weights)
    linears = [p for p, qt in given.weights.items() if not qt.block_diagonal and p != "embed_tokens.weight"]
    assert {rb.scale_dtypes[p] for p in linears} == {"bfloat16" if name == "int4" else "float32"}
    gates = [p for p, qt in given.weights.items() if qt.block_diagonal]
    assert gates and {rb.scale_dtypes[p] for p in gates} == {"float32"}  # both recipes: int8 per channel
    for param, qt in given.weights.items():
        got = rb.weights[param]
        want_scale = qt.scale.to(torch.bfloat16).float() if rb.scale_dtypes[param] == "bfloat16" else qt.scale
        assert got.scheme == qt.scheme and got.block_diagonal == qt.block_diagonal, param
        assert torch.equal(got.q, qt.q), param
        assert torch.equal(got.scale, want_scale), param
    # The head: the embedding's integers, packed by XNNPACK (the recipes' embedding is int8 per channel).
    emb = given.weights["embed_tokens.weight"]
    assert rb.head is not None and rb.scale_dtypes["head"] == "float32"
    assert torch.equal(rb.head.q, emb.q) and torch.equal(rb.head.scale, emb.scale)


def check_numerics(qdir: Path, out: Path, name: str) -> None:
    """The .pte against (a) our eager model holding the checkpoint's dequantized weights and
    (b) the eager step the target lowered (the given integers as torchao tensors).

    (a) is not the same arithmetic: XNNPACK quantizes activations to int8 per token at run time
    and holds int4 group scales in bf16. Measured (8 prompt tokens + 24 decode steps): max_rel
    0.016 (int8) and 0.015 (int4), min cosine 0.99984, top-1 1.0. (b) is: max_rel 0 (int8) and
    5.2e-4 (int4). Bounds ~3x (a), ~10x (b).
    """
    m = read_manifest(out)
    given = _given(qdir)
    prompt = prompt_ids(Tokenizer(out / m.tokenizer_file), 8)
    dequantized = TorchBackend(load_dequantized(load_checkpoint(qdir).model, given.weights))
    step, _ = quantized_step(load_checkpoint(qdir).model, given.recipe, given=given)
    for reference, max_rel in ((dequantized, 0.05), (StepBackend(step, m.config), 5e-3)):
        cmp, greedy = compare(open_artifact(out, m), reference, prompt, 24, greedy_tokens=8)
        s, _ = summarize(cmp, greedy)
        assert s["max_rel_logits"] <= max_rel, (name, reference.name, s)
        assert s["min_cosine"] >= 0.999 and s["top1_agreement"] >= 0.95, (name, reference.name, s)


def check_validate(given: GivenQuantization, qdir: Path, out: Path) -> None:
    """validate's integer check: passes on the checkpoint, names one changed integer of the head."""
    m, model = read_manifest(out), load_checkpoint(qdir).model
    assert integers_check(out, m, given, model)["status"] == "passed"
    emb = given.weights["embed_tokens.weight"]
    q = emb.q.clone()
    q[0, 0] = 1 if q[0, 0] != 1 else 0
    changed = GivenQuantization(given.recipe, {**given.weights, "embed_tokens.weight": replace(emb, q=q)})
    record = integers_check(out, m, changed, model)
    assert record["status"] == "failed", record
    assert "embed_tokens.weight: 1 integers differ" in record["detail"]
    assert "head: 1 integers differ" in record["detail"]


def check_manifest(out: Path, name: str) -> None:
    m = read_manifest(out)
    assert m.precision == name
    facts = m.quantization["executorch"]
    assert facts["given"] is True and facts["given_method"] == "rtn"
    scales = facts["scale_dtypes"]
    assert scales["linears"] == {"int8": "float32", "int4": "bfloat16"}[name]
    assert scales["embedding"] == "float32" and scales["embedding_lookup"] == "float32"
    assert scales["rglru_gates"] == "float32" and "rglru_gates" not in facts["kept_float"]


@pytest.mark.slow
def test_pte_from_a_quantized_checkpoint_ships_its_integers(tmp_path: Path, tiny_tokenizer: Path) -> None:
    """int8 (``rgmobile.export.export``) and int4 (CLI) from quantized checkpoint folders: the
    .pte reads back the checkpoint's integers, runs like it, and its manifest says so.
    One test: lowering takes ~40 s per artifact on the shared machine."""
    for name in RECIPES:
        qdir, out = _export(tmp_path / name, tiny_tokenizer, name)
        check_read_back(_given(qdir), out, name)
        check_validate(_given(qdir), qdir, out)
        check_numerics(qdir, out, name)
        check_manifest(out, name)


@torch.no_grad()
@pytest.mark.parametrize("name", RECIPES)
def test_step_holds_the_given_integers(name: str) -> None:
    """The eager step handed to torch.export: given integers in every linear and the head, the
    lookup table the embedding's, each RG-LRU gate head its block's integers (no lowering: seconds)."""
    model = _model()
    given = perturbed_given(model, load_recipe(name), seed=3)
    step, facts = quantized_step(model, given.recipe, given=given)
    modules = dict(step.model.named_modules())
    for param, qt in given.weights.items():
        if param == "embed_tokens.weight":
            head = step.lm_head.weight
            assert torch.equal(head.qdata, qt.q) and torch.equal(head.scale, qt.scale)
            assert torch.equal(step.model.embed_tokens.qdata, qt.q)
            assert torch.equal(step.model.embed_tokens.scales, qt.scale)
        elif qt.block_diagonal:
            heads = gate_linears(param, qt.q.shape[0])
            for i, linear in enumerate(heads):
                w = modules[linear].weight
                assert torch.equal(w.qdata, qt.q[i]) and torch.equal(w.scale, qt.scale[i]), linear
        else:
            w = modules[param.removesuffix(".weight")].weight
            want = qt.scale.to(torch.bfloat16).float() if qt.scheme.bits == 4 else qt.scale
            assert torch.equal(w.qdata, qt.q) and torch.equal(w.scale, want), param
            assert not bool(w.zero_point.any())
    assert facts["given"] is True


def test_small_int4_groups_are_refused_in_one_line() -> None:
    """int4 groups of 16: XNNPACK's blockwise kernels take multiples of 32; refused before lowering."""
    model = _model()
    given = perturbed_given(model, load_recipe("int4").with_options(group_size=16))
    with pytest.raises(RgMobileError) as info:
        quantized_step(model, given.recipe, given=given)
    message = str(info.value)
    assert "\n" not in message and "groups of 16" in message and "--group-size 32" in message
