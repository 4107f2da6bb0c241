"""Phone bundles of the bundled model, built once per session (shared with the Kotlin/Swift test wrappers).

``onnx_bundles`` -> {"fp32": Path, "int4": Path}: the bundled model exported to ONNX (fp32, and int4 with
the default recipe) and packaged for android by ``rgmobile package``. ``ios_onnx_bundles``: the same
artifacts packaged for ios (built only when a test asks for them). Both are exported with the defaults:
one ``step.onnx`` for decode and prefill. ``per_length_bundles``: the fp32 export with
``--graph-per-length`` (``decode.onnx`` and ``prefill.onnx``), packaged for each app; ``prefill8_bundles``:
the int4 export with ``--prefill-int8`` (its prefill graph's linears int8 DynamicQuantizeMatMul). Exporting takes
~35 s (int4 longer) and packaging validates each artifact and runs the reference for its self-test, so the artifacts are
exported once and each bundle is written once per run (tests/shared.py: also across xdist workers).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shared import built_once, shared_root

from rgmobile.export import ExportOptions, export
from rgmobile.package.bundle import PackageOptions, package

PRECISIONS = {"fp32": "none", "int4": "int4"}
PER_LENGTH = "per_length"  # the fp32 artifact exported with --graph-per-length (per_length_bundles)
PREFILL8 = "prefill8"  # the int4 artifact exported with --prefill-int8 (prefill8_bundles)


def bundled_onnx_artifact(root: Path, precision: str) -> Path:
    """The bundled model exported to ONNX at ``precision`` ("fp32", "int4", "per_length": fp32 with
    ``--graph-per-length``, ``decode.onnx`` and ``prefill.onnx``, or "prefill8": int4 with ``--prefill-int8``),
    once per run (tests/shared.py)."""

    def build(out: Path) -> None:
        if precision == PREFILL8:
            export(ExportOptions(out=out, format="onnx", quant="int4", prefill_int8=True))
        else:
            split = precision == PER_LENGTH
            quant = "none" if split else PRECISIONS[precision]
            export(ExportOptions(out=out, format="onnx", quant=quant, one_program=False if split else None))

    return built_once(root / f"brown-small-onnx-{precision}", build)


def make_bundle(artifact: Path, target: str, out: Path, name: str | None = None) -> Path:
    """``rgmobile package artifact --target target --out out`` through the Python API."""
    package(PackageOptions(artifact=artifact, target=target, out=out, name=name))
    return out


def bundled_onnx_bundle(root: Path, precision: str, target: str) -> Path:
    artifact = bundled_onnx_artifact(root, precision)
    return built_once(root / f"bundle-{target}-onnx-{precision}", lambda o: make_bundle(artifact, target, o))


@pytest.fixture(scope="session")
def bundle_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_root(tmp_path_factory, "bundles")


@pytest.fixture(scope="session")
def onnx_bundles(bundle_root: Path) -> dict[str, Path]:
    """{"fp32": bundle, "int4": bundle}: the bundled model's ONNX artifacts packaged for android."""
    return {p: bundled_onnx_bundle(bundle_root, p, "android") for p in PRECISIONS}


@pytest.fixture(scope="session")
def ios_onnx_bundles(bundle_root: Path) -> dict[str, Path]:
    """The same ONNX artifacts packaged for ios (same program files, target ios)."""
    return {p: bundled_onnx_bundle(bundle_root, p, "ios") for p in PRECISIONS}


@pytest.fixture(scope="session")
def per_length_bundles(bundle_root: Path) -> dict[str, Path]:
    """{"android": bundle, "ios": bundle}: the bundled model exported to ONNX fp32 with
    ``--graph-per-length`` (``decode.onnx`` and ``prefill.onnx``), packaged for each app."""
    return {target: bundled_onnx_bundle(bundle_root, PER_LENGTH, target) for target in ("android", "ios")}


@pytest.fixture(scope="session")
def prefill8_bundles(bundle_root: Path) -> dict[str, Path]:
    """{"android": bundle, "ios": bundle}: the bundled model exported to ONNX int4 with ``--prefill-int8``
    (``decode.onnx`` with MatMulNBits, ``prefill.onnx`` with int8 DynamicQuantizeMatMul), packaged for each app."""
    return {target: bundled_onnx_bundle(bundle_root, PREFILL8, target) for target in ("android", "ios")}


def widen_a_state_dim(bundle: Path) -> None:
    """Make the bundle's manifest disagree with its graph: one state tensor (the input and the
    output that feeds it) one wider in the io spec than in the graph."""
    m = json.loads((bundle / "manifest.json").read_text())
    spec = next(t for t in m["io"]["inputs"] if t["role"] == "state")
    for t in (spec, next(o for o in m["io"]["outputs"] if o["name"] == spec["pair"])):
        t["shape"][-1] += 1
    (bundle / "manifest.json").write_text(json.dumps(m))
