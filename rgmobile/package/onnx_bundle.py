"""The ONNX program files of a bundle: its graphs, weights stored once in ``weights.bin``.

An fp32 ONNX export below 2 GB embeds every weight in its graph: ``step.onnx`` (the default), or
both ``decode.onnx`` and ``prefill.onnx`` with ``--graph-per-length`` (the same tensors twice). A
bundle re-saves each graph with its initializers moved into one shared ``weights.bin`` by the
exporter's own writer (exporter/targets/onnx.py ``write_shared``): tensors with the same bytes are
written once and every graph points at them by offset/length.
Tiny initializers (shape constants, under 1 KB) stay inside the graphs. An artifact that
already keeps its weights in ``weights.bin`` (quantized, or ``--external-data always``) is
copied as it is.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import onnx

from exporter.artifact.manifest import Manifest
from exporter.targets.onnx import SHARED_WEIGHTS, write_shared

log = logging.getLogger(__name__)


def write_onnx_programs(artifact: Path, manifest: Manifest, dest: Path) -> dict[str, str | None]:
    """Write the program files (and ``weights.bin``) into ``dest``; returns the new ``external_data`` detail."""
    files = manifest.program_files()  # the default: one step.onnx for both
    if manifest.format_details.get("external_data"):
        data = str(manifest.format_details["external_data"])
        for file in [*files, data]:
            shutil.copyfile(Path(artifact) / file, Path(dest) / file)
        return {"external_data": data}
    protos = {}
    for file in files:
        if Path(file).suffix != ".onnx" or Path(file).name != file:  # write_shared saves each graph as {key}.onnx
            raise RuntimeError(f"ONNX program file {file!r} is not a .onnx file at the top of the artifact")
        protos[Path(file).stem] = onnx.load_model(str(Path(artifact) / file), load_external_data=True)
    write_shared(protos, Path(dest), SHARED_WEIGHTS)
    log.info("bundle: %s re-saved with shared %s", files, SHARED_WEIGHTS)
    return {"external_data": SHARED_WEIGHTS}


def inline_initializer_bytes(path: Path, min_bytes: int = 1024) -> int:
    """Bytes of initializer data stored inside a graph file (tensors of at least ``min_bytes``)."""
    proto = onnx.load_model(str(path), load_external_data=False)
    total = 0
    for init in proto.graph.initializer:
        if init.data_location != onnx.TensorProto.EXTERNAL and len(init.raw_data) >= min_bytes:
            total += len(init.raw_data)
    return total
