"""Keep upstream chatter off a user's terminal unless they ask for it (``--verbose``).

An export imports torch, onnxscript, ExecuTorch, torchao and coremltools, and each
announces things that say nothing about the user's model: optional packages that are
not installed (torchvision), deprecations inside torch's pytree registry, coremltools'
"this torch version has not been tested" and its missing macOS-only proxies. Our own
progress and results are logged by ``exporter.*`` / ``runtime_py.*`` / ``quantization.*``
and printed by the CLI; those are not touched.
"""

from __future__ import annotations

import logging
import os
import warnings

# Loggers of the upstream packages we import; raised to ERROR when not verbose.
UPSTREAM_LOGGERS = ("torch", "coremltools", "executorch", "torchao", "onnxscript", "onnx_ir", "transformers")
# Python warnings from these packages are hidden when not verbose (ours are never filtered).
_UPSTREAM_WARNINGS = r"(torch|coremltools|executorch|torchao|onnxscript|onnx_ir|onnx|transformers|sklearn)(\.|$)"


def quiet_upstream() -> None:
    """Silence upstream logging and warnings; call before the upstream packages are imported.

    torch configures its loggers from ``TORCH_LOGS`` when it is imported (and resets their
    levels), so the environment variable is how its import-time warnings are silenced.
    """
    os.environ.setdefault("TORCH_LOGS", "-all")
    for name in UPSTREAM_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=_UPSTREAM_WARNINGS)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
