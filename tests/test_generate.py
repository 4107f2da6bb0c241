"""The generation loop: saved states (``--save-state`` / ``--resume``) and its reliability.

Resuming is exact (docs/bundle.md): greedy N tokens saved after k and resumed
for N - k equal the uninterrupted run, on every runnable format, before and
after the attention window. Greedy tokens of a tiny random model are nearly
constant, so each check also compares the final saved state (and the logits it
leads to) with the uninterrupted run's: a resume that lost any state fails there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import tiny_model
from onnx_helpers import copy_artifact, tiny_onnx_artifact
from typer.testing import CliRunner

from exporter.artifact.manifest import read_manifest, write_manifest
from exporter.checkpoint.loader import BUNDLED_DIR, load_checkpoint
from exporter.errors import RgMobileError
from rgmobile.cli import app
from runtime_py.backend import DEFAULT_MAX_CHUNK, plan_chunks
from runtime_py.generate import TextStream, generate, run_tokens
from runtime_py.identity import backend_identity
from runtime_py.onnx_backend import OnnxBackend
from runtime_py.onnx_backend import open_artifact as open_onnx
from runtime_py.state_file import load_state
from runtime_py.tokenizer import Tokenizer
from runtime_py.torch_backend import TorchBackend

PROMPT = "the big dog sat"
N = 30  # greedy tokens; the tiny window is 16


@pytest.fixture(scope="module")
def tok(tiny_tokenizer: Path) -> Tokenizer:
    return Tokenizer(tiny_tokenizer)


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path) -> TorchBackend:
    return TorchBackend(load_checkpoint(tiny_checkpoint).model)


@pytest.fixture(scope="module")
def onnx_backend(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> OnnxBackend:
    art = tiny_onnx_artifact(tmp_path_factory, tiny_checkpoint)
    return open_onnx(art, read_manifest(art))


def _states(path: Path, backend: Any) -> dict[str, np.ndarray]:
    return load_state(path, backend_identity(backend), backend.io).arrays


def _check_resume(tmp: Path, first: Any, second: Any, tok: Tokenizer, ks: tuple[int, ...] = (5, 22),
                  prompt: str = PROMPT, n: int = N, atol: float = 0.0) -> None:  # fmt: skip
    """Greedy n after ``prompt`` on ``first`` (saved after k), resumed on ``second`` == uninterrupted on both."""
    full_a = generate(first, tok, prompt, n, save_state=tmp / "full_a.rgstate")
    if second is not first:
        full_b = generate(second, tok, prompt, n, save_state=tmp / "full_b.rgstate")
        assert full_a.new_ids == full_b.new_ids
    assert not full_a.stopped_on_eos
    want = _states(tmp / ("full_a.rgstate" if second is first else "full_b.rgstate"), second)
    for k in ks:
        part = generate(first, tok, prompt, k, save_state=tmp / f"part{k}.rgstate")
        saved = load_state(tmp / f"part{k}.rgstate", backend_identity(first), first.io)
        assert saved.position == len(part.prompt_ids) + k - 1 and list(saved.token_ids[-k:]) == part.new_ids
        rest = generate(second, tok, "", n - k, resume=tmp / f"part{k}.rgstate", save_state=tmp / f"rest{k}.rgstate")
        assert part.new_ids + rest.new_ids == full_a.new_ids, k
        assert rest.prompt_ids == list(saved.token_ids) and rest.resumed_tokens == len(saved.token_ids)
        assert part.text + rest.text == full_a.text
        final = load_state(tmp / f"rest{k}.rgstate", backend_identity(second), second.io)
        assert final.token_ids == tuple(full_a.prompt_ids + full_a.new_ids)
        for name, arr in want.items():
            np.testing.assert_allclose(final.arrays[name], arr, rtol=0, atol=atol, err_msg=f"{name} (k={k})")


def test_resume_is_exact_on_the_reference(tmp_path: Path, reference: TorchBackend, tok: Tokenizer) -> None:
    _check_resume(tmp_path, reference, reference, tok)  # saved before / after the window (16) is full


def test_resume_is_exact_on_the_bundled_model(tmp_path: Path) -> None:
    """A trained model (window 64): its greedy text is not constant, so token equality means something."""
    if not (BUNDLED_DIR / "config.json").is_file():
        pytest.skip("bundled model not installed")
    ckpt = load_checkpoint(BUNDLED_DIR)
    backend, tok = TorchBackend(ckpt.model), Tokenizer(ckpt.tokenizer_path)
    assert ckpt.config.window == 64
    _check_resume(tmp_path, backend, backend, tok, (10, 62), prompt="Once upon a time", n=66)
    full = load_state(tmp_path / "full_a.rgstate", backend_identity(backend), backend.io)
    assert full.position > 64 and len(set(full.token_ids)) > 10  # past the window; a real continuation


def test_resume_is_exact_on_onnx(tmp_path: Path, onnx_backend: OnnxBackend, tok: Tokenizer) -> None:
    _check_resume(tmp_path, onnx_backend, onnx_backend, tok)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_resume_is_exact_on_executorch(tmp_path: Path, tiny_et_artifact: Path, tok: Tokenizer) -> None:
    from runtime_py.executorch_backend import open_artifact as open_et

    et = open_et(tiny_et_artifact, read_manifest(tiny_et_artifact))
    _check_resume(tmp_path, et, et, tok)


def test_states_move_between_the_checkpoint_and_its_onnx_artifact(
    tmp_path: Path, reference: TorchBackend, onnx_backend: OnnxBackend, tok: Tokenizer
) -> None:
    assert backend_identity(onnx_backend) == backend_identity(reference)  # computed at export vs at load
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _check_resume(tmp_path / "a", reference, onnx_backend, tok, (22,), atol=1e-4)
    _check_resume(tmp_path / "b", onnx_backend, reference, tok, (5,), atol=1e-4)


def test_resume_with_more_prompt_equals_one_run(
    tmp_path: Path, reference: TorchBackend, onnx_backend: OnnxBackend, tok: Tokenizer
) -> None:
    """Saved after a prompt, resumed with more text: the same as running all the text at once."""
    generate(reference, tok, "the big dog", 0, save_state=tmp_path / "p.rgstate")
    saved = load_state(tmp_path / "p.rgstate", backend_identity(reference), reference.io)
    assert list(saved.token_ids) == tok.encode("the big dog")  # 0 new tokens: the prompt, last token unrun
    more = " sat on the mat far away the small cat ran"
    once = generate(onnx_backend, tok, "the big dog" + more, 12, save_state=tmp_path / "once.rgstate")
    if tok.encode("the big dog" + more) != tok.encode("the big dog") + tok.encode(more, add_bos=False):
        pytest.skip("the tokenizer merges across the split")
    resumed = generate(onnx_backend, tok, more, 12, resume=tmp_path / "p.rgstate", save_state=tmp_path / "r.rgstate")
    assert resumed.new_ids == once.new_ids
    a, b = _states(tmp_path / "once.rgstate", onnx_backend), _states(tmp_path / "r.rgstate", onnx_backend)
    for name in a:
        np.testing.assert_allclose(b[name], a[name], atol=1e-4, err_msg=name)


def test_a_state_stops_on_eos_with_the_eos_unrun(tmp_path: Path, tok: Tokenizer) -> None:
    n = len(tok.encode("the"))
    backend = ScriptedBackend([40, 41, tok.eos_id], tok.vocab_size, first_position=n - 1)
    backend.identity_backend = TorchBackend(tiny_model())
    res = generate(backend, tok, "the", 10, save_state=tmp_path / "s.rgstate")
    assert res.new_ids == [40, 41] and res.stopped_on_eos
    saved = load_state(tmp_path / "s.rgstate", backend_identity(backend), backend.io)
    assert list(saved.token_ids) == [*res.prompt_ids, 40, 41, tok.eos_id] and saved.position == n + 2


def test_states_of_another_model_or_precision_are_refused(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, onnx_backend: OnnxBackend,
    tok: Tokenizer,
) -> None:  # fmt: skip
    other = TorchBackend(tiny_model(seed=2))  # same config, other weights
    generate(other, tok, PROMPT, 3, save_state=tmp_path / "other.rgstate")
    with pytest.raises(RgMobileError, match="different weights"):
        generate(onnx_backend, tok, "", 3, resume=tmp_path / "other.rgstate")
    # the same artifact with another precision in its identity (what an int4 export of it records)
    art = copy_artifact(tiny_onnx_artifact(tmp_path_factory, tiny_checkpoint), tmp_path / "as-int4")
    m = read_manifest(art)
    write_manifest(art, type(m)(**{**m.__dict__, "identity": {**(m.identity or {}), "precision": "int4"}}))
    as_int4 = open_onnx(art, read_manifest(art))
    generate(as_int4, tok, PROMPT, 3, save_state=tmp_path / "int4.rgstate")
    with pytest.raises(RgMobileError, match="precision 'int4'"):
        generate(onnx_backend, tok, "", 3, resume=tmp_path / "int4.rgstate")


@pytest.mark.slow
def test_a_state_of_a_real_int4_artifact_is_refused(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, onnx_backend: OnnxBackend,
    tok: Tokenizer,
) -> None:  # fmt: skip
    from test_quant_onnx import _quantized

    art = _quantized(tmp_path_factory, tiny_checkpoint, "int4")
    int4 = open_onnx(art, read_manifest(art))
    assert backend_identity(int4).precision == "int4"
    assert backend_identity(int4).weights_sha256 == backend_identity(onnx_backend).weights_sha256
    generate(int4, tok, PROMPT, 3, save_state=tmp_path / "int4.rgstate")
    with pytest.raises(RgMobileError, match="precision 'int4'"):
        generate(onnx_backend, tok, "", 3, resume=tmp_path / "int4.rgstate")


def test_cli_save_state_and_resume(tmp_path: Path, tiny_checkpoint: Path) -> None:
    runner = CliRunner()
    base = ["generate", str(tiny_checkpoint), "--max-new-tokens"]
    full = runner.invoke(app, [*base, "20", "--prompt", "the cat"])
    part = runner.invoke(app, [*base, "8", "--prompt", "the cat", "--save-state", str(tmp_path / "s.rgstate")])
    rest = runner.invoke(app, [*base, "12", "--resume", str(tmp_path / "s.rgstate")])
    assert full.exit_code == part.exit_code == rest.exit_code == 0, (part.output, rest.output)
    assert part.stdout.rstrip("\n") + rest.stdout == full.stdout
    assert "state saved to" in part.stderr and "(resumed " in rest.stderr
    bad = runner.invoke(app, [*base, "2", "--resume", str(tmp_path / "missing.rgstate")])
    assert bad.exit_code == 2 and "cannot read the state file" in bad.stderr


# --- reliability of the loop ------------------------------------------------------------------


class Counting:
    """A backend wrapper recording every step's length and the logits it returned."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.steps, self.logit_rows = inner, [], []
        self.name, self.config, self.io = inner.name, inner.config, inner.io

    def seq_lens(self) -> tuple[int, ...] | None:
        return self.inner.seq_lens()

    def init_state(self, batch: int = 1) -> Any:
        return self.inner.init_state(batch)

    def step(self, ids: np.ndarray, pos: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        logits, state = self.inner.step(ids, pos, state)
        self.steps.append(ids.shape[1])
        self.logit_rows.append(logits.shape[1])
        return logits, state


def test_plan_chunks_never_pads_and_honours_max_chunk_for_fixed_lengths() -> None:
    """Fixed step lengths (32, 1): whole chunks, then decode steps; max_chunk caps them too (1 = every
    token a decode step, as onnxruntime-genai runs a prompt); any t: chunks of at most max_chunk."""
    assert plan_chunks(70, (32, 1)) == [32, 32, 1, 1, 1, 1, 1, 1]
    assert plan_chunks(70, (32, 1), max_chunk=1) == [1] * 70
    assert plan_chunks(70, (32, 8, 1), max_chunk=16) == [8] * 8 + [1] * 6
    assert plan_chunks(70, None, max_chunk=32) == [32, 32, 6]
    assert plan_chunks(0, (32, 1)) == []


def test_long_prompts_run_in_bounded_chunks_keeping_only_the_last_logits(
    reference: TorchBackend, tok: Tokenizer
) -> None:
    counting = Counting(reference)
    prompt = " ".join(["the big dog sat on the mat"] * 36)  # ~290 tokens: 3 chunks
    ids = tok.encode(prompt)
    assert len(ids) > 2 * DEFAULT_MAX_CHUNK
    res = generate(counting, tok, prompt, 3)
    assert max(counting.steps) == DEFAULT_MAX_CHUNK and sum(counting.steps) == len(ids) + 2
    last, _ = run_tokens(counting, ids, counting.init_state(1), all_logits=False)
    assert last.shape == (1, tok.vocab_size)
    # the eager backend computes the head for the last position only
    last2, _ = run_tokens(reference, ids, reference.init_state(1), all_logits=False)
    every, _ = run_tokens(reference, ids, reference.init_state(1))
    assert every.shape == (len(ids), tok.vocab_size)
    np.testing.assert_allclose(last2[0], every[-1], atol=1e-5)
    np.testing.assert_allclose(last[0], every[-1], atol=1e-5)
    whole, _ = reference.step(np.asarray([ids]), np.arange(len(ids))[None], reference.init_state(1))
    np.testing.assert_allclose(whole[0, -1], every[-1], atol=1e-4)  # chunking changes nothing but rounding
    assert res.new_ids == [int(np.argmax(every[-1])), *res.new_ids[1:]]


class CountingTokenizer:
    def __init__(self, inner: Tokenizer) -> None:
        self.inner, self.calls = inner, []
        self.eos_id, self.bos_id = inner.eos_id, inner.bos_id

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        return self.inner.encode(text, add_bos)

    def decode(self, ids: list[int]) -> str:
        self.calls.append(len(ids))
        return self.inner.decode(ids)


class ScriptedBackend:
    """Logits that choose ``tokens`` in turn from ``first_position`` on; NaN/Inf where asked."""

    name = "scripted"

    def __init__(self, tokens: list[int], vocab: int, first_position: int, bad: dict[int, float] | None = None):
        self.tokens, self.vocab, self.first, self.bad = tokens, vocab, first_position, bad or {}
        self.config = tiny_model().config
        self.io = TorchBackend(tiny_model()).io
        self.identity_backend: Any = None

    @property
    def model(self) -> Any:  # identity: borrowed from a real model (only the state tests need one)
        return self.identity_backend.model

    def seq_lens(self) -> None:
        return None

    def init_state(self, batch: int = 1) -> dict[str, np.ndarray]:
        return {s.name: np.zeros(s.concrete_shape(batch), np.float32) for s in self.io.state_inputs}

    def step(self, ids: np.ndarray, pos: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        logits = np.zeros((1, ids.shape[1], self.vocab), np.float32)
        for j, p in enumerate(pos[0]):
            i = int(p) - self.first
            if 0 <= i < len(self.tokens):
                logits[0, j, self.tokens[i]] = 10.0
            if int(p) in self.bad:
                logits[0, j, 7] = self.bad[int(p)]
        return logits, state

    def state_arrays(self, state: Any) -> dict[str, np.ndarray]:
        return state

    def state_from_arrays(self, arrays: dict[str, np.ndarray]) -> Any:
        return arrays


def _bundled_tokenizer() -> Tokenizer:
    if not (BUNDLED_DIR / "tokenizer.model").is_file():
        pytest.skip("bundled model not installed")
    return Tokenizer(BUNDLED_DIR / "tokenizer.model")


def test_streaming_joins_byte_pieces_and_equals_the_full_decode() -> None:
    tok = _bundled_tokenizer()
    text = "Hello 😀 world: 日本語のテキスト, café ✓ 🇫🇷 done. " * 20
    ids = tok.encode(text, add_bos=False)
    assert any(tok.sp.IsByte(i) for i in ids)  # the text needs byte-fallback pieces
    stream = TextStream(tok)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == tok.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)  # no half characters on the way
    tail = TextStream(tok)  # an incomplete character at the very end is flushed as the decoder shows it
    cut = [*tok.encode("ok 😀", add_bos=False)][:-1]
    assert "".join([tail.push(i) for i in cut] + [tail.flush()]) == tok.decode(cut)


def test_generate_streams_with_bounded_decode_work() -> None:
    tok = _bundled_tokenizer()
    text = "One 😀 two 日本 three, " * 60
    script = tok.encode(text, add_bos=False)
    counting = CountingTokenizer(tok)
    backend = ScriptedBackend(script, tok.vocab_size, first_position=len(tok.encode("Go")) - 1)
    pieces: list[str] = []
    res = generate(backend, counting, "Go", len(script), on_text=pieces.append)  # type: ignore[arg-type]
    assert res.new_ids == script and "".join(pieces) == tok.decode(script) == res.text
    assert max(counting.calls) <= 8  # a bounded window of recent ids, not all ids so far
    assert sum(counting.calls) <= 8 * len(script)  # O(n) decode work


@pytest.mark.parametrize(("value", "what"), [(float("nan"), "NaN"), (float("inf"), "Inf"), (-float("inf"), "Inf")])
def test_non_finite_logits_are_reported(tok: Tokenizer, value: float, what: str) -> None:
    prompt_len = len(tok.encode("the"))
    backend = ScriptedBackend([40] * 10, tok.vocab_size, first_position=prompt_len - 1, bad={prompt_len + 2: value})
    with pytest.raises(RgMobileError, match=f"produced {what} logits at position {prompt_len + 2}"):
        generate(backend, tok, "the", 10, sampling=None)
    from runtime_py.sampling import SamplingConfig

    with pytest.raises(RgMobileError, match=f"{what} logits"):
        generate(backend, tok, "the", 10, sampling=SamplingConfig(temperature=1.0, seed=0))
    bad_prompt = ScriptedBackend([40], tok.vocab_size, first_position=prompt_len - 1, bad={prompt_len - 1: value})
    with pytest.raises(RgMobileError, match=f"at position {prompt_len - 1}"):
        generate(bad_prompt, tok, "the", 3)
