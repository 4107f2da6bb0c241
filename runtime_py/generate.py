"""The generation loop over any backend: prefill in chunks, then decode one token at a time.

The loop owns the position counter and hands each step's state to the next
step; the backend never sees more than one step. The same loop runs the
PyTorch reference, onnxruntime, ExecuTorch and Core ML.

Memory and time stay flat in the length of the prompt and of the output: the
prompt runs in bounded chunks keeping only the logits that are used, and text
is streamed by decoding a bounded window of recent ids (:class:`TextStream`).

A run can start from a saved state and save its own (``*.rgstate``,
:mod:`runtime_py.state_file`): the saved tokens end with the last sampled token,
which the state has not run yet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exporter.errors import RgMobileError
from runtime_py.backend import Backend, State, every_position_seq_lens, plan_chunks
from runtime_py.sampling import Sampler, SamplingConfig
from runtime_py.tokenizer import Tokenizer

log = logging.getLogger(__name__)

REPLACEMENT = "\ufffd"  # what a decoder shows for an incomplete UTF-8 sequence


def run_tokens(
    backend: Backend,
    ids: list[int],
    state: State,
    start: int = 0,
    max_chunk: int | None = None,
    all_logits: bool = True,
) -> tuple[np.ndarray, State]:
    """Feed ``ids`` from absolute position ``start`` in supported chunks.

    Returns (logits, state after the last token): logits [len(ids), v] with
    ``all_logits``, else only the last position's [1, v] (the other chunks'
    logits are dropped as soon as they are computed, or never computed when
    the backend has ``step_last`` or its programs return the last position's
    logits only; such a backend gets every position's logits through t = 1 steps).
    """
    lens = every_position_seq_lens(backend) if all_logits else backend.seq_lens()
    chunks = plan_chunks(len(ids), lens, max_chunk or getattr(backend, "max_chunk", None))
    if not chunks:
        raise RgMobileError("nothing to run: the prompt is empty")
    step_last: Callable[..., tuple[np.ndarray, State]] | None = (
        None if all_logits else getattr(backend, "step_last", None)
    )
    outs: list[np.ndarray] = []
    pos = start
    for n in chunks:
        chunk = np.asarray(ids[pos - start : pos - start + n], dtype=np.int64)[None, :]  # [1, n]
        position_ids = np.arange(pos, pos + n, dtype=np.int64)[None, :]  # [1, n]
        if step_last is not None:
            logits, state = step_last(chunk, position_ids, state)  # [1, 1, v]
        else:
            logits, state = backend.step(chunk, position_ids, state)  # [1, n, v]
        if all_logits:
            outs.append(logits[0])
        else:
            outs = [np.array(logits[0, -1:])]  # a copy: the chunk's [n, v] buffer is freed
        pos += n
    return np.concatenate(outs, axis=0), state


def check_finite(logits: np.ndarray, position: int) -> None:
    """Refuse NaN/Inf logits [v] (a broken artifact or overflow) before a sampler sees them."""
    if not np.isfinite(logits).all():
        what = "NaN" if np.isnan(logits).any() else "Inf"
        raise RgMobileError(
            f"the model produced {what} logits at position {position}; the artifact or checkpoint is broken "
            "(validate it with `rgmobile validate`)"
        )


class TextStream:
    """Incremental detokenizer: each pushed id returns the text it adds (possibly "").

    Decodes only the ids since the previous emitted boundary (plus one step of
    context, so a decoder that treats the first piece specially treats both
    decodes alike): O(1) ids per call instead of all ids so far. A boundary is
    placed only where the decoded text does not end in an incomplete UTF-8
    sequence, so byte-fallback pieces of one emoji or CJK character are emitted
    together. Concatenated, the pieces equal ``tokenizer.decode(all ids)``, or
    with ``context`` (ids already shown, e.g. the last prompt token), the text
    those ids add after it: a SentencePiece decoder drops the leading space of
    the first piece it decodes, which a continuation must keep.
    """

    def __init__(self, tokenizer: Any, context: list[int] | None = None, max_hold: int = 64) -> None:
        self.tokenizer = tokenizer
        self.max_hold = max_hold  # emit anyway after this many held ids (only invalid byte runs get here)
        self.ids: list[int] = [int(i) for i in context or []]
        self.prefix = 0  # ids[prefix:read] were emitted in the previous piece (decode context)
        self.read = len(self.ids)  # ids[:read] are emitted (or were context)
        self.prefix_text = tokenizer.decode(self.ids) if self.ids else ""

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        text = self.tokenizer.decode(self.ids[self.prefix :])
        held = len(self.ids) - self.read
        if text.endswith(REPLACEMENT) and held < self.max_hold:
            return ""
        new = text[len(self.prefix_text) :]
        self.prefix, self.read = self.read, len(self.ids)
        self.prefix_text = self.tokenizer.decode(self.ids[self.prefix : self.read])
        return new

    def flush(self) -> str:
        """Whatever is still held (an incomplete sequence at the very end)."""
        if self.read == len(self.ids):
            return ""
        text = self.tokenizer.decode(self.ids[self.prefix :])
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(self.prefix_text) :]


@dataclass
class GenerationResult:
    prompt_ids: list[int]  # every token before the generated ones (a resumed state's tokens first)
    new_ids: list[int] = field(default_factory=list)
    text: str = ""  # the generated text as it reads after the prompt (what was streamed)
    stopped_on_eos: bool = False
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    resumed_tokens: int = 0  # tokens that came from the resumed state file
    state_bytes: int = 0  # size of the saved state file (0 when none was saved)

    @property
    def decode_tokens_per_second(self) -> float:
        steps = max(len(self.new_ids) - 1, 0)
        return steps / self.decode_seconds if self.decode_seconds > 0 else 0.0


def _io(backend: Backend) -> Any:
    io = getattr(backend, "io", None)
    if io is None:
        from exporter.step.iospec import build_iospec

        io = build_iospec(backend.config)
    return io


def generate(
    backend: Backend,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int,
    sampling: SamplingConfig | None = None,
    on_text: Callable[[str], None] | None = None,
    max_chunk: int | None = None,
    save_state: Path | None = None,
    resume: Path | None = None,
) -> GenerationResult:
    """Generate up to ``max_new_tokens`` after ``prompt``; stops on EOS.

    ``on_text`` receives the new text as it is decoded (streaming).
    ``resume``: continue from a saved state (runs its last token, then ``prompt``
    encoded without BOS, which may be empty). ``save_state``: write the state
    after the run; its tokens are the prompt's and the generated ones (and the
    EOS that stopped the run, if one did), the state covers all but the last.
    """
    from runtime_py.identity import backend_identity
    from runtime_py.state_file import SavedState, load_state
    from runtime_py.state_file import save_state as write_state

    if max_new_tokens < 0:
        raise RgMobileError(f"max-new-tokens must be >= 0, got {max_new_tokens}")
    identity = backend_identity(backend) if save_state is not None or resume is not None else None
    t0 = time.perf_counter()
    if resume is not None:
        assert identity is not None
        saved = load_state(Path(resume), identity, _io(backend))
        state = backend.state_from_arrays(saved.arrays)
        added = tokenizer.encode(prompt, add_bos=False) if prompt else []
        history = [*saved.token_ids, *added]
        pending, start = [saved.token_ids[-1], *added], saved.position  # not run yet, from this position
        result = GenerationResult(prompt_ids=history, resumed_tokens=len(saved.token_ids))
    else:
        history = tokenizer.encode(prompt, add_bos=True)
        if not history:
            raise RgMobileError("nothing to run: the prompt is empty and the tokenizer has no BOS")
        pending, start = history, 0
        state = backend.init_state(1)
        result = GenerationResult(prompt_ids=history)
    sampler = Sampler(sampling or SamplingConfig())
    stream = TextStream(tokenizer, context=history[-1:])
    pieces: list[str] = []
    tail: list[int] = []  # sampled but not run (the EOS that stopped the run)
    if max_new_tokens == 0:
        if len(pending) > 1:  # the last token stays unrun: that is what a state file holds
            _, state = run_tokens(backend, pending[:-1], state, start, max_chunk, all_logits=False)
        result.prefill_seconds = time.perf_counter() - t0
    else:
        logits, state = run_tokens(backend, pending, state, start, max_chunk, all_logits=False)
        result.prefill_seconds = time.perf_counter() - t0
        pos = start + len(pending)  # position of the next token to run
        last = logits[-1]
        t0 = time.perf_counter()
        while True:
            check_finite(last, pos - 1)
            token = sampler(last)
            if token == tokenizer.eos_id:
                result.stopped_on_eos = True
                tail = [token]
                break
            result.new_ids.append(token)
            piece = stream.push(token)
            if piece:
                pieces.append(piece)
                if on_text is not None:
                    on_text(piece)
            if len(result.new_ids) == max_new_tokens:
                break  # no need to run the step for a token nobody reads (a saved state keeps it unrun)
            step_logits, state = backend.step(
                np.array([[token]], dtype=np.int64), np.array([[pos]], dtype=np.int64), state
            )
            last = step_logits[0, -1]
            pos += 1
        result.decode_seconds = time.perf_counter() - t0
    rest = stream.flush()
    if rest:
        pieces.append(rest)
        if on_text is not None:
            on_text(rest)
    result.text = "".join(pieces)
    if save_state is not None:
        assert identity is not None
        tokens = tuple(int(t) for t in [*history, *result.new_ids, *tail])
        saved_state = SavedState(tokens, backend.state_arrays(state), identity)
        result.state_bytes = write_state(Path(save_state), saved_state, _io(backend))
    log.info("generated %d tokens (%.1f tok/s decode)", len(result.new_ids), result.decode_tokens_per_second)
    return result
