"""Core ML backend: runs a coreml artifact through Apple's Core ML (macOS only).

coremltools can build and inspect models anywhere, but ``MLModel.predict``
calls the Core ML framework, which exists only on Apple platforms. On any
other OS :func:`open_artifact` opens the emulator instead
(runtime_py/coreml_emulator.py: the saved programs run with coremltools' numpy
op definitions; its backend name ``coreml-emulated`` says so wherever it is reported).

One ``MLModel`` per program (``function_name`` = the program's entry in a
multifunction package). The state is a dict of numpy arrays keyed by IOSpec
input name, so old states stay valid (states are values). With internal state
(KV ring buffers as Core ML states) each step writes the KV arrays into a fresh
``MLState`` and reads them back: that keeps value semantics for validation at
the cost of copying the KV per step (an app keeps one MLState instead).
Feature names come from the manifest's ``format_details.features``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from exporter.config import GriffinConfig
from exporter.errors import RgMobileError
from exporter.package.manifest import Manifest

log = logging.getLogger(__name__)

NumpyState = dict[str, np.ndarray]
_NP = {"int32": np.int32, "float32": np.float32, "float16": np.float16}


def linux_message(artifact_dir: Path) -> str:
    return (
        f"{artifact_dir}: Core ML predictions need macOS (this is {sys.platform}); running the saved "
        "programs in the Core ML emulator (coremltools' op definitions, not the device's arithmetic): "
        "run `rgmobile validate` / `generate` on a Mac for Core ML itself"
    )


class CoreMLBackend:
    """A :class:`runtime_py.backend.Backend` over Core ML models (batch 1)."""

    name = "coreml"

    def __init__(self, artifact_dir: Path, manifest: Manifest, compute_units: str = "ALL") -> None:
        import coremltools as ct

        if manifest.format != "coreml":
            raise RgMobileError(f"{artifact_dir}: manifest format is {manifest.format!r}, not 'coreml'")
        self.manifest = manifest
        self.config: GriffinConfig = manifest.config
        self.io = manifest.io
        self.features: dict[str, dict[str, str]] = manifest.format_details["features"]
        self.explicit = [s for s in self.io.state_inputs if self.features[s.name]["kind"] == "input"]
        self.internal = [s for s in self.io.state_inputs if self.features[s.name]["kind"] == "state"]
        units = getattr(ct.ComputeUnit, compute_units)
        self.models: dict[int, Any] = {}
        for name, prog in manifest.programs.items():
            path = Path(artifact_dir) / prog.file
            try:
                self.models[prog.seq_len] = ct.models.MLModel(str(path), compute_units=units, function_name=prog.entry)
            except Exception as exc:  # Core ML raises plain Exception/RuntimeError on load
                raise RgMobileError(f"{path}: Core ML cannot load program {name!r}: {exc}") from None
        log.info("coreml: programs %s", {n: p.seq_len for n, p in manifest.programs.items()})

    def seq_lens(self) -> tuple[int, ...]:
        return tuple(sorted(self.models, reverse=True))

    def init_state(self, batch: int = 1) -> NumpyState:
        if batch != 1:
            raise RgMobileError(f"coreml artifacts run batch 1, not {batch}")
        return {
            s.name: np.zeros(s.concrete_shape(batch=1), dtype=_NP[self.features[s.name]["dtype"]])
            for s in self.io.state_inputs
        }

    def step(self, input_ids: np.ndarray, position_ids: np.ndarray, state: NumpyState) -> tuple[np.ndarray, NumpyState]:
        t = int(input_ids.shape[1])
        model = self.models.get(t)
        if model is None:
            raise RgMobileError(f"coreml artifact runs {self.seq_lens()} tokens per step, not {t}")
        if input_ids.shape[0] != 1:
            raise RgMobileError("coreml artifacts run batch 1")
        f = self.features
        feed = {
            f["input_ids"]["name"]: np.ascontiguousarray(input_ids, dtype=np.int32),
            f["position_ids"]["name"]: np.ascontiguousarray(position_ids, dtype=np.int32),
        }
        for s in self.explicit:
            feed[f[s.name]["name"]] = np.ascontiguousarray(state[s.name], dtype=_NP[f[s.name]["dtype"]])
        ml_state = None
        if self.internal:
            ml_state = model.make_state()
            for s in self.internal:
                ml_state.write_state(f[s.name]["name"], np.ascontiguousarray(state[s.name], dtype=np.float16))
        out = model.predict(feed, state=ml_state) if ml_state is not None else model.predict(feed)
        new: NumpyState = {}
        for s in self.explicit:
            new[s.name] = np.asarray(out[f[s.pair or ""]["name"]], dtype=np.float32)
        for s in self.internal:
            new[s.name] = np.array(ml_state.read_state(f[s.name]["name"]), dtype=np.float16)  # type: ignore[union-attr]
        return np.asarray(out[f["logits"]["name"]], dtype=np.float32), new

    def state_arrays(self, state: NumpyState) -> dict[str, np.ndarray]:
        return {s.name: state[s.name].astype(np.float32) for s in self.io.state_inputs}

    def state_from_arrays(self, arrays: dict[str, np.ndarray]) -> NumpyState:
        """Inverse of :meth:`state_arrays`: own copies in the features' dtypes (fp16 for Core ML states)."""
        return {
            s.name: np.array(arrays[s.name], dtype=_NP[self.features[s.name]["dtype"]]) for s in self.io.state_inputs
        }


def open_artifact(artifact_dir: Path, manifest: Manifest, threads: int | None = None) -> Any:
    """Factory named in runtime_py.open.ARTIFACT_BACKENDS: Core ML on macOS, the emulator elsewhere.

    ``threads`` is ignored: Core ML schedules its own CPU/GPU/Neural Engine work.
    """
    if sys.platform != "darwin":
        from runtime_py.coreml_emulator import open_artifact as open_emulated

        log.warning("%s", linux_message(Path(artifact_dir)))
        return open_emulated(Path(artifact_dir), manifest, threads)
    return CoreMLBackend(Path(artifact_dir), manifest)
