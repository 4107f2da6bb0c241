"""ONNX exports of a quantized checkpoint ship its integers and scales unchanged.

The checkpoints hold perturbed integers (tests/given_weights.py): off round-to-nearest and with
stretched scales, so only an artifact that stores exactly the given integers reads back equal.
One int8 artifact (through ``rgmobile.export.export``) and one int4 artifact (through the CLI),
both from a quantized checkpoint folder, both with decode and prefill graphs, built once per session.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import tiny_model
from given_weights import write_perturbed_checkpoint
from onnx import helper, numpy_helper
from onnx_helpers import CHUNK, ROW_BY_ROW, rehash
from typer.testing import CliRunner

from exporter.artifact.manifest import read_manifest
from exporter.checkpoint.loader import load_checkpoint
from exporter.errors import RgMobileError
from quantization.onnx import block_size_for, check_recipe
from quantization.onnx_given import pack
from quantization.onnx_readback import differences, read_artifact_weights, read_graph_weights
from quantization.qweights import GivenQuantization, load_dequantized, quantize_weights
from quantization.recipe import Recipe, WeightScheme, load_recipe
from rgmobile.cli import app
from rgmobile.export import ExportOptions, export
from runtime_py.onnx_backend import OnnxBackend
from runtime_py.tokenizer import Tokenizer
from runtime_py.torch_backend import TorchBackend
from runtime_py.validate import compare, prompt_ids, summarize
from runtime_py.validate_integers import NAME, integers_check

log = logging.getLogger(__name__)

RECIPES = ("int8", "int4")
_CACHE: dict[str, tuple[Path, Path]] = {}


def _given_artifact(factory: pytest.TempPathFactory, tokenizer: Path, name: str) -> tuple[Path, Path]:
    """(quantized checkpoint folder, ONNX artifact exported from it at accuracy level 0): int4 through
    the CLI's default (one ``step.onnx``), int8 one graph per step length."""
    if name not in _CACHE:
        root = factory.mktemp(f"given-onnx-{name}")
        qdir = write_perturbed_checkpoint(root / "q", tiny_model(), load_recipe(name), tokenizer, seed=7)
        out = root / "artifact"
        if name == "int4":  # end to end through the CLI
            args = ["export", str(qdir), "--format", "onnx", "--out", str(out), "--prefill-chunk", str(CHUNK),
                    "--accuracy-level", "0", "--prefill-logits", "all"]  # fmt: skip
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 0, result.output
        else:
            export(ExportOptions(out=out, checkpoint=qdir, prefill_chunk=CHUNK, accuracy_level=0, **ROW_BY_ROW))
        _CACHE[name] = (qdir, out)
    return _CACHE[name]


def _graphs(artifact: Path) -> list[str]:
    """The artifact's graph files: ``step.onnx``, or ``decode.onnx`` and ``prefill.onnx``."""
    return read_manifest(artifact).program_files()


@pytest.fixture(scope="session", params=RECIPES)
def given_artifact(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path):
    """(recipe name, quantized checkpoint, its ONNX artifact)."""
    return request.param, *_given_artifact(tmp_path_factory, tiny_tokenizer, request.param)


def _given(qdir: Path) -> GivenQuantization:
    given = load_checkpoint(qdir).quantization
    assert given is not None
    return given


def test_validate_checks_the_integers_against_the_checkpoint(given_artifact) -> None:
    """validate's check passes on the checkpoint the artifact came from and names a changed integer."""
    name, qdir, artifact = given_artifact
    given = _given(qdir)
    model = load_checkpoint(qdir).model
    manifest = read_manifest(artifact)
    assert integers_check(artifact, manifest, given, model)["status"] == "passed"
    param = "layers.0.mlp_block.up_proj.weight"
    q = given.weights[param].q.clone()
    q[0, 0] = 1 if q[0, 0] != 1 else 0
    changed = GivenQuantization(given.recipe, {**given.weights, param: replace(given.weights[param], q=q)})
    record = integers_check(artifact, manifest, changed, model)
    assert record["status"] == "failed" and f"{param}: 1 integers differ" in record["detail"], record


# --- 1. read-back ----------------------------------------------------------------------------------


