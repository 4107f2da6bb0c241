"""The format registry (exporter/formats.py): every entry resolves, and every view that lists
formats (targets, artifact backends, read-backs, recipe checks, bundle targets, CLI help) is what
the entries say. Fast: resolving a string imports its module only, nothing runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exporter.errors import RgMobileError
from exporter.formats import FORMATS, FormatEntry, bundle_targets, entries, format_names, get_format, quant_formats
from exporter.registry import resolve

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_entry_string_resolves_to_a_callable(name: str) -> None:
    entry = get_format(name)
    assert isinstance(entry, FormatEntry) and entry.name == name
    assert set(entry.strings()) >= {"export", "backend", "readback", "requirements"}
    for field, spec in entry.strings().items():
        try:
            target = resolve(spec)
        except ImportError as e:  # an optional toolchain (executorch, coremltools) missing here
            pytest.skip(f"{name}.{field}: {e}")
        assert callable(target), f"{name}.{field} = {spec!r} is not callable"


def test_the_registry_imports_no_format() -> None:
    """Asking which formats exist, and loading every entry, imports no toolchain (torch, onnx,
    executorch, coremltools) and no format's lowering, quantization or backend."""
    code = (
        "import sys\n"
        "from exporter.formats import entries, format_names\n"
        "format_names(); entries()\n"
        "heavy = ('torch', 'onnx', 'onnxruntime', 'executorch', 'coremltools')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy\n"
        "    or m.startswith(('quantization.', 'runtime_py.')) or m in ('exporter.targets.onnx',\n"
        "    'exporter.targets.executorch', 'exporter.targets.coreml')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_derived_views_are_what_the_entries_say() -> None:
    import rgmobile.export
    from exporter.artifact.requirements import runtime_requirements
    from exporter.targets import target_names
    from rgmobile.package.bundle import TARGET_FORMATS

    by_name = {e.name: e for e in entries()}
    assert list(by_name) == format_names() == list(FORMATS)
    assert target_names() == sorted(by_name)
    assert rgmobile.export.QUANT_FORMATS == quant_formats()
    assert set(quant_formats()) == {n for n, e in by_name.items() if e.check_recipe is not None}
    assert TARGET_FORMATS == bundle_targets()
    for target, names in bundle_targets().items():
        assert set(names) == {n for n, e in by_name.items() if target in e.bundle_targets}
        places = [by_name[n].bundle_targets[target] for n in names]
        assert places == sorted(places)
    # today's facts, unchanged by the registry
    assert bundle_targets() == {"android": ("onnx", "executorch"), "ios": ("coreml", "onnx")}
    assert format_names() == ["onnx", "executorch", "coreml"]
    for name, entry in by_name.items():
        assert entry.export == f"exporter.targets.{name}:export"
        assert entry.backend == f"runtime_py.{name}_backend:open_artifact"
        assert entry.readback == f"quantization.{name}_readback:read_shipped"
        assert runtime_requirements(name, "fp32", {}) == resolve(entry.requirements)("fp32", {})
    assert runtime_requirements("tflite", "fp32", {}) == {}


def test_the_cli_help_lists_the_registry() -> None:
    from typer.testing import CliRunner

    from rgmobile.cli import app

    out = CliRunner().invoke(app, ["export", "--help"], env={"COLUMNS": "200"}).output
    assert f"export target: {', '.join(format_names())}" in out


def test_an_unknown_format_fails_with_the_valid_choices(tmp_path: Path) -> None:
    from exporter.artifact.manifest import Manifest
    from exporter.targets import check_target, get_target
    from runtime_py.open import open_artifact_backend

    valid = str(sorted(FORMATS))
    for fail in (lambda: get_format("tflite"), lambda: get_target("tflite"), lambda: check_target("tflite")):
        with pytest.raises(RgMobileError) as e:
            fail()
        assert str(e.value) == f"unknown export format 'tflite'; valid formats: {valid}"

    class Fake:  # only .format is read before the lookup fails
        format = "tflite"

    fake: Manifest = Fake()  # type: ignore[assignment]
    with pytest.raises(RgMobileError) as e:
        open_artifact_backend(tmp_path, fake)
    assert str(e.value) == f"{tmp_path}: unknown artifact format 'tflite'; valid: {valid}"
