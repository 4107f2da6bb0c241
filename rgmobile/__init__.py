"""The CLI and the export pipeline: checkpoint -> target -> quantize -> artifact, and bundles.

The top of the import layers (docs/architecture.md): nothing in exporter/, quantization/ or
runtime_py/ imports it.
"""
