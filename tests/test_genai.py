"""onnxruntime-genai runs our ONNX artifacts and bundles: tokenizer.json and greedy tokens.

The tokenizer.json (transformers' Gemma converter) is checked against sentencepiece on the golden
strings; the greedy tokens of onnxruntime-genai are checked against rgmobile's own loop
(runtime_py.generate) on the same files, over 2 x window new tokens from a prompt longer than the
window.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from exporter.checkpoint.loader import BUNDLED_DIR
from exporter.package.genai import (
    GENAI_CONFIG,
    GENAI_FILES,
    tokenizer_json,
    tokenizer_json_mismatches,
    write_genai_files,
)
from exporter.package.manifest import read_manifest
from exporter.package.selftest import case_prompts, tokenizer_strings
from runtime_py.generate import generate
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


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_genai_greedy_equals_rgmobile(onnx_bundles: dict[str, Path], precision: str) -> None:
    import onnxruntime_genai as og

    bundle = onnx_bundles[precision]
    manifest = read_manifest(bundle)
    assert json.loads((bundle / GENAI_CONFIG).read_text())["model"]["eos_token_id"] == manifest.special_tokens["eos_id"]
    tok = Tokenizer(bundle / "tokenizer.model")
    window = manifest.config.window
    opened = open_path(bundle)
    for _, text in case_prompts(tok, window)[:2]:  # longer than the window; byte fallback
        ours = generate(opened.backend, tok, text, 2 * window)
        theirs = _genai_greedy(bundle, ours.prompt_ids, 2 * window)
        assert len(ours.new_ids) == 2 * window
        assert theirs == ours.new_ids
    # onnxruntime-genai's own tokenizer (from tokenizer.json) agrees with sentencepiece, without BOS
    og_tok = og.Tokenizer(og.Model(str(bundle)))
    for text in tokenizer_strings()[:60]:
        assert list(og_tok.encode(text)) == tok.encode(text, add_bos=False), repr(text)
