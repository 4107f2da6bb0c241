"""The formats: one :class:`FormatEntry` per format, one registry (``FORMATS``) listing them.

A foundation module (it imports only exporter.registry and exporter.errors), so that anything may
ask which formats exist without importing numpy, torch or a format's toolchain.

Each format declares everything format-neutral code needs to know about it in one light module
of its own column (``exporter/targets/<name>_entry.py``, attribute ``ENTRY``): the
``"module:attribute"`` strings of its export function, artifact backend factory, integers
read-back, recipe check and runtime requirements, and the phone bundles that may carry it.
An entry imports nothing heavy; the strings are imported only when used (exporter/registry.py),
so a missing optional toolchain (executorch, coremltools) fails only for that format, and this
module imports no format column (the entries are strings here too).

Everything that lists formats derives from ``FORMATS``: the export targets
(:func:`exporter.targets.get_target`), the artifact backends (:mod:`runtime_py.open`), the
integers read-back (:mod:`runtime_py.validate_integers`), the recipe checks and the quantized
formats (:mod:`rgmobile.export`), the manifest's runtime requirements, the CLI's ``--format`` help
and the bundle targets (:mod:`rgmobile.package.bundle`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from exporter.registry import check_entry, load_entry, resolve

# name -> "module:ENTRY", in the order the CLI lists them. No auto-discovery: a format exists
# when it is listed here.
FORMATS: dict[str, str] = {
    "onnx": "exporter.targets.onnx_entry:ENTRY",
    "executorch": "exporter.targets.executorch_entry:ENTRY",
    "coreml": "exporter.targets.coreml_entry:ENTRY",
}


@dataclass(frozen=True)
class FormatEntry:
    """One format, as format-neutral code sees it. Every ``"module:attribute"`` string is
    imported only when used.

    Fields:
      name: the format (``--format``, the manifest's ``format``); its key in ``FORMATS``.
      export: the export function, ``export(model, out_dir, options, source, given) -> TargetResult``
        (exporter/targets/__init__.py says what it does).
      backend: the artifact backend factory, ``open_artifact(artifact_dir, manifest, threads) -> Backend``.
      readback: the integers read-back, ``read_shipped(artifact, manifest, model) -> [(file, Shipped)]``
        (a quantized checkpoint's integers, checked in the artifact by validate).
      requirements: the manifest's ``runtime_requirements``, ``f(precision, format_details) -> dict``.
      check_recipe: ``f(recipe, ios)`` that refuses, in one line, a quantization recipe the format
        cannot hold; None when the format applies no ``--quant`` recipe (it would export fp32).
      bundle_targets: the phone bundles (``rgmobile package --target``) that may carry the format,
        target -> its place in that app's list of formats (0 first; the order messages name them).
      spin_control: the backend factory takes ``spin=False`` (its runtime's idle threads then block
        at once instead of spin-waiting for the next piece of work).
    """

    name: str
    export: str
    backend: str
    readback: str
    requirements: str
    check_recipe: str | None = None
    bundle_targets: dict[str, int] = field(default_factory=dict)
    spin_control: bool = False

    def strings(self) -> dict[str, str]:
        """The ``"module:attribute"`` strings of the entry, by field name."""
        names = ("export", "backend", "readback", "requirements", "check_recipe")
        return {n: s for n in names if (s := getattr(self, n)) is not None}

    def load(self, what: str) -> Any:
        """The callable field ``what`` (e.g. "backend") names, its module imported now."""
        spec = getattr(self, what)
        if spec is None:
            raise ValueError(f"format {self.name!r} has no {what}")
        return resolve(spec)


def format_names() -> list[str]:
    """The formats, in registry order."""
    return list(FORMATS)


def check_format(name: str, unknown: str, valid: str = "valid") -> None:
    """An unknown format fails with ``unknown`` and, after ``valid``, the valid names."""
    check_entry(FORMATS, name, unknown, valid)


def get_format(name: str, unknown: str | None = None, valid: str = "valid formats") -> FormatEntry:
    """The entry of format ``name``; an unknown name fails with ``unknown`` (by default
    "unknown export format 'x'") and the valid choices."""
    message = unknown if unknown is not None else f"unknown export format {name!r}"
    entry: FormatEntry = load_entry(FORMATS, name, message, valid)
    return entry


def entries() -> list[FormatEntry]:
    """Every format's entry, in registry order (imports only the light entry modules)."""
    return [get_format(name) for name in FORMATS]


def quant_formats() -> tuple[str, ...]:
    """The formats that apply a ``--quant`` recipe."""
    return tuple(e.name for e in entries() if e.check_recipe is not None)


def bundle_targets() -> dict[str, tuple[str, ...]]:
    """Bundle target ("android", "ios") -> the formats its app runs, in the order the entries give."""
    places: dict[str, list[tuple[int, str]]] = {}
    for e in entries():
        for target, place in e.bundle_targets.items():
            places.setdefault(target, []).append((place, e.name))
    return {target: tuple(name for _, name in sorted(found)) for target, found in places.items()}
