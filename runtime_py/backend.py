"""What the generation loop, ``validate`` and ``bench`` need from a runtime.

A backend runs one step of the model: tokens and absolute positions in,
logits and the next state out. The state is opaque to the caller (torch
tensors, OrtValues, ExecuTorch tensors...); only the backend looks inside.

Shapes: input_ids / position_ids [b, t] int64 numpy; logits [b, t, v] float32 numpy, or
[b, 1, v] (the last position's) from an artifact exported with last-position logits.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from exporter.config import GriffinConfig

State = Any


class Backend(Protocol):
    name: str  # "torch", "onnxruntime", "executorch", "coreml"
    config: GriffinConfig

    def seq_lens(self) -> tuple[int, ...] | None:
        """Step lengths t this backend runs; None means any t. Always includes 1."""
        ...

    def init_state(self, batch: int = 1) -> State:
        """The state of a fresh sequence (all zeros)."""
        ...

    def step(self, input_ids: np.ndarray, position_ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """Run t tokens (t in seq_lens()) and return (logits [b, t, v] or [b, 1, v], new state)."""
        ...

    def state_arrays(self, state: State) -> dict[str, np.ndarray]:
        """The state as numpy arrays keyed by IOSpec input name, in the IOSpec's dtypes."""
        ...

    def state_from_arrays(self, arrays: dict[str, np.ndarray]) -> State:
        """Inverse of :meth:`state_arrays`: a state of this backend from arrays keyed by IOSpec input name."""
        ...


# Longest step for a backend that runs any t (seq_lens() None): a prompt is prefilled in
# chunks of at most this many tokens, so per-step memory (attention scores [t, t], logits
# [t, v]) does not grow with the prompt.
DEFAULT_MAX_CHUNK = 128


def last_logits_only(backend: object) -> bool:
    """Whether ``backend``'s steps return the last position's logits only ([b, 1, v]) whatever t
    is: an artifact exported with ``--prefill-logits last``."""
    io = getattr(backend, "io", None)
    return bool(getattr(io, "last_logits_only", False))


def every_position_seq_lens(backend: Backend) -> tuple[int, ...] | None:
    """Step lengths whose logits cover every position: the backend's own, or 1 alone (the decode
    program) when its steps return the last position's logits only."""
    return (1,) if last_logits_only(backend) else backend.seq_lens()


def plan_chunks(length: int, seq_lens: tuple[int, ...] | None, max_chunk: int | None = None) -> list[int]:
    """Split ``length`` prompt tokens into step lengths the backend supports.

    Greedy from the largest supported length down to 1, so a prompt is never
    padded (padding would advance the recurrent state on fake tokens). A
    backend that runs any t gets chunks of at most ``max_chunk`` (default
    :data:`DEFAULT_MAX_CHUNK`); one with fixed step lengths uses those up to
    ``max_chunk`` (1: every token its own decode step).
    """
    if length <= 0:
        return []
    if seq_lens is None:
        chunk = max_chunk or DEFAULT_MAX_CHUNK
        return [min(chunk, length - s) for s in range(0, length, chunk)]
    sizes = sorted({s for s in seq_lens if 1 <= s <= (max_chunk or s)} | {1}, reverse=True)
    out: list[int] = []
    left = length
    for s in sizes:
        while left >= s:
            out.append(s)
            left -= s
    return out
