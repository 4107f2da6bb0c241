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

from exporter.artifact.manifest import Manifest
from exporter.errors import RgMobileError
from runtime_py.coreml_io import CoreMLIO, NumpyState

log = logging.getLogger(__name__)


def linux_message(artifact_dir: Path) -> str:
    return (
        f"{artifact_dir}: Core ML predictions need macOS (this is {sys.platform}); running the saved "
        "programs in the Core ML emulator (coremltools' op definitions, not the device's arithmetic): "
        "run `rgmobile validate` / `generate` on a Mac for Core ML itself"
    )


class CoreMLBackend(CoreMLIO):
    """A :class:`runtime_py.backend.Backend` over Core ML models (batch 1)."""

    name = "coreml"

    def __init__(self, artifact_dir: Path, manifest: Manifest, compute_units: str = "ALL") -> None:
        import coremltools as ct

        self._init_io(artifact_dir, manifest)
        units = getattr(ct.ComputeUnit, compute_units)
        for name, prog in manifest.programs.items():
            path = Path(artifact_dir) / prog.file
            try:
                self.programs[prog.seq_len] = ct.models.MLModel(
                    str(path), compute_units=units, function_name=prog.entry
                )
            except Exception as exc:  # Core ML raises plain Exception/RuntimeError on load
                raise RgMobileError(f"{path}: Core ML cannot load program {name!r}: {exc}") from None
        log.info("coreml: programs %s", {n: p.seq_len for n, p in manifest.programs.items()})

    def step(self, input_ids: np.ndarray, position_ids: np.ndarray, state: NumpyState) -> tuple[np.ndarray, NumpyState]:
        model = self._program(input_ids)
        feed = self._feed(input_ids, position_ids, state)
        if not self.internal:
            return self._result(model.predict(feed), {})
        ml_state = model.make_state()
        for s in self.internal:
            name = self.features[s.name]["name"]
            ml_state.write_state(name, np.ascontiguousarray(state[s.name], dtype=np.float16))
        out = model.predict(feed, state=ml_state)
        return self._result(out, {self.features[s.name]["name"]: ml_state.read_state(self.features[s.name]["name"])
                                  for s in self.internal})  # fmt: skip


def open_artifact(artifact_dir: Path, manifest: Manifest, threads: int | None = None) -> Any:
    """Factory named in exporter/targets/coreml_entry.py: Core ML on macOS, the emulator elsewhere.

    ``threads`` is ignored: Core ML schedules its own CPU/GPU/Neural Engine work.
    """
    if sys.platform != "darwin":
        from runtime_py.coreml_emulator import open_artifact as open_emulated

        log.warning("%s", linux_message(Path(artifact_dir)))
        return open_emulated(Path(artifact_dir), manifest, threads)
    return CoreMLBackend(Path(artifact_dir), manifest)
