"""The exact programs handed to coremltools, run in PyTorch as a :class:`runtime_py.backend.Backend`.

``rgmobile validate`` (and the tests) compare :class:`ProgramBackend` with the
eager reference step by step (runtime_py/validate.py ``compare``). This proves
our side of the Core ML export on any machine: the torch.export step, every
Core ML-specific rewrite (exporter/targets/coreml_rewrites.py) and, with
internal state, the fp16 KV buffers and their in-place updates. What it cannot
prove is coremltools' conversion and Core ML's arithmetic: that needs macOS
(runtime_py/coreml_backend.py).

The state is a dict keyed by IOSpec input name (values, as the Backend protocol
wants): with internal state, the KV tensors are copied into the program's
buffers before a step and read back after it.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from exporter.config import GriffinConfig
from exporter.errors import RgMobileError
from exporter.model.griffin import Griffin
from exporter.step.iospec import build_iospec
from exporter.targets import coreml_stateful
from exporter.targets.coreml_convert import StateMode, build_program
from exporter.targets.coreml_rewrites import feature_name

log = logging.getLogger(__name__)

TorchState = dict[str, torch.Tensor]


def build_programs(model: Griffin, lens: dict[str, int], state: StateMode) -> dict[int, torch.export.ExportedProgram]:
    """seq_len -> the program :func:`exporter.targets.coreml.export` converts for it."""
    return {seq: build_program(model, seq, state) for seq in lens.values()}


class ProgramBackend:
    """Runs the pre-conversion programs (torch.export + Core ML rewrites) with torch."""

    name = "coreml program (PyTorch, before conversion)"

    def __init__(self, programs: dict[int, torch.export.ExportedProgram], config: GriffinConfig, state: StateMode):
        if 1 not in programs:
            raise RgMobileError("coreml parity: a decode program (t = 1) is required")
        self.config = config
        self.state_mode = state
        self.io = build_iospec(config)
        self.modules = {seq: p.module() for seq, p in programs.items()}
        internal = state == "internal"
        self.explicit = [s for s in self.io.state_inputs if not (internal and coreml_stateful.is_internal(s))]
        self.internal = [s for s in self.io.state_inputs if internal and coreml_stateful.is_internal(s)]

    def seq_lens(self) -> tuple[int, ...]:
        return tuple(sorted(self.modules, reverse=True))

    def init_state(self, batch: int = 1) -> TorchState:
        if batch != 1:
            raise RgMobileError(f"coreml programs are batch 1, not {batch}")
        state = {s.name: torch.zeros(s.concrete_shape(batch=1)) for s in self.explicit}
        for s in self.internal:
            state[s.name] = torch.zeros(s.concrete_shape(batch=1), dtype=coreml_stateful.STATE_DTYPE)
        return state

    @torch.no_grad()
    def step(self, input_ids: np.ndarray, position_ids: np.ndarray, state: TorchState) -> tuple[np.ndarray, TorchState]:
        t = int(input_ids.shape[1])
        module = self.modules.get(t)
        if module is None:
            raise RgMobileError(f"coreml programs run {self.seq_lens()} tokens per step, not {t}")
        for s in self.internal:
            module.get_buffer(feature_name(s.name)).copy_(state[s.name])
        ids = torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64))
        pos = torch.from_numpy(np.ascontiguousarray(position_ids, dtype=np.int64))
        out = module(ids, pos, *[state[s.name] for s in self.explicit])
        new = {s.name: v for s, v in zip(self.explicit, out[1:], strict=True)}
        for s in self.internal:
            new[s.name] = module.get_buffer(feature_name(s.name)).clone()
        return out[0].float().numpy(), new

    def state_arrays(self, state: TorchState) -> dict[str, np.ndarray]:
        return {s.name: state[s.name].float().numpy() for s in self.io.state_inputs}


def program_precision(state: StateMode) -> str:
    """Thresholds row for the pre-conversion program: fp32, except fp16 KV buffers with internal state."""
    return "fp16" if state == "internal" else "fp32"
