"""Open whatever the user points at: a checkpoint (PyTorch reference) or an exported artifact.

An artifact folder is recognised by its ``manifest.json``; its ``format`` picks the backend its
entry in the format registry names (exporter/formats.py; an unknown format fails with the
valid choices).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from exporter.errors import RgMobileError
from exporter.formats import FormatEntry, entries, get_format
from runtime_py.backend import Backend

if TYPE_CHECKING:
    from exporter.artifact.manifest import Manifest


@dataclass(frozen=True)
class Opened:
    backend: Backend
    tokenizer_path: Path
    kind: str  # "checkpoint" or the artifact format
    path: Path


def is_artifact(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "manifest.json").is_file()


def open_artifact_backend(artifact: Path, manifest: Manifest, threads: int | None = None, spin: bool = True) -> Backend:
    """The backend of ``manifest.format``: its entry's factory, ``(artifact_dir, manifest, threads) -> Backend``.

    ``spin=False`` asks the runtime's idle threads not to spin-wait; only formats whose entry
    says ``spin_control`` can, the others fail with a clear error.
    """
    entry = _entry(artifact, manifest.format, spin)
    factory = entry.load("backend")
    backend: Backend = (
        factory(Path(artifact), manifest, threads) if spin else factory(Path(artifact), manifest, threads, spin=False)
    )
    return backend


def _entry(artifact: Path, fmt: str, spin: bool) -> FormatEntry:
    """The format's registry entry; ``spin=False`` for a format without spin control is refused
    here, before its runtime is imported or its files are hashed."""
    entry = get_format(fmt, f"{artifact}: unknown artifact format {fmt!r}", "valid")
    if not spin and not entry.spin_control:
        raise RgMobileError(no_spin_error(fmt))
    return entry


def no_spin_error(what: str) -> str:
    """What --no-spin says for ``what`` (a format or a checkpoint), naming the formats that take it."""
    runs = ", ".join(e.name for e in entries() if e.spin_control)
    return f"--no-spin: {what} runs on a thread pool rgmobile cannot stop spinning; only {runs} artifacts can"


def open_path(path: Path | None, threads: int | None = None, spin: bool = True) -> Opened:
    """A backend for a checkpoint path, an artifact folder, or (None) the bundled model
    (``spin``: see :func:`open_artifact_backend`)."""
    from exporter.checkpoint.loader import default_checkpoint, load_checkpoint

    if path is not None and is_artifact(path):
        from exporter.artifact.manifest import read_manifest

        _entry(Path(path), read_manifest(Path(path), verify=False).format, spin)  # before hashing GBs
        manifest = read_manifest(Path(path))
        backend = open_artifact_backend(Path(path), manifest, threads, spin)
        return Opened(backend, Path(path) / manifest.tokenizer_file, manifest.format, Path(path))
    if not spin:
        raise RgMobileError(no_spin_error("a checkpoint (PyTorch)"))
    from runtime_py.torch_backend import TorchBackend

    ckpt = load_checkpoint(Path(path) if path is not None else default_checkpoint())
    return Opened(TorchBackend(ckpt.model, threads=threads), ckpt.tokenizer_path, "checkpoint", ckpt.source)
