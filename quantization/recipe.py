"""Quantization recipes as data (after torchchat's ``quant_config/*.json``).

A recipe says, per weight class, how many bits and which granularity:
  linears      every nn.Linear in the blocks (MLP, recurrent in/out, attention q/k/v/o)
  embedding    the tied embedding / output head [vocab, width]
  rglru_gates  the block-diagonal RG-LRU gate weights [heads, l/h, l/h]
Conv1D, norms, biases and the RG-LRU ``recurrent_param`` always stay in float.
Per-format application lives in quantization/<format>.py; the maths in tensor.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from exporter.errors import RgMobileError

Granularity = Literal["per_channel", "per_group"]
RECIPE_NAMES = ("none", "int8", "int4")


@dataclass(frozen=True)
class WeightScheme:
    """Symmetric integer weights: per output channel, or per group of ``group_size`` inputs."""

    bits: int
    granularity: Granularity = "per_channel"
    group_size: int | None = None

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise RgMobileError(f"quantization: bits must be 4 or 8, got {self.bits}")
        if self.granularity not in ("per_channel", "per_group"):
            raise RgMobileError(f"quantization: unknown granularity {self.granularity!r}")
        if self.granularity == "per_group":
            if not self.group_size or self.group_size < 8 or self.group_size & (self.group_size - 1):
                raise RgMobileError(f"quantization: group size must be a power of two >= 8, got {self.group_size}")
        elif self.group_size is not None:
            raise RgMobileError("quantization: group_size only applies to per_group")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"bits": self.bits, "granularity": self.granularity}
        if self.group_size is not None:
            d["group_size"] = self.group_size
        return d


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    linears: WeightScheme | None
    embedding: WeightScheme | None
    rglru_gates: WeightScheme | None
    activations: str = "float"

    @property
    def is_quantized(self) -> bool:
        return any(s is not None for s in (self.linears, self.embedding, self.rglru_gates))

    def to_dict(self) -> dict[str, Any]:
        def enc(s: WeightScheme | None) -> dict[str, Any] | None:
            return None if s is None else s.to_dict()

        return {
            "name": self.name,
            "description": self.description,
            "linears": enc(self.linears),
            "embedding": enc(self.embedding),
            "rglru_gates": enc(self.rglru_gates),
            "activations": self.activations,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "recipe") -> Recipe:
        def dec(key: str) -> WeightScheme | None:
            v = data.get(key)
            if v is None:
                return None
            try:
                return WeightScheme(**v)
            except TypeError as exc:
                raise RgMobileError(f"{where}: {key}: {exc}") from None

        try:
            return cls(
                name=str(data["name"]),
                description=str(data.get("description", "")),
                linears=dec("linears"),
                embedding=dec("embedding"),
                rglru_gates=dec("rglru_gates"),
                activations=str(data.get("activations", "float")),
            )
        except KeyError as exc:
            raise RgMobileError(f"{where}: missing field {exc}") from None

    def with_options(self, group_size: int | None = None, embedding_bits: int | None = None) -> Recipe:
        """The recipe with a different int4 group size and/or embedding bit width."""
        r = self
        if group_size is not None and r.linears is not None and r.linears.granularity == "per_group":
            r = replace(r, linears=replace(r.linears, group_size=group_size))
        if embedding_bits is not None and r.embedding is not None:
            if embedding_bits == 4:
                gs = group_size or (r.linears.group_size if r.linears and r.linears.group_size else 32)
                r = replace(r, embedding=WeightScheme(4, "per_group", gs))
            else:
                r = replace(r, embedding=WeightScheme(embedding_bits, "per_channel"))
        changed = [f"{cls} {_describe(getattr(r, cls))}" for cls in ("linears", "embedding")
                   if getattr(r, cls) != getattr(self, cls)]  # fmt: skip
        if changed:  # the description (written into manifests) must not contradict the schemes
            r = replace(r, description=f"{r.description} [overridden: {'; '.join(changed)}]")
        return r


def _describe(scheme: WeightScheme | None) -> str:
    if scheme is None:
        return "float"
    return f"int{scheme.bits} " + (f"in groups of {scheme.group_size}" if scheme.group_size else "per channel")


def load_recipe(name_or_path: str) -> Recipe:
    """A built-in recipe by name (none, int8, int4) or a recipe JSON file."""
    if name_or_path in RECIPE_NAMES:
        text = resources.files("quantization").joinpath(f"recipes/{name_or_path}.json").read_text()
        where = f"recipe {name_or_path}"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise RgMobileError(f"unknown quantization {name_or_path!r}; valid: {list(RECIPE_NAMES)} or a recipe .json")
        text, where = path.read_text(), str(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RgMobileError(f"{where}: invalid JSON ({exc})") from None
    return Recipe.from_dict(data, where)
