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

from exporter.artifact.manifest import Manifest
from exporter.errors import RgMobileError
from runtime_py.coreml_emulator_program import EmulatedFunction, load_program
from runtime_py.coreml_io import CoreMLIO, NumpyState

log = logging.getLogger(__name__)

NAME = "coreml-emulated"
DESCRIPTION = "Core ML program: emulated (coremltools op definitions)"


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


class CoreMLEmulatedBackend(CoreMLIO):
    """A :class:`runtime_py.backend.Backend` over the emulated Core ML programs (batch 1)."""

    name = NAME

    def __init__(self, artifact_dir: Path, manifest: Manifest) -> None:
        t0 = time.perf_counter()
        self._init_io(artifact_dir, manifest)
        functions = load_functions(Path(artifact_dir), manifest)
        self.programs = {manifest.programs[n].seq_len: f for n, f in functions.items()}
        self.load_seconds = time.perf_counter() - t0
        log.info("coreml emulator: programs %s loaded in %.1fs",
                 {n: p.seq_len for n, p in manifest.programs.items()}, self.load_seconds)  # fmt: skip

    def step(self, input_ids: np.ndarray, position_ids: np.ndarray, state: NumpyState) -> tuple[np.ndarray, NumpyState]:
        function = self._program(input_ids)
        states = {self.features[s.name]["name"]: state[s.name] for s in self.internal}
        out, new_states = function.run(self._feed(input_ids, position_ids, state), states)
        return self._result(out, new_states)


def open_artifact(artifact_dir: Path, manifest: Manifest, threads: int | None = None) -> CoreMLEmulatedBackend:
    """The emulator for ``artifact_dir``; ``threads`` is left to numpy's BLAS."""
    return CoreMLEmulatedBackend(Path(artifact_dir), manifest)
