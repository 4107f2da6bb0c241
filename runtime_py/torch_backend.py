"""The PyTorch reference backend: our eager explicit-state Griffin."""

from __future__ import annotations

import numpy as np
import torch

from exporter.config import GriffinConfig
from exporter.model.griffin import Griffin
from exporter.model.state import GriffinState, flatten_state, state_shapes


class TorchBackend:
    """Runs :class:`Griffin` eagerly; any step length t."""

    name = "torch"

    def __init__(self, model: Griffin, threads: int | None = None) -> None:
        self.model = model.eval()
        self.config: GriffinConfig = model.config
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

    def state_arrays(self, state: GriffinState) -> dict[str, np.ndarray]:
        names = [f"past_key_values.{layer}.{field}" for layer, field, _ in state_shapes(self.config)]
        return {n: t.float().numpy() for n, t in zip(names, flatten_state(state), strict=True)}