def test_artifact_holds_the_checkpoints_integers_and_scales(given_artifact) -> None:
    """Every quantized weight, read out of each graph + weights.bin, equals the
    checkpoint's integers exactly and its float32 scales exactly (the graph keeps them fp32)."""
    name, qdir, artifact = given_artifact
    given = _given(qdir)
    assert given.recipe == load_recipe(name)
    for graph in _graphs(artifact):
        back = read_graph_weights(artifact / graph)
        assert len(back) == len(given.weights) and set(back) == set(given.weights), graph
        for param, qt in given.weights.items():
            got = back[param]
            assert got.scheme == qt.scheme and got.block_diagonal == qt.block_diagonal, param
            assert torch.equal(got.q, qt.q), f"{graph} {param}: integers differ"
            assert got.scale.dtype == torch.float32 and torch.equal(got.scale, qt.scale), f"{graph} {param}: scales"
    assert "embed_tokens.weight" in back  # the tied head, read from its MatMulNBits and its Gather
    assert differences(given.weights, read_artifact_weights(artifact)) == []
    # the checkpoint's integers are not what round to nearest would choose: equality above means something
    rtn = quantize_weights(load_checkpoint(qdir).model, given.recipe)
    assert len(differences(given.weights, rtn)) == len(given.weights)


def test_readback_sees_one_changed_integer(given_artifact, tmp_path: Path) -> None:
    """A single integer byte changed in weights.bin is reported for exactly that parameter."""
    _, qdir, artifact = given_artifact
    broken = tmp_path / "broken"
    shutil.copytree(artifact, broken)
    graph = broken / read_manifest(broken).programs["decode"].file
    proto = onnx.load(str(graph), load_external_data=False)
    init = next(i for i in proto.graph.initializer if i.name == "layers.1.mlp_block.down_proj.weight_t_Q4"
                or i.name == "layers.1.mlp_block.down_proj.weight_t_Q8")  # fmt: skip
    offset = int(next(e.value for e in init.external_data if e.key == "offset"))
    with open(broken / "weights.bin", "r+b") as f:
        f.seek(offset + 5)
        byte = f.read(1)[0]
        f.seek(offset + 5)
        f.write(bytes([byte ^ 0x01]))
    rehash(broken)
    assert differences(_given(qdir).weights, read_graph_weights(graph)) == [
        "layers.1.mlp_block.down_proj.weight: 1 integers differ"
    ]
    # both programs point at the same bytes: the change shows in the artifact's read-back too
    assert len(differences(_given(qdir).weights, read_artifact_weights(broken))) == 1


PACK_CASES = [(8, "per_channel", None, 24), (4, "per_group", 16, 48), (4, "per_channel", None, 40),
              (8, "per_group", 32, 64)]  # fmt: skip


@pytest.mark.parametrize(("bits", "granularity", "group", "k"), PACK_CASES)
def test_packing_runs_in_onnxruntime_as_q_times_scale(bits: int, granularity: str, group: int | None, k: int) -> None:
    """One MatMulNBits holding packed given integers (K padded to whole blocks when it must be)
    computes x @ (q * scale)^T in onnxruntime, and unpacks back to the same q."""
    import onnxruntime as ort

    from quantization.onnx_mlas import unpack

    scheme = WeightScheme(bits, granularity, group)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(bits + k)
    n, lo, hi = 12, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    q = torch.randint(lo, hi + 1, (n, k), generator=gen, dtype=torch.int8)
    groups = 1 if group is None else k // group
    scale = torch.rand(n, groups, generator=gen) + 0.1
    block = block_size_for(scheme, k)
    packed, scales = pack(q.numpy(), scale.numpy(), scheme, block)
    assert np.array_equal(unpack(packed, bits).reshape(n, -1)[:, :k] - 2 ** (bits - 1), q.numpy())
    node = helper.make_node("MatMulNBits", ["x", "b", "s"], ["y"], domain="com.microsoft",
                            K=k, N=n, bits=bits, block_size=block)  # fmt: skip
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3, k])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3, n])],
        [numpy_helper.from_array(packed, "b"), numpy_helper.from_array(scales, "s")],
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    )
    x = torch.randn(3, k, generator=gen)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    w = q.float() * (scale if group is None else scale.repeat_interleave(group, dim=1))
    assert np.allclose(y[0], (x @ w.t()).numpy(), rtol=1e-5, atol=1e-4)


# --- 2. numerics -----------------------------------------------------------------------------------


