"""``rgmobile validate``: passes on a good artifact, fails (with the metric or error named) on broken ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from onnx_helpers import copy_artifact, freeze_output, rehash, swap_outputs, tiny_onnx_artifact
from typer.testing import CliRunner

from exporter.errors import RgMobileError
from rgmobile.cli import app
from runtime_py.thresholds import THRESHOLDS, exceeded, thresholds_for
from runtime_py.validate import ValidateOptions, validate

# Short runs for the broken artifacts: a wrong hand-off shows up within a few steps.
FAST = ["--steps", "8", "--greedy-tokens", "8"]


@pytest.fixture(scope="session")
def onnx_artifact(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    return tiny_onnx_artifact(tmp_path_factory, tiny_checkpoint)


def _run(args: list[str]):
    return CliRunner().invoke(app, ["validate", *args])


def test_validate_passes_on_good_artifact(onnx_artifact: Path, tmp_path: Path) -> None:
    report, plot = tmp_path / "report.json", tmp_path / "errors.png"
    result = _run([str(onnx_artifact), "--report", str(report), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert "validate passed" in result.output and "max_abs_logits" in result.output
    data = json.loads(report.read_text())
    assert data["passed"] is True and data["failures"] == []
    s = data["summary"]
    assert s["max_abs_logits"] <= 1e-4 and s["max_state_abs"] <= 1e-4
    assert s["min_cosine"] > 0.99999 and s["top1_agreement"] == 1.0 and s["greedy_match"] == 1.0
    assert s["positions"] >= 3 * data["window"] and data["decode_steps"] == 3 * 16
    kinds = [st["kind"] for st in data["steps"]]
    assert kinds[:2] == ["prefill", "prefill"] and "prompt" in kinds and kinds[-1] == "decode"
    assert data["thresholds"] == thresholds_for("onnx", "fp32")
    assert len(data["positions"]["max_abs_logits"]) == s["positions"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


GRAPHS = ("decode.onnx", "prefill.onnx")


def _swap_conv_states(d: Path) -> None:
    """(a) wrong state hand-off: layer 0 and layer 1 conv states come back swapped."""
    for f in GRAPHS:
        swap_outputs(d / f, "present.0.conv_state", "present.1.conv_state")


def _drop_recurrent_update(d: Path) -> None:
    """(a') the graph drops the RG-LRU update of layer 1 (its state passes through unchanged)."""
    for f in GRAPHS:
        freeze_output(d / f, "present.1.recurrent_state", "past_key_values.1.recurrent_state")


@pytest.mark.parametrize("break_it", [_swap_conv_states, _drop_recurrent_update])
def test_validate_fails_on_wrong_state_handoff(onnx_artifact: Path, tmp_path: Path, break_it) -> None:
    broken = copy_artifact(onnx_artifact, tmp_path / "broken")
    break_it(broken)
    rehash(broken)  # structurally valid: only the numbers can tell
    report = tmp_path / "r.json"
    result = _run([str(broken), *FAST, "--report", str(report)])
    assert result.exit_code == 1, result.output
    assert "validate failed: max_state_abs" in result.output
    failed = {f["metric"]: f for f in json.loads(report.read_text())["failures"]}
    assert failed["max_state_abs"]["value"] > 1e-2
    assert "max_abs_logits" in failed  # the wrong state also corrupts the logits


def test_validate_fails_on_wrong_manifest_pairs(onnx_artifact: Path, tmp_path: Path) -> None:
    """A manifest whose state pairing is wrong (two recurrent layers crossed) is caught by the numbers."""
    broken = copy_artifact(onnx_artifact, tmp_path / "pairs")
    data = json.loads((broken / "manifest.json").read_text())
    outs = {o["name"]: o for o in data["io"]["outputs"]}
    ins = {i["name"]: i for i in data["io"]["inputs"]}
    ins["past_key_values.0.recurrent_state"]["pair"] = "present.1.recurrent_state"
    ins["past_key_values.1.recurrent_state"]["pair"] = "present.0.recurrent_state"
    outs["present.0.recurrent_state"]["pair"] = "past_key_values.1.recurrent_state"
    outs["present.1.recurrent_state"]["pair"] = "past_key_values.0.recurrent_state"
    (broken / "manifest.json").write_text(json.dumps(data))
    report = validate(ValidateOptions(artifact=broken, steps=8, greedy_tokens=8))
    assert not report.passed
    assert "max_state_abs" in {f.metric for f in report.failures}


def test_validate_tampered_file_is_structural_error(onnx_artifact: Path, tmp_path: Path) -> None:
    broken = copy_artifact(onnx_artifact, tmp_path / "tampered")
    blob = bytearray((broken / "decode.onnx").read_bytes())
    blob[len(blob) // 2] ^= 0x01  # same size, one bit flipped in the weights
    (broken / "decode.onnx").write_bytes(bytes(blob))
    result = _run([str(broken), *FAST])
    assert result.exit_code == 2, result.output
    assert "decode.onnx sha256" in result.output and "does not match" in result.output
    with pytest.raises(RgMobileError, match="sha256"):
        validate(ValidateOptions(artifact=broken))


def test_validate_truncated_file_is_structural_error(onnx_artifact: Path, tmp_path: Path) -> None:
    broken = copy_artifact(onnx_artifact, tmp_path / "truncated")
    path = broken / "prefill.onnx"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = _run([str(broken), *FAST])
    assert result.exit_code == 2, result.output
    assert "prefill.onnx is" in result.output and "truncated" in result.output


def test_validate_missing_file_and_not_an_artifact(onnx_artifact: Path, tmp_path: Path) -> None:
    broken = copy_artifact(onnx_artifact, tmp_path / "missing")
    (broken / "tokenizer.model").unlink()
    result = _run([str(broken)])
    assert result.exit_code == 2 and "tokenizer.model listed in manifest.json is missing" in result.output
    result = _run([str(tmp_path)])
    assert result.exit_code == 2 and "not an rgmobile artifact" in result.output


def test_thresholds_are_data() -> None:
    assert THRESHOLDS["fp32"]["max_abs_logits"] == 1e-4
    # measured: with GELU decomposed, XNNPACK fp32 is as close to eager as onnxruntime (thresholds.py)
    assert thresholds_for("executorch", "fp32") == thresholds_for("onnx", "fp32") == THRESHOLDS["fp32"]
    assert exceeded("max_abs_logits", 2e-4, 1e-4) and not exceeded("min_cosine", 0.999999, 0.99999)
    assert exceeded("max_abs_logits", float("nan"), 1.0)
    with pytest.raises(RgMobileError, match="known"):
        thresholds_for("onnx", "int3")
