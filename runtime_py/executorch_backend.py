"""ExecuTorch backend: runs a ``.pte`` artifact from its manifest alone (``executorch.runtime``).

The manifest's programs name a method inside the .pte (``entry``: "prefill",
t = chunk; "decode", t = 1); an fp32 program reads its weights from the data
file ``format_details.data_file`` beside it (``model.ptd``). The manifest's
``io`` maps the methods' positional inputs/outputs to IOSpec names. The state
is a tuple of torch tensors in the IOSpec's state-input order; each
``present.*`` output is routed to the input it feeds (``pair``). The runtime
copies outputs out on every call, so a state stays valid after later steps
(states are values).

Memory: the methods share one packed copy of the weights (XNNPACK's weight
cache), and the mapped files are not locked in memory
(:mod:`exporter.upstream.executorch_runtime_1_5_1`).

Shapes are static (batch 1, t per method): a prompt is split by
:func:`runtime_py.backend.plan_chunks` into full prefill chunks and t = 1
steps, never padded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exporter.artifact.manifest import Manifest
from exporter.config import GriffinConfig
from exporter.errors import RgMobileError
from exporter.mapped_pages import release_pages
from exporter.step.dtypes import dtype
from exporter.step.iospec import IOSpec
from exporter.upstream.executorch_runtime_1_5_1 import enable_weight_cache

log = logging.getLogger(__name__)

EtState = tuple[torch.Tensor, ...]


def _data_file(artifact_dir: Path, manifest: Manifest) -> str | None:
    """The program's ``.ptd`` data file (``Manifest.data_file``; fp32 exports), or None."""
    if manifest.data_file is None:
        return None
    path = artifact_dir / manifest.data_file
    if not path.is_file():
        raise RgMobileError(f"{path}: the program's data file is missing; copy the whole artifact folder")
    return str(path)


class ExecuTorchBackend:
    """A :class:`runtime_py.backend.Backend` over the methods of one ExecuTorch program."""

    name = "executorch"

    def __init__(self, artifact_dir: Path, manifest: Manifest, threads: int | None = None) -> None:
        if manifest.format != "executorch":
            raise RgMobileError(f"{artifact_dir}: manifest format is {manifest.format!r}, not 'executorch'")
        from executorch.runtime import Runtime

        self.manifest = manifest
        self.config: GriffinConfig = manifest.config
        self.io: IOSpec = manifest.io
        state_names = [s.name for s in self.io.state_inputs]
        # position of each present.* output (after logits) in the state tuple it produces
        self._route = [state_names.index(s.pair or "") for s in self.io.state_outputs]
        if threads:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(threads)
        runtime = Runtime.get()
        enable_weight_cache()  # prefill and decode share one packed copy of the weights
        self.methods: dict[int, Any] = {}  # seq_len -> executorch.runtime.Method
        programs: dict[Path, Any] = {}
        data = _data_file(Path(artifact_dir), manifest)
        for name, prog in manifest.programs.items():
            path = Path(artifact_dir) / prog.file
            if path not in programs:
                try:
                    programs[path] = runtime.load_program(str(path), data_path=data)
                except RuntimeError as exc:
                    raise RgMobileError(f"{path}: ExecuTorch cannot load the program: {exc}") from None
            program = programs[path]
            entry = prog.entry or name
            if entry not in program.method_names:
                raise RgMobileError(
                    f"{path}: no method {entry!r} (program {name!r}); has {sorted(program.method_names)}; "
                    "re-export the artifact"
                )
            self._check_method(path, entry, program.metadata(entry), prog.seq_len)
            self.methods[prog.seq_len] = program.load_method(entry)
        self._programs = programs  # keep the loaded programs alive as long as their methods
        # pages of the files stay resident only while steps read them, as in an app (no mlock)
        release_pages([*programs, *([Path(data)] if data else [])], unlock=True)
        log.info("executorch: methods %s", {n: p.seq_len for n, p in manifest.programs.items()})

    def _check_method(self, path: Path, entry: str, meta: Any, seq: int) -> None:
        """The method's positional I/O must be the IOSpec's, at batch 1 and t = ``seq``."""
        ins, outs = self.io.inputs, self.io.outputs
        if meta.num_inputs() != len(ins) or meta.num_outputs() != len(outs):
            raise RgMobileError(
                f"{path}: method {entry!r} has {meta.num_inputs()} inputs / {meta.num_outputs()} outputs, "
                f"the manifest's io spec {len(ins)} / {len(outs)}; re-export the artifact"
            )
        specs = [(s, meta.input_tensor_meta(i)) for i, s in enumerate(ins)]
        specs += [(s, meta.output_tensor_meta(i)) for i, s in enumerate(outs)]
        for s, info in specs:
            shape = tuple(info.sizes())
            if shape != s.concrete_shape(1, seq) or info.dtype() != dtype(s.dtype).executorch:
                raise RgMobileError(
                    f"{path}: method {entry!r} tensor {s.name} is {shape}, the io spec says "
                    f"{s.concrete_shape(1, seq)} {s.dtype}; re-export the artifact"
                )

    def seq_lens(self) -> tuple[int, ...]:
        return tuple(sorted(self.methods, reverse=True))

    def init_state(self, batch: int = 1) -> EtState:
        if batch != 1:
            raise RgMobileError(f"the executorch artifact is exported for batch 1, not {batch}")
        state = []
        for s in self.io.state_inputs:
            if s.init != "zeros":
                raise RgMobileError(f"io spec: unsupported init {s.init!r} for {s.name}")
            state.append(torch.zeros(s.concrete_shape(batch=1), dtype=dtype(s.dtype).torch))
        return tuple(state)

    def step(self, input_ids: np.ndarray, position_ids: np.ndarray, state: EtState) -> tuple[np.ndarray, EtState]:
        b, t = input_ids.shape
        method = self.methods.get(t)
        if method is None or b != 1:
            raise RgMobileError(f"executorch artifact runs batch 1 and {self.seq_lens()} tokens per step, not {b}x{t}")
        ids = torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64))
        pos = torch.from_numpy(np.ascontiguousarray(position_ids, dtype=np.int64))
        try:
            outputs = method.execute([ids, pos, *state])
        except RuntimeError as exc:  # the runtime's error codes (a program that loads but cannot run)
            gist = " ".join(str(exc).split())[:300]
            raise RgMobileError(
                f"executorch failed running the t={t} method ({gist}); re-export the artifact"
            ) from None
        new_state = list(state)
        for slot, tensor in zip(self._route, outputs[1:], strict=True):
            new_state[slot] = tensor
        return outputs[0].numpy(), tuple(new_state)

    def state_arrays(self, state: EtState) -> dict[str, np.ndarray]:
        return {s.name: t.numpy() for s, t in zip(self.io.state_inputs, state, strict=True)}

    def state_from_arrays(self, arrays: dict[str, np.ndarray]) -> EtState:
        """Inverse of :meth:`state_arrays`: tensors (own copies) in the IOSpec's order and dtypes."""
        return tuple(
            torch.from_numpy(np.array(arrays[s.name], dtype=np.dtype(s.dtype), order="C")) for s in self.io.state_inputs
        )


def open_artifact(artifact_dir: Path, manifest: Manifest, threads: int | None = None) -> ExecuTorchBackend:
    """Factory named by this format's entry (exporter/targets/executorch_entry.py)."""
    return ExecuTorchBackend(Path(artifact_dir), manifest, threads=threads)
