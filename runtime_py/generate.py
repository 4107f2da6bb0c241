"""The generation loop over any backend: prefill in chunks, then decode one token at a time.

The loop owns the position counter and hands each step's state to the next
step; the backend never sees more than one step. The same loop runs the
PyTorch reference, onnxruntime, ExecuTorch and Core ML.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from exporter.errors import RgMobileError
from runtime_py.backend import Backend, State, plan_chunks
from runtime_py.sampling import Sampler, SamplingConfig
from runtime_py.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def run_tokens(
    backend: Backend, ids: list[int], state: State, start: int = 0, max_chunk: int | None = None
) -> tuple[np.ndarray, State]:
    """Feed ``ids`` from absolute position ``start`` in supported chunks.

    Returns (logits [len(ids), v], state after the last token).
    """
    outs = []
    pos = start
    for n in plan_chunks(len(ids), backend.seq_lens(), max_chunk):
        chunk = np.asarray(ids[pos - start : pos - start + n], dtype=np.int64)[None, :]
        position_ids = np.arange(pos, pos + n, dtype=np.int64)[None, :]
        logits, state = backend.step(chunk, position_ids, state)
        outs.append(logits[0])
        pos += n
    if not outs:
        raise RgMobileError("nothing to run: the prompt is empty")
    return np.concatenate(outs, axis=0), state


@dataclass
class GenerationResult:
    prompt_ids: list[int]
    new_ids: list[int] = field(default_factory=list)
    text: str = ""
    stopped_on_eos: bool = False
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        steps = max(len(self.new_ids) - 1, 0)
        return steps / self.decode_seconds if self.decode_seconds > 0 else 0.0


def generate(
    backend: Backend,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int,
    sampling: SamplingConfig | None = None,
    on_text: Callable[[str], None] | None = None,
    max_chunk: int | None = None,
) -> GenerationResult:
    """Generate up to ``max_new_tokens`` after ``prompt``; stops on EOS.

    ``on_text`` receives the new text as it is decoded (streaming).
    """
    if max_new_tokens < 0:
        raise RgMobileError(f"max-new-tokens must be >= 0, got {max_new_tokens}")
    prompt_ids = tokenizer.encode(prompt, add_bos=True)
    result = GenerationResult(prompt_ids=prompt_ids)
    sampler = Sampler(sampling or SamplingConfig())
    t0 = time.perf_counter()
    logits, state = run_tokens(backend, prompt_ids, backend.init_state(1), 0, max_chunk)
    result.prefill_seconds = time.perf_counter() - t0
    pos = len(prompt_ids)
    last = logits[-1]
    emitted = ""
    t0 = time.perf_counter()
    for _ in range(max_new_tokens):
        token = sampler(last)
        if token == tokenizer.eos_id:
            result.stopped_on_eos = True
            break
        result.new_ids.append(token)
        text = tokenizer.decode(result.new_ids)
        if on_text is not None and len(text) > len(emitted) and not text.endswith("\ufffd"):
            on_text(text[len(emitted) :])
            emitted = text
        if len(result.new_ids) == max_new_tokens:
            break  # no need to run the step for a token nobody reads
        step_logits, state = backend.step(np.array([[token]], dtype=np.int64), np.array([[pos]], dtype=np.int64), state)
        last = step_logits[0, -1]
        pos += 1
    result.decode_seconds = time.perf_counter() - t0
    result.text = tokenizer.decode(result.new_ids)
    if on_text is not None and len(result.text) > len(emitted):
        on_text(result.text[len(emitted) :])
    log.info("generated %d tokens (%.1f tok/s decode)", len(result.new_ids), result.decode_tokens_per_second)
    return result
