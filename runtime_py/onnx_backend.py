"""onnxruntime backend: runs an ONNX artifact from its manifest alone.

One InferenceSession per program file (decode t = 1, prefill t = chunk, or every t
from the program's ``min_seq_len`` up; one session for both when they name one file,
``export --one-program``); programs
share nothing but the state, which is a dict of OrtValues keyed by IOSpec
input name. With IO binding the ``present.*`` OrtValues a step returns are
bound as the next step's ``past_key_values.*`` directly: the state never goes
through numpy between steps (only the logits are copied out). Each step gets
fresh output buffers, so an old state stays valid (states are values).

This module reads the manifest and the IOSpec only; it does not import the
PyTorch model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from exporter.artifact.manifest import Manifest, describe_lengths
from exporter.config import GriffinConfig
from exporter.errors import RgMobileError
from exporter.mapped_pages import release_pages
from exporter.step.dtypes import DTYPES, dtype
from exporter.step.iospec import IOSpec

log = logging.getLogger(__name__)

# onnxruntime's session option for its intra-op pool: "1" (its default) spin-waits between pieces of work
SPIN_CONFIG_KEY = "session.intra_op.allow_spinning"

OrtState = dict[str, ort.OrtValue]
_ORT = ort.capi.onnxruntime_pybind11_state
# What onnxruntime raises for a missing, truncated or invalid model file.
_LOAD_ERRORS = (
    _ORT.Fail, _ORT.InvalidProtobuf, _ORT.InvalidGraph, _ORT.NoSuchFile, _ORT.InvalidArgument, _ORT.NotImplemented,
    _ORT.RuntimeException,
)  # fmt: skip
# ... and for a graph that loads but cannot run (RuntimeError: what IO binding raises for a bad name or buffer).
_RUN_ERRORS = (_ORT.Fail, _ORT.RuntimeException, _ORT.InvalidArgument, _ORT.NotImplemented, _ORT.EPFail, RuntimeError)


class OnnxBackend:
    """A :class:`runtime_py.backend.Backend` over onnxruntime sessions."""

    name = "onnxruntime"

    def __init__(self, artifact_dir: Path, manifest: Manifest, threads: int | None = None, spin: bool = True) -> None:
        if manifest.format != "onnx":
            raise RgMobileError(f"{artifact_dir}: manifest format is {manifest.format!r}, not 'onnx'")
        self.manifest = manifest
        self.config: GriffinConfig = manifest.config
        self.io: IOSpec = manifest.io
        self.pairs = dict((o, i) for i, o in self.io.state_pairs())  # output name -> input name it feeds
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        if not spin:  # idle pool threads block at once: with another process on a core, spinning steals its time
            opts.add_session_config_entry(SPIN_CONFIG_KEY, "0")
        self.sessions: dict[int, ort.InferenceSession] = {}
        by_file: dict[str, ort.InferenceSession] = {}  # programs naming one file (--one-program) share its session
        for name, prog in manifest.programs.items():
            path = Path(artifact_dir) / prog.file
            sess = by_file.get(prog.file)
            if sess is None:
                try:
                    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
                except _LOAD_ERRORS as exc:
                    raise RgMobileError(f"{path}: onnxruntime cannot load program {name!r}: {exc}") from None
                by_file[prog.file] = sess
            self._check_session(name, sess)
            for t in prog.lengths:  # one t, or every t from the program's min_seq_len (a symbolic token dim)
                self.sessions[t] = sess
        # onnxruntime maps the weights file and reads all of it to pack its kernels' layout; a step then
        # reads a few rows of the embedding, so the pages read while loading go back to the kernel
        release_pages(Path(artifact_dir) / f.path for f in manifest.files)
        log.info("onnxruntime %s: programs %s", ort.__version__, {n: p.seq_len for n, p in manifest.programs.items()})

    def _check_session(self, program: str, sess: ort.InferenceSession) -> None:
        """The graph's inputs and outputs must be the manifest's io: names, order, dtypes, static dims."""
        ins = [i.name for i in sess.get_inputs()]
        outs = [o.name for o in sess.get_outputs()]
        if ins != self.io.input_names or outs != self.io.output_names:
            raise RgMobileError(
                f"program {program!r}: graph I/O names differ from the manifest's io spec; re-export the artifact"
            )
        seq = self.manifest.programs[program].seq_len
        for spec, arg in zip((*self.io.inputs, *self.io.outputs), (*sess.get_inputs(), *sess.get_outputs())):
            want = DTYPES[spec.dtype].onnxruntime if spec.dtype in DTYPES else None
            dims = list(arg.shape or [])
            # a static graph dim must equal the manifest's dim ("seq" is this program's seq_len); a symbolic
            # graph dim accepts anything the manifest binds it to
            bound = [seq if d == "seq" else d for d in spec.shape]
            clash = len(dims) != len(bound) or any(
                isinstance(g, int) and isinstance(m, int) and g != m for g, m in zip(dims, bound)
            )
            if arg.type != want or clash:
                raise RgMobileError(
                    f"program {program!r}: graph tensor {spec.name} is {arg.type} {dims}, the manifest's io spec "
                    f"says {spec.dtype} {bound}; re-export the artifact"
                )

    def seq_lens(self) -> tuple[int, ...]:
        return tuple(sorted(self.sessions, reverse=True))

    def init_state(self, batch: int = 1) -> OrtState:
        state: OrtState = {}
        for s in self.io.state_inputs:
            if s.init != "zeros":
                raise RgMobileError(f"io spec: unsupported init {s.init!r} for {s.name}")
            zeros = np.zeros(s.concrete_shape(batch=batch), dtype=dtype(s.dtype).numpy)
            state[s.name] = ort.OrtValue.ortvalue_from_numpy(zeros)
        return state

    def step(self, input_ids: np.ndarray, position_ids: np.ndarray, state: OrtState) -> tuple[np.ndarray, OrtState]:
        t = int(input_ids.shape[1])
        sess = self.sessions.get(t)
        if sess is None:
            raise RgMobileError(f"onnx artifact runs {describe_lengths(self.sessions)} tokens per step, not {t}")
        try:
            binding = sess.io_binding()
            binding.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids, dtype=np.int64))
            binding.bind_cpu_input("position_ids", np.ascontiguousarray(position_ids, dtype=np.int64))
            for s in self.io.state_inputs:
                binding.bind_ortvalue_input(s.name, state[s.name])
            for name in self.io.output_names:
                binding.bind_output(name, "cpu")  # onnxruntime allocates fresh buffers each run
            sess.run_with_iobinding(binding)
            values = binding.get_outputs()
        except _RUN_ERRORS as exc:  # a graph that loads but cannot run is a broken artifact
            gist = " ".join(str(exc).split())[:300]
            raise RgMobileError(
                f"onnxruntime failed running the t={t} program ({gist}); re-export the artifact"
            ) from None
        logits = values[0].numpy()
        new_state = {self.pairs[name]: v for name, v in zip(self.io.output_names[1:], values[1:], strict=True)}
        return logits, new_state

    def state_arrays(self, state: OrtState) -> dict[str, np.ndarray]:
        return {s.name: state[s.name].numpy() for s in self.io.state_inputs}

    def state_from_arrays(self, arrays: dict[str, np.ndarray]) -> OrtState:
        """Inverse of :meth:`state_arrays`: OrtValues (own copies) in the IOSpec's dtypes."""
        return {
            s.name: ort.OrtValue.ortvalue_from_numpy(np.array(arrays[s.name], dtype=dtype(s.dtype).numpy, order="C"))
            for s in self.io.state_inputs
        }


def open_artifact(artifact_dir: Path, manifest: Manifest, threads: int | None = None, spin: bool = True) -> OnnxBackend:
    """Factory named by this format's entry (exporter/targets/onnx_entry.py)."""
    return OnnxBackend(Path(artifact_dir), manifest, threads=threads, spin=spin)
