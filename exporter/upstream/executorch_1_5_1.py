"""ExecuTorch 1.5.1 internals patched while lowering to XNNPACK: the whole-weight copies it makes.

What is patched (all within :func:`lean_xnnpack_preprocess`, restored on exit):
  * ``XnnpackBackend.copy_exported_program_for_preprocess`` (from ``BackendDetails``): shares
    the constants instead of deep-copying them;
  * ``XnnpackBackend.preprocess``: wrapped to share identical weight blobs across methods and
    to spill large ones to disk;
  * ``duplicate_constant_node_pass.copy`` (the ``copy`` module that pass uses): its deepcopy
    of a tensor is the tensor itself.
Why: at 2B fp32 the copies are whole model sizes each (see :func:`lean_xnnpack_preprocess`).
Guarded by tests/test_upstream.py (the pinned version and every patched attribute exist; the
hooks apply and are restored) and tests/test_executorch.py (the lowered programs, with and
without spilling, still match the eager model).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from exporter.upstream import is_pinned

log = logging.getLogger(__name__)

VERSION = "1.5.1"  # the ExecuTorch these patches are written for (pyproject.toml pins it)
# XNNPACK blobs at least this large are spilled to disk during an export (see ``lean_xnnpack_preprocess``).
SPILL_MIN_BYTES = 1 << 20
# (module, attribute) pairs the patches replace; each must exist for them to apply.
PATCHED = (
    ("executorch.backends.xnnpack.xnnpack_preprocess", "XnnpackBackend.copy_exported_program_for_preprocess"),
    ("executorch.backends.xnnpack.xnnpack_preprocess", "XnnpackBackend.preprocess"),
    ("executorch.exir.backend.canonical_partitioners.duplicate_constant_node_pass", "copy"),
    ("executorch.exir._serialize._cord", "FileBackedData"),
)


def missing_attributes() -> list[str]:
    """The patched attributes (``module:attribute``) that this ExecuTorch does not have."""
    import importlib

    missing = []
    for module, attribute in PATCHED:
        try:
            obj: Any = importlib.import_module(module)
            for part in attribute.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError):
            missing.append(f"{module}:{attribute}")
    return missing


class _ShareTensors:
    """Stands in for the ``copy`` module of ExecuTorch's duplicate_constant_node pass: its "copy"
    of a constant used inside and outside a partition (the tied table: portable lookup + XNNPACK
    head) is the same tensor under a second name. Neither user writes to it."""

    @staticmethod
    def deepcopy(value: Any, memo: dict[int, Any] | None = None) -> Any:
        return value if isinstance(value, torch.Tensor) else copy.deepcopy(value, memo)


@contextlib.contextmanager
def lean_xnnpack_preprocess(spill_dir: Path | None = None, spill_min_bytes: int = SPILL_MIN_BYTES) -> Iterator[None]:
    """Lower without the whole-weight copies ExecuTorch 1.5.1 makes for XNNPACK.

    * ``BackendDetails.copy_exported_program_for_preprocess`` deep-copies every partition of
      every method, constants included, all before the first ``preprocess``: one more copy of
      the weights per method. XNNPACK's preprocess only reads constants (its passes replace
      ``state_dict`` entries, never a tensor in place), so the copy here shares the tensors and
      copies the rest (graph, signature, dicts).
    * each method's partitions serialize their weights into their own named-data bytes, so
      prefill and decode each held a copy until the .pte (or .ptd) is written (which dedups by key). The
      keys are the sha256 of the bytes: identical blobs are replaced by the first one seen.
    * a constant used both by a delegated and by a portable op (the tied table) is deep-copied
      per method by ``duplicate_constant_node``; here the copy is the same tensor
      (:class:`_ShareTensors`).
    * with ``spill_dir``, every blob of at least ``spill_min_bytes`` is written to a file there
      when its partition is preprocessed and replaced by a ``FileBackedData``: the serialized
      weights are never all in memory next to the torch weights (at 2B fp32 that is 10.7 GB).
    All hooks are restored on exit. On another ExecuTorch version, or when a patched
    attribute is gone, a warning says so and the lowering runs unpatched.
    """
    import executorch.version

    unpatched = "lowering with the whole-weight copies (more memory)"
    if not is_pinned("executorch", executorch.version.__version__, VERSION, unpatched):
        yield
        return
    missing = missing_attributes()
    if missing:
        log.warning("executorch: %s moved; %s", ", ".join(missing), unpatched)
        yield
        return
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend
    from executorch.exir._serialize._cord import FileBackedData
    from executorch.exir.backend.canonical_partitioners import duplicate_constant_node_pass

    saved = {name: XnnpackBackend.__dict__.get(name) for name in ("copy_exported_program_for_preprocess", "preprocess")}
    preprocess = XnnpackBackend.preprocess
    blobs: dict[str, Any] = {}

    def spilled(blob: bytes) -> Any:
        if spill_dir is None or len(blob) < spill_min_bytes:
            return blob
        path = Path(spill_dir) / f"xnnpack-{len(blobs)}.bin"
        with path.open("wb") as f:
            f.write(blob)
        return FileBackedData(str(path), cleanup=True, sha256=hashlib.sha256(blob).digest())

    def same(first: Any, blob: bytes) -> bool:
        if isinstance(first, FileBackedData):
            return len(first) == len(blob) and first.sha256() == hashlib.sha256(blob).digest()
        return isinstance(first, bytes) and first == blob

    def copy_sharing_constants(cls: type, program: torch.export.ExportedProgram, specs: Any) -> Any:
        tensors = [*program.state_dict.values(), *program.constants.values()]
        memo: dict[int, Any] = {id(t): t for t in tensors if isinstance(t, torch.Tensor)}
        return copy.deepcopy(program, memo)

    def preprocess_sharing_blobs(program: torch.export.ExportedProgram, specs: Any) -> Any:
        result = preprocess(program, specs)
        store = result.data_store_output
        if store is not None:  # blobs stored in the .pte and those tagged for a data file (fp32: model.ptd)
            entries = [*store.pte_data.items(), *(e for tagged in store.external_data.values() for e in tagged.items())]
            for key, entry in entries:
                blob = store.buffers[entry.buffer_index]
                if not isinstance(blob, bytes):  # already replaced (a second key of the same buffer)
                    continue
                first = blobs.get(key)
                if first is None:
                    blobs[key] = store.buffers[entry.buffer_index] = spilled(blob)
                elif same(first, blob):
                    store.buffers[entry.buffer_index] = first
        return result

    XnnpackBackend.copy_exported_program_for_preprocess = classmethod(copy_sharing_constants)  # type: ignore[assignment]
    XnnpackBackend.preprocess = staticmethod(preprocess_sharing_blobs)  # type: ignore[method-assign]
    duplicate_constant_node_pass.copy = _ShareTensors  # type: ignore[assignment]
    try:
        yield
    finally:
        duplicate_constant_node_pass.copy = copy
        for name, value in saved.items():
            if value is None:
                delattr(XnnpackBackend, name)
            else:
                setattr(XnnpackBackend, name, value)
