"""The CLI: generate and info on checkpoints, one-line errors with exit code 2."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from exporter.checkpoint.loader import BUNDLED_DIR, load_checkpoint
from rgmobile.cli import app
from runtime_py.generate import generate
from runtime_py.sampling import Sampler, SamplingConfig
from runtime_py.tokenizer import Tokenizer
from runtime_py.torch_backend import TorchBackend

runner = CliRunner()


def test_info_preset_2b_counts_and_state() -> None:
    res = runner.invoke(app, ["info", "--preset", "2b"])
    assert res.exit_code == 0, res.output
    assert "2,682,862,080" in res.output and "655,360,000" in res.output
    assert "16.4 MB" in res.output  # fp16 state, constant in context length


def test_info_checkpoint(tiny_checkpoint: Path) -> None:
    res = runner.invoke(app, ["info", str(tiny_checkpoint)])
    assert res.exit_code == 0, res.output
    assert "RRARRA" in res.output


def test_generate_greedy_is_deterministic(tiny_checkpoint: Path) -> None:
    args = ["generate", str(tiny_checkpoint), "--prompt", "the cat sat", "--max-new-tokens", "40"]
    a, b = runner.invoke(app, args), runner.invoke(app, args)
    assert a.exit_code == 0, a.output
    assert a.stdout == b.stdout and len(a.stdout) > len("the cat sat")


def test_generate_seeded_sampling_repeats_and_seeds_differ(tiny_checkpoint: Path) -> None:
    base = ["generate", str(tiny_checkpoint), "--prompt", "the", "--max-new-tokens", "30", "--temperature", "1.5"]
    a = runner.invoke(app, [*base, "--seed", "1", "--top-k", "50", "--top-p", "0.95"])
    b = runner.invoke(app, [*base, "--seed", "1", "--top-k", "50", "--top-p", "0.95"])
    c = runner.invoke(app, [*base, "--seed", "2", "--top-k", "50", "--top-p", "0.95"])
    assert a.exit_code == 0, a.output
    assert a.stdout == b.stdout != c.stdout


def test_streamed_text_equals_final_text(tiny_checkpoint: Path) -> None:
    ckpt = load_checkpoint(tiny_checkpoint)
    pieces: list[str] = []
    res = generate(TorchBackend(ckpt.model), Tokenizer(ckpt.tokenizer_path), "a big", 50, on_text=pieces.append)
    assert "".join(pieces) == res.text and len(res.new_ids) == 50


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["generate", "/no/such/ckpt"], "does not exist"),
        (["generate", "--temperature", "-1"], "temperature"),
        (["generate", "--top-p", "0"], "top-p"),
        (["info", "--preset", "7b"], "valid presets"),
    ],
)
def test_user_errors_are_one_line_exit_2(args: list[str], needle: str, tiny_checkpoint: Path) -> None:
    if args[0] == "generate" and len(args) > 1 and args[1].startswith("--"):
        args = [args[0], str(tiny_checkpoint), *args[1:]]
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.output


@pytest.mark.parametrize(
    "exc",
    [
        OSError(28, "No space left on device", "/out/weights.bin"),
        # shutil.copytree (coremltools' save) reports its errors as text in a list
        shutil.Error([("/tmp/a.mlpackage/weight.bin", "/out/weight.bin", "[Errno 28] No space left on device")]),
    ],
)
def test_full_disk_is_one_line_exit_2(exc: OSError, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(options: object) -> None:
        raise exc

    monkeypatch.setattr("rgmobile.export.export", full)
    res = runner.invoke(app, ["export", "--format", "onnx", "--out", str(tmp_path / "a")])
    assert res.exit_code == 2, res.output
    assert "no space left on the device" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.output


def test_other_os_errors_are_not_called_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(options: object) -> None:
        raise PermissionError(13, "Permission denied", "/out")

    monkeypatch.setattr("rgmobile.export.export", denied)
    res = runner.invoke(app, ["export", "--format", "onnx", "--out", str(tmp_path / "a")])
    assert res.exit_code == 2 and "Permission denied: /out" in res.output and "space" not in res.output


def test_samplers() -> None:
    logits = np.array([0.0, 3.0, 1.0, 2.9])
    assert Sampler(SamplingConfig())(logits) == 1
    top1 = Sampler(SamplingConfig(temperature=5.0, top_k=1, seed=0))
    assert {top1(logits) for _ in range(20)} == {1}
    nucleus = Sampler(SamplingConfig(temperature=1.0, top_p=0.5, seed=0))
    assert {nucleus(logits) for _ in range(50)} <= {1, 3}
    wide = Sampler(SamplingConfig(temperature=1.0, seed=0))
    assert len({wide(logits) for _ in range(200)}) == 4


@pytest.mark.skipif(not (BUNDLED_DIR / "config.json").exists(), reason="bundled model not trained yet")
def test_bundled_model_speaks_english() -> None:
    res = runner.invoke(app, ["generate", "--prompt", "The man said that", "--max-new-tokens", "40"])
    assert res.exit_code == 0, res.output
    words = res.stdout.split()
    common = {"the", "a", "of", "and", "to", "in", "was", "he", "it", "that", "is", "for", "on", "with", "his"}
    assert len(words) >= 15
    assert sum(w.lower().strip('.,;:"') in common for w in words) >= 4, res.stdout
