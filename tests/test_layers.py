"""The imports run one way: every module has a layer, imports go to the same or a lower layer, a
format's column is imported only from its own column or the top (the runtime reaches formats through
the registries), and no two modules import each other, even through others.

Read from the source (ast), nothing is imported. Every import counts: top level, inside a function
(lazy) and under ``if TYPE_CHECKING``. docs/architecture.md explains the layers.
"""

from __future__ import annotations

import ast
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("exporter", "quantization", "runtime_py", "rgmobile")

# (module pattern, layer, format column). The first matching row wins; a pattern ending in ".*"
# matches the package itself and everything under it. Column "" = format-neutral.
LAYERS: tuple[tuple[str, int, str], ...] = (
    # L0 foundation: config, errors, files, the model, the step I/O, pinned upstream patches.
    ("exporter", 0, ""),  # __version__
    ("exporter.errors", 0, ""),
    ("exporter.config", 0, ""),
    ("exporter.fsio", 0, ""),
    ("exporter.mapped_pages", 0, ""),
    ("exporter.quiet", 0, ""),
    ("exporter.resources", 0, ""),
    ("exporter.registry", 0, ""),
    ("exporter.formats", 0, ""),  # the format registry: entries are strings, loaded lazily
    ("exporter.model.*", 0, ""),
    ("exporter.step.*", 0, ""),
    ("exporter.upstream.*", 0, ""),
    # L1 quantization core: recipes, tensor maths, the quantized reference, integers and scales.
    ("quantization", 1, ""),
    ("quantization.recipe", 1, ""),
    ("quantization.tensor", 1, ""),
    ("quantization.reference", 1, ""),
    ("quantization.qweights", 1, ""),
    ("quantization.shipped", 1, ""),
    ("quantization.gptq", 1, ""),
    # L2 checkpoints (fp32 and quantized) and what an artifact folder holds.
    ("exporter.checkpoint.*", 2, ""),
    ("exporter.artifact.*", 2, ""),
    # L3 formats: one column each (its entry, lowering, quantization, the Python backend), plus
    # the format-neutral targets (TargetResult, TargetOptions) and metadata.
    ("exporter.targets", 3, ""),
    ("exporter.targets.metadata", 3, ""),
    ("exporter.targets.onnx*", 3, "onnx"),
    ("quantization.onnx*", 3, "onnx"),
    ("runtime_py.onnx_backend", 3, "onnx"),
    ("exporter.targets.executorch*", 3, "executorch"),
    ("quantization.executorch*", 3, "executorch"),
    ("runtime_py.executorch_backend", 3, "executorch"),
    ("exporter.targets.coreml*", 3, "coreml"),
    ("quantization.coreml*", 3, "coreml"),
    ("runtime_py.coreml_*", 3, "coreml"),
    # L4 runtime: generation, validation, quality, benchmarks; formats only through the registries
    # (exporter/registry.py), except runtime_py.validate_coreml: the Core ML part of validate, and
    # runtime_py.gemm_xnnpack: the XNNPACK kernel of the int8 GEMM peak (quantized as the export does).
    ("runtime_py.validate_coreml", 4, "coreml"),
    ("runtime_py.gemm_xnnpack", 4, "executorch"),
    ("runtime_py.*", 4, ""),
    # L5 top: the CLI, the export pipeline, the quantize command, phone bundles.
    ("rgmobile.*", 5, ""),
)


def layer_of(module: str) -> tuple[int, str] | None:
    """(layer, column) of ``module``, or None when no row matches."""
    for pattern, layer, column in LAYERS:
        if fnmatchcase(module, pattern) or (pattern.endswith(".*") and module == pattern[:-2]):
            return layer, column
    return None


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of PACKAGES."""
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports_of(module: str, source: str, known: set[str], is_package: bool = False) -> set[str]:
    """The modules of ``known`` that ``source`` (module ``module``) imports, anywhere in the file.
    ``from a.b import c`` counts as ``a.b.c`` when that is a module, else as ``a.b``."""

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                parent = ".".join([*base, *([node.module] if node.module else [])])
            else:
                parent = node.module or ""
            names = [f"{parent}.{a.name}" if f"{parent}.{a.name}" in known else parent for a in node.names]
        else:
            continue
        for name in names:
            target = resolve(name)
            if target is not None and target != module:
                found.add(target)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = module_files(root)
    known = set(files)
    return {m: imports_of(m, f.read_text(encoding="utf-8"), known, f.name == "__init__.py") for m, f in files.items()}


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that goes up a layer, or into a format column from another column or from
    format-neutral code below the top, as "importer -> imported: why"."""
    out: list[str] = []
    for module, targets in sorted(graph.items()):
        here = layer_of(module)
        if here is None:
            continue
        for target in sorted(targets):
            there = layer_of(target)
            if there is None:
                continue
            if there[0] > here[0]:
                out.append(f"{module} (L{here[0]}) -> {target} (L{there[0]}): imports a higher layer")
            elif here[0] in (3, 4) and there[0] == 3 and there[1] and there[1] != here[1]:
                where = f"the {here[1]} column" if here[1] else "format-neutral code"
                out.append(f"{module} ({where}) -> {target} (the {there[1]} column): imports another format")
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_every_module_has_a_layer(graph: dict[str, set[str]]) -> None:
    missing = [m for m in sorted(graph) if layer_of(m) is None]
    assert not missing, f"modules without a layer (add them to LAYERS in tests/test_layers.py): {missing}"


def test_imports_go_down_and_not_across_formats(graph: dict[str, set[str]]) -> None:
    bad = violations(graph)
    assert not bad, "imports against the layers (docs/architecture.md):\n" + "\n".join(bad)


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    found = cycles(graph)
    assert not found, f"modules that import each other (through others too): {found}"


def test_the_checker_catches_an_upward_and_a_sideways_import() -> None:
    known = {"exporter.config", "rgmobile.cli", "quantization.onnx", "quantization.coreml", "runtime_py.generate"}
    config = "def f():\n    from rgmobile.cli import app  # lazy, still counted\n"
    onnx = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from quantization import coreml\n"
    graph = {
        "exporter.config": imports_of("exporter.config", config, known),
        "quantization.onnx": imports_of("quantization.onnx", onnx, known),
        "runtime_py.generate": imports_of("runtime_py.generate", "import quantization.onnx\n", known),
    }
    assert graph == {
        "exporter.config": {"rgmobile.cli"},
        "quantization.onnx": {"quantization.coreml"},
        "runtime_py.generate": {"quantization.onnx"},
    }
    assert violations(graph) == [
        "exporter.config (L0) -> rgmobile.cli (L5): imports a higher layer",
        "quantization.onnx (the onnx column) -> quantization.coreml (the coreml column): imports another format",
        "runtime_py.generate (format-neutral code) -> quantization.onnx (the onnx column): imports another format",
    ]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer_of("exporter.brand_new") is None
