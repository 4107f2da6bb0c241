"""Minimum runtime versions an artifact needs: the manifest's ``runtime_requirements``.

Measured, not guessed: the bundled model's exports loaded and one decode step run with each
onnxruntime release from PyPI (CPU, Python wheels):

- ONNX fp32 (opset 18, IR version 10, plain ONNX operators): 1.18.0 is the first that runs it
  (1.17.3 refuses to load the model); every release measured from 1.18.0 to 1.32 gives the same
  first-step argmax and largest logit.
- ONNX int4 / int8 (``MatMulNBits`` and an 8-bit ``GatherBlockQuantized`` embedding, com.microsoft
  domain): 1.23.0 is the first that runs it; 1.20.1, 1.21.1, 1.22.0 and 1.22.1 reject the
  8-bit ``GatherBlockQuantized`` ("This is an invalid model"). int8 was not run separately; it uses
  the same embedding op, so it gets the same minimum.
- ExecuTorch: the runtime release the program was lowered with (the ``.pte`` format and the
  XNNPACK delegate are only promised to load in the same or a newer runtime).
- Core ML: the deployment target the package was converted for (iOS 17 or 18; macOS 14 or 15).

One function per format, named by that format's entry (``FormatEntry.requirements``); the
manifest's requirements are :func:`runtime_requirements`, which dispatches through the entry.
"""

from __future__ import annotations

from typing import Any

from exporter.formats import FORMATS, get_format

ONNX_FP32_MIN = "1.18.0"
ONNX_QUANTIZED_MIN = "1.23.0"


def runtime_requirements(fmt: str, precision: str, details: dict[str, Any]) -> dict[str, str]:
    """``runtime_requirements`` of an ``fmt`` artifact at ``precision`` (``details``: its format_details);
    none for a format that is not registered."""
    if fmt not in FORMATS:
        return {}
    requirements: dict[str, str] = get_format(fmt).load("requirements")(precision, details)
    return requirements


def onnx_requirements(precision: str, details: dict[str, Any]) -> dict[str, str]:
    """``runtime_requirements`` of an ONNX artifact at ``precision``."""
    quantized = precision not in ("fp32", "fp16", "bf16")
    return {"onnxruntime": ONNX_QUANTIZED_MIN if quantized else ONNX_FP32_MIN}


def executorch_requirements(precision: str, details: dict[str, Any]) -> dict[str, str]:
    """``runtime_requirements`` of an ExecuTorch artifact (``details``: its format_details)."""
    return {"executorch": str(details.get("executorch_version", "")).split("+")[0]}


def coreml_requirements(precision: str, details: dict[str, Any]) -> dict[str, str]:
    """``runtime_requirements`` of a Core ML artifact (``details``: its format_details)."""
    target = str(details.get("deployment_target", ""))  # "iOS17" / "iOS18"
    return {"ios": target.removeprefix("iOS") or "18", "macos": {"iOS17": "14", "iOS18": "15"}.get(target, "15")}
