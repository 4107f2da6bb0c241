"""Core ML emulator backend: runs the saved .mlpackage programs of a coreml artifact on any OS.

``rgmobile validate`` / ``generate`` / ``bench`` use it where Core ML itself cannot run (Linux):
each program of the manifest (``decode``, ``prefill``; one multifunction package on iOS 18 or
one package per program on iOS 17) is read back from the saved package and executed op by op
with coremltools' numpy definitions (runtime_py/coreml_emulator_program.py): the weights as
shipped (fp16, or int8/int4 dequantized by the package's own ``constexpr_*`` ops), the op
modes, attributes and fp16 casts exactly as saved. It is not the device: Core ML on the CPU,
GPU or Neural Engine accumulates in its own order and precision and may fuse ops (docs/coreml.md).

The state is a dict of numpy arrays keyed by IOSpec input name, as in
runtime_py/coreml_backend.py; with ``--coreml-state internal`` the KV ring buffers are the
programs' Core ML states (fp16), passed in and returned by value. Feature names come from
the manifest's ``format_details.features``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from exporter.config import GriffinConfig
from exporter.errors import RgMobileError
from exporter.package.manifest import Manifest
from runtime_py.coreml_emulator_program import EmulatedFunction, load_program

log = logging.getLogger(__name__)

NAME = "coreml-emulated"
DESCRIPTION = "Core ML program: emulated (coremltools op definitions)"
NumpyState = dict[str, np.ndarray]
_NP = {"int32": np.int32, "float32": np.float32, "float16": np.float16}


def load_functions(artifact_dir: Path, manifest: Manifest) -> dict[str, EmulatedFunction]:
    """program name -> its emulated function, each package read once (iOS 18 shares one)."""
    entries: dict[str, set[str]] = {}
    for prog in manifest.programs.values():
        entries.setdefault(prog.file, set()).add(prog.entry or "main")
    programs: dict[str, Any] = {}
    for file, wanted in entries.items():
        path = Path(artifact_dir) / file
        if not path.is_dir():
            raise RgMobileError(f"{path}: a package the manifest lists is missing")
        programs[file] = load_program(path, wanted)  # only the functions the manifest runs
    out = {}
    for name, prog in manifest.programs.items():
        entry = prog.entry or "main"
        out[name] = EmulatedFunction(programs[prog.file].functions[entry], f"{prog.file}:{entry}")
    return out


class CoreMLEmulatedBackend:
    """A :class:`runtime_py.backend.Backend` over the emulated Core ML programs (batch 1)."""

    name = NAME

    def __init__(self, artifact_dir: Path, manifest: Manifest) -> None:
        if manifest.format != "coreml":
            raise RgMobileError(f"{artifact_dir}: manifest format is {manifest.format!r}, not 'coreml'")
        t0 = time.perf_counter()
        self.manifest = manifest
        self.config: GriffinConfig = manifest.config
        self.io = manifest.io
        self.features: dict[str, dict[str, str]] = manifest.format_details["features"]
        self.explicit = [s for s in self.io.state_inputs if self.features[s.name]["kind"] == "input"]
        self.internal = [s for s in self.io.state_inputs if self.features[s.name]["kind"] == "state"]
        functions = load_functions(Path(artifact_dir), manifest)
        self.functions = {manifest.programs[n].seq_len: f for n, f in functions.items()}
        self.load_seconds = time.perf_counter() - t0
        log.info("coreml emulator: programs %s loaded in %.1fs",
                 {n: p.seq_len for n, p in manifest.programs.items()}, self.load_seconds)  # fmt: skip

    def seq_lens(self) -> tuple[int, ...]:
        return tuple(sorted(self.functions, reverse=True))

    def init_state(self, batch: int = 1) -> NumpyState:
        if batch != 1:
            raise RgMobileError(f"coreml artifacts run batch 1, not {batch}")
        return {
            s.name: np.zeros(s.concrete_shape(batch=1), dtype=_NP[self.features[s.name]["dtype"]])
            for s in self.io.state_inputs
        }

    def step(self, input_ids: np.ndarray, position_ids: np.ndarray, state: NumpyState) -> tuple[np.ndarray, NumpyState]:
        t = int(input_ids.shape[1])
        function = self.functions.get(t)
        if function is None:
            raise RgMobileError(f"coreml artifact runs {self.seq_lens()} tokens per step, not {t}")
        if input_ids.shape[0] != 1:
            raise RgMobileError("coreml artifacts run batch 1")
        f = self.features
        feed = {
            f["input_ids"]["name"]: np.asarray(input_ids, dtype=np.int32),
            f["position_ids"]["name"]: np.asarray(position_ids, dtype=np.int32),
        }
        for s in self.explicit:
            feed[f[s.name]["name"]] = np.asarray(state[s.name], dtype=_NP[f[s.name]["dtype"]])
        states = {f[s.name]["name"]: state[s.name] for s in self.internal}
        out, new_states = function.run(feed, states)
        new: NumpyState = {}
        for s in self.explicit:
            new[s.name] = np.asarray(out[f[s.pair or ""]["name"]], dtype=np.float32)
        for s in self.internal:
            new[s.name] = new_states[f[s.name]["name"]].astype(np.float16)
        return np.asarray(out[f["logits"]["name"]], dtype=np.float32), new

    def state_arrays(self, state: NumpyState) -> dict[str, np.ndarray]:
        return {s.name: state[s.name].astype(np.float32) for s in self.io.state_inputs}

    def state_from_arrays(self, arrays: dict[str, np.ndarray]) -> NumpyState:
        """Inverse of :meth:`state_arrays`: own copies in the features' dtypes (fp16 for Core ML states)."""
        return {
            s.name: np.array(arrays[s.name], dtype=_NP[self.features[s.name]["dtype"]]) for s in self.io.state_inputs
        }


def open_artifact(artifact_dir: Path, manifest: Manifest, threads: int | None = None) -> CoreMLEmulatedBackend:
    """The emulator for ``artifact_dir``; ``threads`` is left to numpy's BLAS."""
    return CoreMLEmulatedBackend(Path(artifact_dir), manifest)
