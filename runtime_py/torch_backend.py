"""The PyTorch reference backend: our eager explicit-state Griffin."""

from __future__ import annotations

import numpy as np
import torch

from exporter.config import GriffinConfig
from exporter.model.griffin import Griffin
from exporter.model.state import GriffinState, flatten_state, unflatten_state
from exporter.step.iospec import IOSpec, build_iospec
from runtime_py.backend import DEFAULT_MAX_CHUNK


class TorchBackend:
    """Runs :class:`Griffin` eagerly; any step length t (prompts in chunks of at most ``max_chunk``)."""

    name = "torch"

    def __init__(self, model: Griffin, threads: int | None = None, max_chunk: int = DEFAULT_MAX_CHUNK) -> None:
        self.model = model.eval()
        self.config: GriffinConfig = model.config
        self.max_chunk = max_chunk  # longest step the generation loop runs (prompts are prefilled in chunks)
        dtype = model.embed_tokens.weight.dtype
        # The IOSpec of this model's state: names and dtypes of states in files and parity checks.
        self.io: IOSpec = build_iospec(self.config, "float16" if dtype == torch.float16 else "float32")
        if threads:
            torch.set_num_threads(threads)

    def seq_lens(self) -> tuple[int, ...] | None:
        return None

    def init_state(self, batch: int = 1) -> GriffinState:
        return self.model.init_state(batch)

    @torch.inference_mode()
    def step(
        self, input_ids: np.ndarray, position_ids: np.ndarray, state: GriffinState
    ) -> tuple[np.ndarray, GriffinState]:
        logits, new_state = self.model(
            torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)),
            torch.from_numpy(np.ascontiguousarray(position_ids, dtype=np.int64)),
            state,
        )
        return logits.float().numpy(), new_state

    @torch.inference_mode()
    def step_last(
        self, input_ids: np.ndarray, position_ids: np.ndarray, state: GriffinState
    ) -> tuple[np.ndarray, GriffinState]:
        """Like :meth:`step`, but computes the logits of the last position only: [b, 1, v]."""
        hidden, new_state = self.model.hidden(
            torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)),
            torch.from_numpy(np.ascontiguousarray(position_ids, dtype=np.int64)),
            state,
        )  # [b, t, d]
        return self.model.logits(hidden[:, -1:]).float().numpy(), new_state

    def state_arrays(self, state: GriffinState) -> dict[str, np.ndarray]:
        return {
            s.name: t.detach().to(torch.float32).numpy().astype(np.dtype(s.dtype), copy=False)
            for s, t in zip(self.io.state_inputs, flatten_state(state), strict=True)
        }

    def state_from_arrays(self, arrays: dict[str, np.ndarray]) -> GriffinState:
        """Inverse of :meth:`state_arrays` (IOSpec names; recurrent state fp32, the rest the model's dtype)."""
        dtype = self.model.embed_tokens.weight.dtype
        tensors = [
            torch.from_numpy(np.array(arrays[s.name], dtype=np.float32)).to(
                torch.float32 if s.field == "recurrent_state" else dtype
            )
            for s in self.io.state_inputs
        ]
        return unflatten_state(self.config, tensors)
