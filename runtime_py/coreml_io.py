"""What the Core ML backend and its emulator share: feature names, the state split and the feeds.

A coreml artifact's manifest maps every IOSpec name to a Core ML feature
(``format_details.features``: name without dots, dtype, and kind "input" for explicit state or
"state" for a Core ML state). Both backends keep the state as a dict of numpy arrays keyed by
IOSpec input name (states are values), feed int32 tokens and positions, and read the logits
and the paired state outputs back the same way; only how a program runs differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from exporter.artifact.manifest import Manifest
from exporter.config import GriffinConfig
from exporter.errors import RgMobileError
from exporter.step.dtypes import COREML_NUMPY
from exporter.step.iospec import IOSpec, TensorSpec

NumpyState = dict[str, np.ndarray]


class CoreMLIO:
    """Base of the Core ML backends; a subclass fills ``self.programs`` (seq_len -> runnable)."""

    manifest: Manifest
    config: GriffinConfig
    io: IOSpec
    features: dict[str, dict[str, str]]
    explicit: list[TensorSpec]  # state carried as plain inputs/outputs
    internal: list[TensorSpec]  # state kept in Core ML states (fp16 KV)
    programs: dict[int, Any]

    def _init_io(self, artifact_dir: Path, manifest: Manifest) -> None:
        if manifest.format != "coreml":
            raise RgMobileError(f"{artifact_dir}: manifest format is {manifest.format!r}, not 'coreml'")
        self.manifest = manifest
        self.config = manifest.config
        self.io = manifest.io
        self.features = manifest.format_details["features"]
        self.explicit = [s for s in self.io.state_inputs if self.features[s.name]["kind"] == "input"]
        self.internal = [s for s in self.io.state_inputs if self.features[s.name]["kind"] == "state"]
        self.programs = {}

    def seq_lens(self) -> tuple[int, ...]:
        return tuple(sorted(self.programs, reverse=True))

    def init_state(self, batch: int = 1) -> NumpyState:
        if batch != 1:
            raise RgMobileError(f"coreml artifacts run batch 1, not {batch}")
        return {
            s.name: np.zeros(s.concrete_shape(batch=1), dtype=COREML_NUMPY[self.features[s.name]["dtype"]])
            for s in self.io.state_inputs
        }

    def _program(self, input_ids: np.ndarray) -> Any:
        """The program that runs this step's t tokens (batch 1)."""
        t = int(input_ids.shape[1])
        program = self.programs.get(t)
        if program is None:
            raise RgMobileError(f"coreml artifact runs {self.seq_lens()} tokens per step, not {t}")
        if input_ids.shape[0] != 1:
            raise RgMobileError("coreml artifacts run batch 1")
        return program

    def _feed(self, input_ids: np.ndarray, position_ids: np.ndarray, state: NumpyState) -> dict[str, np.ndarray]:
        """Core ML feature name -> array: tokens and positions as int32, explicit state in its dtype."""
        f = self.features
        feed = {
            f["input_ids"]["name"]: np.ascontiguousarray(input_ids, dtype=np.int32),
            f["position_ids"]["name"]: np.ascontiguousarray(position_ids, dtype=np.int32),
        }
        for s in self.explicit:
            feed[f[s.name]["name"]] = np.ascontiguousarray(state[s.name], dtype=COREML_NUMPY[f[s.name]["dtype"]])
        return feed

    def _result(self, out: dict[str, Any], internal: dict[str, Any]) -> tuple[np.ndarray, NumpyState]:
        """(logits [1, t, v] fp32, new state) from a program's outputs and its Core ML states by feature name."""
        f = self.features
        new: NumpyState = {s.name: np.asarray(out[f[s.pair or ""]["name"]], dtype=np.float32) for s in self.explicit}
        for s in self.internal:
            new[s.name] = np.array(internal[f[s.name]["name"]], dtype=np.float16)
        return np.asarray(out[f["logits"]["name"]], dtype=np.float32), new

    def state_arrays(self, state: NumpyState) -> dict[str, np.ndarray]:
        return {s.name: state[s.name].astype(np.float32) for s in self.io.state_inputs}

    def state_from_arrays(self, arrays: dict[str, np.ndarray]) -> NumpyState:
        """Inverse of :meth:`state_arrays`: own copies in the features' dtypes (fp16 for Core ML states)."""
        return {
            s.name: np.array(arrays[s.name], dtype=COREML_NUMPY[self.features[s.name]["dtype"]])
            for s in self.io.state_inputs
        }
