"""The export stage: checkpoint in, artifact folder out (programs + tokenizer.model + manifest.json).

``export(options)`` loads the checkpoint, runs the target (exporter/targets/)
into a temporary folder beside ``options.out``, copies the tokenizer, writes
the manifest with every file's size and sha256, and only then renames the
folder into place: a failed or interrupted export leaves no half-written
artifact.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from exporter.errors import RgMobileError
from exporter.fsio import atomic_dir
from exporter.package.manifest import MANIFEST_NAME, Manifest, file_entries, read_manifest, write_manifest
from exporter.step.iospec import build_iospec
from exporter.targets import check_target, get_target

log = logging.getLogger(__name__)

ExternalData = Literal["auto", "always", "never"]
TOKENIZER_FILE = "tokenizer.model"


@dataclass(frozen=True)
class ExportOptions:
    """What to export and where (Typer options of ``rgmobile export`` map 1:1 to these).

    Fields:
      out: the artifact folder to write (replaced if it already holds an artifact).
      format: export target, one of ``exporter.targets.TARGETS`` ("onnx").
      checkpoint: HF folder or official .pt; None = the bundled model.
      prefill_chunk: tokens per prefill step (the prefill program's t); 1 = decode only.
      tokenizer: SentencePiece model to ship, if not beside the checkpoint.
      external_data: keep weights outside the graph files: "auto" when a graph
        would pass the 2 GB protobuf limit, or "always" / "never" (ONNX).
      ios: Core ML minimum deployment target, 17 or 18 (18: one multifunction
        package for prefill + decode; 17: one package per program).
      compute_precision: Core ML compute precision, "fp16" or "fp32".
      coreml_state: Core ML state handling, "explicit" (all state is graph I/O)
        or "internal" (KV ring buffers as Core ML states; needs ios 18).
    """

    out: Path
    format: str = "onnx"
    checkpoint: Path | None = None
    prefill_chunk: int = 32
    tokenizer: Path | None = None
    external_data: ExternalData = "auto"
    ios: int = 18
    compute_precision: str = "fp16"
    coreml_state: str = "explicit"

    def __post_init__(self) -> None:
        check_target(self.format)
        if self.format == "coreml":
            from exporter.targets.coreml_convert import CoreMLSettings

            CoreMLSettings(self.ios, self.compute_precision, self.coreml_state)  # type: ignore[arg-type]  # validates
        if not isinstance(self.prefill_chunk, int) or not 1 <= self.prefill_chunk <= 4096:
            raise RgMobileError(f"--prefill-chunk must be an integer in 1..4096, got {self.prefill_chunk!r}")
        if self.external_data not in ("auto", "always", "never"):
            raise RgMobileError(f"--external-data must be auto, always or never, got {self.external_data!r}")
        out = Path(self.out)
        if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_NAME).is_file())):
            raise RgMobileError(
                f"{out} exists and is not an rgmobile artifact folder; choose a new or empty --out "
                "(an existing artifact is replaced)"
            )


def export(options: ExportOptions) -> Manifest:
    """Export ``options.checkpoint`` to ``options.out``; returns the manifest written."""
    from exporter.checkpoint.loader import default_checkpoint, load_checkpoint

    source = Path(options.checkpoint) if options.checkpoint is not None else default_checkpoint()
    ckpt = load_checkpoint(source, tokenizer=options.tokenizer)
    target = get_target(options.format)
    label = str(Path(ckpt.source).resolve())
    with atomic_dir(Path(options.out)) as tmp:
        result = target(ckpt.model, tmp, options, label)
        shutil.copyfile(ckpt.tokenizer_path, tmp / TOKENIZER_FILE)
        manifest = Manifest(
            format=options.format,
            source={"checkpoint": label, "kind": ckpt.kind},
            precision=result.precision,
            quantization=result.quantization,
            config=ckpt.config,
            tokenizer_file=TOKENIZER_FILE,
            prefill_chunk=max(p.seq_len for p in result.programs.values()),
            io=build_iospec(ckpt.config),
            programs=result.programs,
            files=file_entries(tmp),
            format_details=result.details,
        )
        write_manifest(tmp, manifest)
        read_manifest(tmp)  # the artifact must read back before it is renamed into place
    log.info("exported %s (%s) to %s", label, options.format, options.out)
    return manifest
