"""A state "at position p" without decoding p tokens: what ``bench`` measures decode speed from.

Decoding 32,768 tokens at 2 tokens/s to reach position 32,768 would take hours;
and Griffin's step cost cannot depend on how the state was reached, only on
its shape (which is fixed) and the position (which picks the ring slot). So a
state at position p is synthesised: random Conv1D rows, RG-LRU state and KV
ring contents in the slots positions max(0, p - w) .. p - 1 would have
written (slot = position % w); slots no position has reached yet stay zero,
as do Conv1D rows for positions before 0. At p = 0 the state is all zeros
(the model ignores the incoming state at position 0 anyway).

The arrays are keyed by IOSpec state-input name (``past_key_values.{i}.<field>``)
and converted to each backend's own state type by :func:`backend_state`.
"""

from __future__ import annotations

import numpy as np

from exporter.config import GriffinConfig
from exporter.errors import RgMobileError
from exporter.model.state import state_shapes
from exporter.step.iospec import IOSpec
from runtime_py.backend import Backend, State


def synth_state_arrays(config: GriffinConfig, position: int, seed: int = 0, batch: int = 1) -> dict[str, np.ndarray]:
    """The state a sequence could have after ``position`` tokens, as float32 arrays (see module docstring)."""
    if position < 0:
        raise RgMobileError(f"position must be >= 0, got {position}")
    rng = np.random.default_rng([seed, position])
    w, c = config.window, config.conv_width - 1
    filled = [q % w for q in range(max(0, position - w), position)]  # ring slots holding a real token
    conv_rows = min(position, c)  # Conv1D rows (oldest first) that hold real inputs
    out: dict[str, np.ndarray] = {}
    for layer, field, shape in state_shapes(config, batch):
        arr = np.zeros(shape, dtype=np.float32)
        if position > 0:
            if field in ("key", "value"):  # [b, k, w, e]
                arr[:, :, filled, :] = rng.standard_normal((*shape[:2], len(filled), shape[3]), dtype=np.float32)
            elif field == "conv_state":  # [b, c, l]
                arr[:, c - conv_rows :, :] = rng.standard_normal((shape[0], conv_rows, shape[2]), dtype=np.float32)
            else:  # recurrent_state [b, l]
                arr[:] = rng.standard_normal(shape, dtype=np.float32)
        out[IOSpec.state_input_name(layer, field)] = arr
    return out


def backend_state(backend: Backend, arrays: dict[str, np.ndarray]) -> State:
    """``arrays`` (IOSpec names) as the state type of ``backend``: its ``state_from_arrays``
    (every backend of :mod:`runtime_py.backend` has one)."""
    custom = getattr(backend, "state_from_arrays", None)
    if custom is None:
        raise RgMobileError(f"bench cannot build a state for backend {backend.name!r} (no state_from_arrays)")
    return custom(arrays)
