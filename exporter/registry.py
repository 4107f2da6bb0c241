"""Explicit registries of lazily imported entries (the formats of exporter/formats.py).

A registry is a plain dict ``name -> "module:attribute"``; the module is imported only
when its entry is used, so a missing optional toolchain (executorch, coremltools)
fails only for that entry. No auto-discovery: an entry exists when it is listed.
"""

from __future__ import annotations

import importlib
from typing import Any

from exporter.errors import RgMobileError


def check_entry(registry: dict[str, str], name: str, unknown: str, valid: str = "valid") -> None:
    """An unknown ``name`` fails with ``unknown`` (e.g. "unknown export format 'x'") and, after
    ``valid``, the valid names."""
    if name not in registry:
        raise RgMobileError(f"{unknown}; {valid}: {sorted(registry)}")


def resolve(spec: str) -> Any:
    """The attribute a ``"module:attribute"`` string names, its module imported now."""
    module, attribute = spec.split(":")
    return getattr(importlib.import_module(module), attribute)


def load_entry(registry: dict[str, str], name: str, unknown: str, valid: str = "valid") -> Any:
    """The attribute ``registry[name]`` names, its module imported now; an unknown name fails as in
    :func:`check_entry`."""
    check_entry(registry, name, unknown, valid)
    return resolve(registry[name])
