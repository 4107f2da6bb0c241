"""The Core ML part of ``rgmobile validate``: what can be checked off macOS, and saying what cannot.

On every OS:
  * spec: the saved .mlpackage spec(s) against the manifest (names, dtypes,
    shapes, deployment target, functions; exporter/targets/coreml_check.py).
On Linux (and any non-macOS), instead of Core ML predictions:
  * "Core ML program: emulated (coremltools op definitions)": the saved packages'
    programs run op by op with coremltools' numpy definitions
    (runtime_py/coreml_emulator.py) against the PyTorch reference with the
    artifact precision's thresholds; its metrics are the report's summary, and
    the quality report of a quantized artifact scores it too.
  * program parity: the exact programs handed to coremltools (rebuilt from the
    source checkpoint: torch.export + every Core ML rewrite) run in PyTorch; when
    the emulation fails and this passes, the fault is in conversion, not ours.
  * quantized: the weights read back from the packages vs the recipe's fake quant.
  * "Core ML runtime predictions: not run (needs macOS)": a check with status
    "not run". With everything else passed the report's status is
    "emulated-pass" (CLI exit 3, as "incomplete"), never "passed".
On macOS the normal comparison runs the artifact through Core ML
(runtime_py/coreml_backend.py) and the spec check is added to it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from exporter.artifact.manifest import Manifest
from exporter.errors import RgMobileError
from runtime_py.coreml_emulator import DESCRIPTION

log = logging.getLogger(__name__)

NOT_RUN = "not run"
PREDICTIONS = "Core ML runtime predictions"
EMULATED = DESCRIPTION  # "Core ML program: emulated (coremltools op definitions)"
EMULATED_PASS = "emulated-pass"


def predictions_possible() -> bool:
    return sys.platform == "darwin"


def spec_check(artifact: Path, manifest: Manifest) -> dict[str, str]:
    """The spec check as a report record (a mismatch raises: the artifact is broken)."""
    from exporter.targets.coreml_check import check_spec

    result = check_spec(artifact, manifest)
    return {"name": "Core ML spec vs manifest", "status": "passed", "detail": result.summary()}


def predictions_not_run() -> dict[str, str]:
    return {
        "name": PREDICTIONS,
        "status": NOT_RUN,
        "detail": f"needs macOS; this is {sys.platform}: copy the artifact to a Mac and run `rgmobile validate` there",
    }


def emulated_backend(artifact: Path, manifest: Manifest) -> Any:
    """The saved programs of ``artifact`` run by the emulator (runtime_py/coreml_emulator.py)."""
    from runtime_py.coreml_emulator import CoreMLEmulatedBackend

    return CoreMLEmulatedBackend(artifact, manifest)


def emulated_check(summary: dict[str, Any], failed: bool, precision: str) -> dict[str, str]:
    """The emulated program's parity as a report record (its metrics are the report's summary)."""
    return {
        "name": EMULATED,
        "status": "failed" if failed else "passed",
        "detail": f"{precision} thresholds: max abs logits {summary['max_abs_logits']:.3g}, "
        f"max state abs {summary['max_state_abs']:.3g}, top-1 {summary['top1_agreement']:.3f}, "
        f"over {summary['positions']} positions",
    }


def program_backend(manifest: Manifest, model: Any) -> tuple[Any, str]:
    """(the pre-conversion programs as a Backend, thresholds precision) for this artifact."""
    from exporter.targets.coreml_parity import ProgramBackend, build_programs, program_precision

    state = manifest.format_details.get("state", "explicit")
    if state not in ("explicit", "internal"):
        raise RgMobileError(f"manifest: unknown Core ML state mode {state!r}")
    lens = {name: prog.seq_len for name, prog in manifest.programs.items()}
    log.info("rebuilding the pre-conversion Core ML programs %s (%s state)", lens, state)
    backend = ProgramBackend(build_programs(model, lens, state), manifest.config, state)
    return backend, program_precision(state)


def program_check(summary: dict[str, Any], failed: bool) -> dict[str, str]:
    """The pre-conversion program's parity as a report record (its metrics are the report's summary)."""
    return {
        "name": "pre-conversion program vs PyTorch reference",
        "status": "failed" if failed else "passed",
        "detail": f"max abs logits {summary['max_abs_logits']:.3g}, max state abs {summary['max_state_abs']:.3g}, "
        f"over {summary['positions']} positions (prefill chunks + decode)",
    }


SHIPPED_WEIGHTS = "Core ML quantized weights vs fake-quant reference"


def shipped_weights(
    artifact: Path, manifest: Manifest, model: Any, threads: int | None = None
) -> tuple[dict[str, str], Any]:
    """(report record, a TorchBackend of the as-shipped weights) of a quantized Core ML artifact.

    The weights are read back from every package (quantization/coreml_readback.py), compared
    with ``fake_quantized`` of the recipe the package holds (``quantization.coreml.applied``),
    and loaded into a copy of the model (a PyTorch backend of the as-shipped weights, fp32 compute; the
    quality report of ``validate`` scores the emulated packages instead).
    """
    from quantization.coreml_readback import as_shipped_model, check_weights, read_weights
    from quantization.recipe import Recipe
    from runtime_py.torch_backend import TorchBackend

    facts = (manifest.quantization or {}).get("coreml", {})
    if "applied" not in facts:
        raise RgMobileError(f"{artifact}: the manifest's quantization has no coreml.applied recipe; re-export it")
    recipe = Recipe.from_dict(facts["applied"], "manifest quantization.coreml.applied")
    lines, passed, shipped_model = [], True, None
    for package in manifest.program_files():
        weights = read_weights(artifact / package, model)
        result = check_weights(model, weights, recipe)
        passed &= result.passed
        lines.append(f"{package} ({', '.join(weights.functions)}): {result.summary()}")
        if shipped_model is None:
            shipped_model = as_shipped_model(model, weights)
    kept = facts.get("kept_float") or []
    if kept:
        lines.append(f"kept float: {len(kept)} weights ({facts.get('kept_float_reason', '')})")
    record = {"name": SHIPPED_WEIGHTS, "status": "passed" if passed else "failed", "detail": "; ".join(lines)}
    if shipped_model is None:
        raise RgMobileError("Core ML artifact lists no packages to read weights from")
    backend = TorchBackend(shipped_model, threads=threads)
    backend.name = "Core ML as-shipped weights (PyTorch, fp32 compute)"  # type: ignore[misc]
    return record, backend
