"""selftest.json: golden cases from the PyTorch reference, its schema, and the checker that runs it.

The checker must be able to fail: it is run against the artifact the cases were made for (passes)
and against models that differ a little or a lot (fails), and with a tokenizer vector altered.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from onnx_helpers import tiny_onnx_artifact

from exporter.artifact.manifest import read_manifest
from exporter.artifact.tokenizer_strings import FIXED_STRINGS, tokenizer_strings
from exporter.checkpoint.loader import load_checkpoint
from exporter.errors import RgMobileError
from rgmobile.package.selftest import (
    build_selftest,
    case_prompts,
    check_selftest,
    check_steps,
    read_selftest,
)
from rgmobile.package.selftest_check import run_selftest
from runtime_py.onnx_backend import OnnxBackend
from runtime_py.thresholds import thresholds_for
from runtime_py.tokenizer import Tokenizer
from runtime_py.torch_backend import TorchBackend
from tests.conftest import tiny_model


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    return tiny_onnx_artifact(tmp_path_factory, tiny_checkpoint)


@pytest.fixture(scope="module")
def selftest(tiny_onnx: Path, tiny_checkpoint: Path) -> dict:
    manifest = read_manifest(tiny_onnx)
    reference = TorchBackend(load_checkpoint(tiny_checkpoint).model)
    return build_selftest(
        reference=reference, artifact=OnnxBackend(tiny_onnx, manifest),
        tokenizer=Tokenizer(tiny_onnx / "tokenizer.model"), artifact_format="onnx", precision="fp32",
        tolerances=thresholds_for("onnx", "fp32"),
    )  # fmt: skip


def test_tokenizer_strings_are_deterministic_and_cover_the_cases() -> None:
    strings = tokenizer_strings()
    assert strings == tokenizer_strings()
    assert len(strings) >= 200 and len(set(strings)) == len(strings)
    assert strings[: len(FIXED_STRINGS)] == list(FIXED_STRINGS)
    kinds = {
        "empty": lambda s: s == "",
        "leading space": lambda s: s.startswith(" ") and s.strip(),
        "trailing space": lambda s: s.endswith(" ") and s.strip(),
        "double space": lambda s: "  " in s.strip(),
        "tab": lambda s: "\t" in s,
        "newline": lambda s: "\n" in s,
        "emoji": lambda s: any(ord(c) >= 0x1F300 for c in s),
        "cjk": lambda s: any(0x4E00 <= ord(c) <= 0x9FFF for c in s),
        "accent": lambda s: any(c in "éïüñçà" for c in s),
        "digits": lambda s: any(c.isdigit() for c in s),
        "punctuation": lambda s: any(c in "!?.,;:" for c in s),
    }
    for kind, test in kinds.items():
        assert any(test(s) for s in strings), kind


def test_cases_wrap_the_window_and_hit_byte_fallback(selftest: dict, tiny_onnx: Path) -> None:
    sp = spm.SentencePieceProcessor(model_file=str(tiny_onnx / "tokenizer.model"))
    window = selftest["window"]
    cases = {c["name"]: c for c in selftest["cases"]}
    assert set(cases) == {"wraps-window", "non-ascii", "short"}
    assert len(cases["wraps-window"]["prompt_ids"]) > window
    assert any(sp.id_to_piece(i).startswith("<0x") for i in cases["non-ascii"]["prompt_ids"])
    for case in cases.values():
        assert case["prompt_ids"][0] == sp.bos_id()
        assert case["max_new_tokens"] == 2 * window
        assert case["artifact_greedy_ids"] == case["reference_greedy_ids"]  # fp32 ONNX: same greedy tokens
        steps = [c["step"] for c in case["checks"]]
        n = len(case["reference_greedy_ids"])
        assert 0 in steps and n - 1 in steps
        assert any(c["position"] >= window for c in case["checks"])
    assert len(selftest["tokenizer"]) >= 200
    assert check_selftest(selftest) is selftest


def test_check_steps() -> None:
    assert check_steps(prompt_len=5, generated=128, window=64) == [0, 60, 92, 127]
    assert check_steps(prompt_len=100, generated=128, window=64) == [0, 32, 127]
    assert check_steps(prompt_len=5, generated=0, window=64) == [0]


def test_checker_passes_on_the_artifact(selftest: dict, tiny_onnx: Path) -> None:
    backend = OnnxBackend(tiny_onnx, read_manifest(tiny_onnx))
    result = run_selftest(selftest, backend, Tokenizer(tiny_onnx / "tokenizer.model"), eos_id=1)
    assert result.passed, result.summary()
    assert result.worst_error < 1e-4 and result.agreement == 1.0 and result.worst_match == 1.0
    assert result.tokenizer_mismatches == 0 and result.tokenizer_total == len(selftest["tokenizer"])


def _scaled(model: torch.nn.Module, name: str, factor: float) -> torch.nn.Module:
    with torch.no_grad():
        model.state_dict()[name].mul_(factor)
    return model


def test_checker_fails_on_a_slightly_different_model(selftest: dict, tiny_checkpoint: Path, tiny_onnx: Path) -> None:
    model = load_checkpoint(tiny_checkpoint).model
    name = "layers.0.mlp_block.up_proj.weight"
    tokenizer = Tokenizer(tiny_onnx / "tokenizer.model")
    result = run_selftest(selftest, TorchBackend(_scaled(model, name, 1.01)), tokenizer, eos_id=1)
    assert not result.passed
    assert result.worst_error > selftest["tolerances"]["max_abs_logits"]
    other = run_selftest(selftest, TorchBackend(tiny_model(seed=7)), tokenizer, eos_id=1)
    # (random tied embeddings: argmax is mostly the input token, so greedy may still match; the logits do not)
    assert not other.passed and other.worst_error > 1.0


def test_checker_fails_on_a_tokenizer_mismatch(selftest: dict, tiny_checkpoint: Path, tiny_onnx: Path) -> None:
    data = copy.deepcopy(selftest)
    vector = next(v for v in data["tokenizer"] if v["ids"])
    vector["ids"] = [*vector["ids"], vector["ids"][-1]]
    result = run_selftest(data, TorchBackend(load_checkpoint(tiny_checkpoint).model),
                          Tokenizer(tiny_onnx / "tokenizer.model"), eos_id=1)  # fmt: skip
    assert not result.passed and result.tokenizer_mismatches == 1
    assert any("tokenizer" in f for f in result.failures)


def test_schema_refusals(selftest: dict, tmp_path: Path) -> None:
    newer = {**selftest, "schema_version": 2}
    with pytest.raises(RgMobileError, match="newer than this rgmobile reads"):
        check_selftest(newer)
    with pytest.raises(RgMobileError, match="not an rgmobile self-test"):
        check_selftest({**selftest, "format": "other"})
    bad = copy.deepcopy(selftest)
    bad["cases"][0]["checks"][0]["position"] += 1
    with pytest.raises(RgMobileError, match="inconsistent position"):
        check_selftest(bad)
    bad = copy.deepcopy(selftest)
    del bad["tolerances"]["greedy_match"]
    with pytest.raises(RgMobileError, match="tolerances"):
        check_selftest(bad)
    (tmp_path / "selftest.json").write_text("{not json")
    with pytest.raises(RgMobileError, match="not valid JSON"):
        read_selftest(tmp_path / "selftest.json")


def test_long_prompt_is_longer_than_a_large_window(tiny_onnx: Path) -> None:
    tokenizer = Tokenizer(tiny_onnx / "tokenizer.model")
    (name, text), *_ = case_prompts(tokenizer, window=200)
    assert name == "wraps-window" and len(tokenizer.encode(text)) > 200
