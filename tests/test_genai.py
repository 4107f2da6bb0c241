"""onnxruntime-genai runs our ONNX artifacts and bundles: tokenizer.json and greedy tokens.

The tokenizer.json (transformers' Gemma converter) is checked against sentencepiece on the golden
strings; the greedy tokens of onnxruntime-genai are checked against rgmobile's own loop
(runtime_py.generate, feeding one token per step as onnxruntime-genai does) on the same files,
over 2 x window new tokens from a prompt longer than the window.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import numpy as np
import pytest

from exporter.artifact.genai import (
    GENAI_CONFIG,
    GENAI_FILES,
    tokenizer_json,
    tokenizer_json_mismatches,
    write_genai_files,
)
from exporter.artifact.manifest import read_manifest
from exporter.artifact.tokenizer_strings import tokenizer_strings
from exporter.checkpoint.loader import BUNDLED_DIR
from rgmobile.package.selftest import case_prompts
from runtime_py.backend import Backend
from runtime_py.generate import generate, run_tokens
from runtime_py.open import open_path
from runtime_py.tokenizer import Tokenizer


def load_config():
    from exporter.checkpoint.loader import load_checkpoint

    return load_checkpoint(BUNDLED_DIR).config


def test_tokenizer_json_matches_sentencepiece(tmp_path: Path) -> None:
    model = BUNDLED_DIR / "tokenizer.model"
    tokenizer_json(model, tmp_path / "tokenizer.json")
    assert tokenizer_json_mismatches(model, tmp_path / "tokenizer.json") == []
    assert len(tokenizer_strings()) >= 200
    assert write_genai_files(tmp_path, load_config(), model)
    assert {p.name for p in tmp_path.iterdir()} >= set(GENAI_FILES)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["add_bos_token"] is False


def test_a_tokenizer_the_converter_cannot_reproduce_gets_no_genai_files(tiny_tokenizer: Path, tmp_path: Path) -> None:
    """The tiny test tokenizer is a default SentencePiece model (dummy prefix, whitespace folding)."""
    tokenizer_json(tiny_tokenizer, tmp_path / "probe.json")
    assert tokenizer_json_mismatches(tiny_tokenizer, tmp_path / "probe.json")  # the check can fail
    out = tmp_path / "out"
    out.mkdir()
    assert not write_genai_files(out, load_config(), tiny_tokenizer)
    assert list(out.iterdir()) == []


def _genai_greedy(folder: Path, prompt_ids: list[int], new_tokens: int) -> list[int]:
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt_ids) + new_tokens, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray(prompt_ids, dtype=np.int32))
    out: list[int] = []
    while not generator.is_done() and len(out) < new_tokens:
        generator.generate_next_token()
        token = int(generator.get_next_tokens()[0])
        if token == 1:  # EOS: onnxruntime-genai emits it, our loop stops before it
            break
        out.append(token)
    return out


# Two logits closer than this are a tie: kernels that sum in another order (another thread
# split, another ISA path) may order them either way. A real difference is orders larger.
TIE = 2e-3


def _assert_same_or_tied(backend: Backend, prompt: list[int], ours: list[int], theirs: list[int]) -> None:
    """Equal tokens, or equal up to a step where our two candidates' logits are a :data:`TIE`.

    Past that step the two continuations differ by design, so the comparison ends there.
    """
    cut = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
    if cut is None:
        assert theirs == ours  # same tokens and same length
        return
    logits, _ = run_tokens(backend, [*prompt, *ours[:cut]], backend.init_state(1), max_chunk=1, all_logits=False)
    last = logits[-1]
    gap = float(last[ours[cut]] - last[theirs[cut]])
    assert 0 <= gap <= TIE, f"token {cut}: ours {ours[cut]}, onnxruntime-genai {theirs[cut]}, logit gap {gap:.3g}"


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_genai_greedy_equals_rgmobile(onnx_bundles: dict[str, Path], precision: str) -> None:
    """The default export: genai_config.json names step.onnx, which onnxruntime-genai runs at t = 1."""
    bundle = onnx_bundles[precision]
    assert json.loads((bundle / GENAI_CONFIG).read_text())["model"]["decoder"]["filename"] == "step.onnx"
    _check_genai_greedy(bundle)


@pytest.mark.slow
def test_genai_runs_a_graph_per_length_bundle(per_length_bundles: dict[str, Path]) -> None:
    """``export --graph-per-length``: genai_config.json names decode.onnx (t = 1)."""
    bundle = per_length_bundles["android"]
    assert json.loads((bundle / GENAI_CONFIG).read_text())["model"]["decoder"]["filename"] == "decode.onnx"
    _check_genai_greedy(bundle)


def _check_genai_greedy(bundle: Path) -> None:
    import onnxruntime_genai as og

    manifest = read_manifest(bundle)
    assert json.loads((bundle / GENAI_CONFIG).read_text())["model"]["eos_token_id"] == manifest.special_tokens["eos_id"]
    tok = Tokenizer(bundle / "tokenizer.model")
    window = manifest.config.window
    opened = open_path(bundle)
    for _, text in case_prompts(tok, window)[:2]:  # longer than the window; byte fallback
        # onnxruntime-genai runs the t = 1 program for every token, prompt included; so does our
        # loop here (max_chunk=1), so that both compute the very same operations. Through the
        # prefill program the int4 logits differ (other GEMM shapes in MLAS, int8 activations
        # quantized per block) and a near tie may flip a greedy token; that the two agree is
        # validate's business.
        ours = generate(opened.backend, tok, text, 2 * window, max_chunk=1)
        theirs = _genai_greedy(bundle, ours.prompt_ids, 2 * window)
        assert len(ours.new_ids) == 2 * window
        _assert_same_or_tied(opened.backend, ours.prompt_ids, ours.new_ids, theirs)
    # onnxruntime-genai's own tokenizer (from tokenizer.json) agrees with sentencepiece, without BOS
    og_tok = og.Tokenizer(og.Model(str(bundle)))
    for text in tokenizer_strings()[:60]:
        assert list(og_tok.encode(text)) == tok.encode(text, add_bos=False), repr(text)


class _FixedLogits:
    """A backend whose every step gives the same logits (for the tie rule itself)."""

    name = "fixed"

    def __init__(self, logits: list[float]) -> None:
        self.logits = np.asarray(logits, dtype=np.float32)

    def seq_lens(self) -> tuple[int, ...]:
        return (1,)

    def init_state(self, batch: int = 1) -> None:
        return None

    def step(self, input_ids: np.ndarray, position_ids: np.ndarray, state: None) -> tuple[np.ndarray, None]:
        return np.broadcast_to(self.logits, (1, input_ids.shape[1], self.logits.size)).copy(), None


def test_a_divergence_passes_only_at_a_tie() -> None:
    tied = cast(Backend, _FixedLogits([0.0, 5.0, 5.0 - TIE / 2, 1.0]))
    _assert_same_or_tied(tied, [0], [1, 1, 1], [1, 1, 1])
    _assert_same_or_tied(tied, [0], [1, 1, 1], [1, 2, 3])  # token 1 is a tie: the rest is not compared
    with pytest.raises(AssertionError, match="logit gap"):
        _assert_same_or_tied(tied, [0], [1, 1, 1], [1, 3, 1])  # 5.0 vs 1.0: a real difference
    with pytest.raises(AssertionError):
        _assert_same_or_tied(tied, [0], [1, 1, 1], [1, 1])  # shorter
