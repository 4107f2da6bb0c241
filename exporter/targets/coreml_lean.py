"""Moved: coremltools' lean conversion lives in :mod:`exporter.upstream.coremltools_9_0`.

This name stays for the import in quantization/coreml.py; new code imports the upstream module.
"""

from exporter.upstream.coremltools_9_0 import lean_coremltools

__all__ = ["lean_coremltools"]
