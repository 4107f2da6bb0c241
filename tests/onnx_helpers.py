"""Shared helpers for the ONNX tests: one tiny exported artifact per session, and graph surgery.

Exporting takes tens of seconds on a 2-core machine, so the artifact is
built once (cached here, since fixtures in different modules are separate) and
copied before a test breaks it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest

from exporter.artifact.manifest import Manifest, file_entries, read_manifest, write_manifest
from rgmobile.export import ExportOptions, export

CHUNK = 8  # prefill chunk of the test artifact (window 16: the prompt crosses it)
# Export options of the tests that read graph files by name and compare prefill row by row: one graph
# per step length and every position's logits (the defaults are one step.onnx and the last position's).
ROW_BY_ROW = {"one_program": False, "prefill_logits": "all"}
_CACHE: dict[str, Path] = {}


def tiny_onnx_artifact(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> Path:
    """The tiny checkpoint exported to ONNX through the Python API (cached for the session), one graph
    per step length (``decode.onnx``, ``prefill.onnx``) returning every position's logits: the tests that
    read graph files by name or compare prefill row by row use it."""
    if "api" not in _CACHE:
        out = tmp_path_factory.mktemp("onnx") / "tiny-onnx"
        export(ExportOptions(out=out, format="onnx", checkpoint=checkpoint, prefill_chunk=CHUNK, **ROW_BY_ROW))
        _CACHE["api"] = out
    return _CACHE["api"]


def copy_artifact(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rehash(artifact: Path) -> Manifest:
    """Rewrite the manifest's file list after a deliberate edit, so only numerics can catch it."""
    m = read_manifest(artifact, verify=False)
    fresh = Manifest(**{**m.__dict__, "files": file_entries(artifact)})
    write_manifest(artifact, fresh)
    return fresh


def _rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if x == old else x for x in node.input]
        node.output[:] = [new if x == old else x for x in node.output]


def swap_outputs(path: Path, a: str, b: str) -> None:
    """Make output ``a`` carry what ``b`` computed and vice versa (a wrong state hand-off)."""
    model = onnx.load(str(path))
    g = model.graph
    _rename_value(g, a, "__swap_tmp__")
    _rename_value(g, b, a)
    _rename_value(g, "__swap_tmp__", b)
    onnx.save(model, str(path))


def freeze_output(path: Path, output: str, source_input: str) -> None:
    """Make ``output`` a copy of ``source_input``: the graph drops that state's update."""
    model = onnx.load(str(path))
    g = model.graph
    _rename_value(g, output, output + "__dropped")
    g.node.append(onnx.helper.make_node("Identity", [source_input], [output], name="broken_identity"))
    onnx.save(model, str(path))