def test_onnxruntime_matches_eager_with_the_given_weights(given_artifact, tiny_tokenizer: Path) -> None:
    """onnxruntime (accuracy level 0: fp32 activations) vs the eager model holding the dequantized
    given weights: float rounding only. The fp32 model is far off (the integers are perturbed)."""
    _, qdir, artifact = given_artifact
    given = _given(qdir)
    backend = OnnxBackend(artifact, read_manifest(artifact))
    prompt = prompt_ids(Tokenizer(tiny_tokenizer), 2 * CHUNK + 3)
    errors = {}
    for label, ref in (("given", load_dequantized(tiny_model(), given.weights)), ("fp32", tiny_model())):
        cmp, greedy = compare(backend, TorchBackend(ref), prompt, steps=24, greedy_tokens=8)
        errors[label] = summarize(cmp, greedy)[0]
    log.info("max abs logits vs the given weights / fp32: %s", {k: e["max_abs_logits"] for k, e in errors.items()})
    assert errors["given"]["max_abs_logits"] < 2e-5 and errors["given"]["max_state_abs"] < 2e-5
    assert errors["given"]["top1_agreement"] == 1.0
    assert errors["fp32"]["max_abs_logits"] > 100 * errors["given"]["max_abs_logits"]


# --- 3. end to end: the manifest -------------------------------------------------------------------


def test_manifest_records_that_the_integers_were_given(given_artifact) -> None:
    name, qdir, artifact = given_artifact
    given = _given(qdir)
    m = read_manifest(artifact)
    assert m.precision == name
    assert {k: v for k, v in m.quantization.items() if k != "onnx"} == given.recipe.to_dict()
    facts = m.quantization["onnx"]
    assert facts["given"] is True and facts["scale_dtype"] == "float32"
    assert facts["given_params"] == len(given.weights) and facts["given_method"] == given.method
    assert facts["accuracy_level"] == 0 and "given integers" in facts["tool"]
    for graph in _graphs(artifact):
        proto = onnx.load(str(artifact / graph), load_external_data=False)
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["rgmobile.quantization.given"] == "true"
        assert json.loads(meta["rgmobile.quantization"]) == given.recipe.to_dict()
        # tied: the embedding's integers are the head's bytes in weights.bin, stored once
        inits = {i.name: {e.key: e.value for e in i.external_data} for i in proto.graph.initializer}
        gbq = next(n for n in proto.graph.node if n.op_type == "GatherBlockQuantized")
        head = next(n for n in proto.graph.node if n.op_type == "MatMulNBits" and n.input[1].startswith("lm_head"))
        assert gbq.input[2] == head.input[2]
        assert (inits[gbq.input[0]]["offset"], inits[gbq.input[0]]["length"]) == (
            inits[head.input[1]]["offset"], inits[head.input[1]]["length"])  # fmt: skip


# --- 4. refusal ------------------------------------------------------------------------------------


def test_a_group_size_matmulnbits_cannot_hold_is_refused_in_one_line(tmp_path: Path, tiny_tokenizer: Path) -> None:
    base = load_recipe("int4")
    recipe = Recipe(**{**base.__dict__, "name": "int4-g8", "linears": WeightScheme(4, "per_group", 8)})
    with pytest.raises(RgMobileError, match="group size 8 cannot be held by MatMulNBits"):
        check_recipe(recipe)
    qdir = write_perturbed_checkpoint(tmp_path / "q", tiny_model(), recipe, tiny_tokenizer)
    result = CliRunner().invoke(app, ["export", str(qdir), "--format", "onnx", "--out", str(tmp_path / "a")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "group size 8" in lines[0] and "16, 32, 64, 128, 256" in lines[0], result.output
    assert not (tmp_path / "a").exists()


# --- the bundled trained model ---------------------------------------------------------------------


@pytest.mark.slow
def test_bundled_gptq_checkpoint_ships_its_integers_and_passes_validate(tmp_path: Path) -> None:
    """Calibrated int4 integers of the trained model: read back unchanged from the default export
    (accuracy level 4), and validate against the quantized checkpoint passes."""
    from runtime_py.validate import ValidateOptions, validate

    q = tmp_path / "q"
    res = CliRunner().invoke(app, ["quantize", "--recipe", "int4", "--method", "gptq", "--out", str(q),
                                   "--calibration-tokens", "1024", "--eval-tokens", "256"])  # fmt: skip
    assert res.exit_code == 0, res.output
    art = tmp_path / "onnx"
    res = CliRunner().invoke(app, ["export", str(q), "--format", "onnx", "--out", str(art)])
    assert res.exit_code == 0, res.output
    given = _given(q)
    assert given.method == "gptq"
    assert differences(given.weights, read_artifact_weights(art)) == []
    assert read_manifest(art).quantization["onnx"]["given_method"] == "gptq"
    report = validate(ValidateOptions(artifact=art, greedy_tokens=16, quality_tokens=1024))
    assert report.passed, [f.message() for f in report.failures]
    (integers,) = [c for c in report.checks if c["name"] == NAME]  # the default reference: the checkpoint
    assert integers["status"] == "passed", integers
