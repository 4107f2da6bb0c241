"""The quantized checkpoint: a Hugging Face-like folder holding one set of integers and scales.

Layout (docs/quantized-checkpoint.md)::

  config.json          the HF config plus "quantization_config": {"quant_method": "rgmobile",
                       "format_version": 1, "recipe": Recipe.to_dict(), "method": "rtn" | "gptq",
                       "calibration": {...} or null}
  model.safetensors    float parameters under their HF names (float32), and for each parameter
                       the recipe quantizes, ``<hf name>.qweight`` and ``<hf name>.scales``
  tokenizer.model
  quality_report.json  written by ``rgmobile quantize`` (not read back)

``.qweight`` holds :class:`quantization.qweights.QuantizedTensor` ``q`` in its layout (2-D
[out, in]; RG-LRU gates [h, out, in]): 8-bit values as int8; 4-bit values packed two per byte
as uint8, value + 8, the even column in the low nibble (last dimension halved). ``.scales`` is
the float32 ``scale``. Which parameters are quantized follows from the recipe
(:func:`quantization.qweights.schemes_by_param`), so the reader demands exactly those.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from exporter.checkpoint.hf import CONFIG_NAME, SINGLE_NAME, read_raw_safetensors
from exporter.checkpoint.hf_config import config_from_hf, config_to_hf
from exporter.checkpoint.weight_map import HF_PREFIX, expected_shapes
from exporter.config import GriffinConfig
from exporter.errors import RgMobileError
from exporter.fsio import atomic_dir, read_json
from exporter.model.griffin import Griffin
from quantization.qweights import GivenQuantization, QuantizedTensor, QuantizedWeights, schemes_by_param
from quantization.recipe import Recipe, WeightScheme

QUANT_METHOD = "rgmobile"
FORMAT_VERSION = 1
METHODS = ("rtn", "gptq")
QWEIGHT, SCALES = ".qweight", ".scales"
REPORT_NAME = "quality_report.json"
TOKENIZER_NAME = "tokenizer.model"


# --- int4 packing ----------------------------------------------------------------------
def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int8 values in [-8, 7], last dim n (even) -> uint8 [..., n / 2]: (v + 8), even column low nibble."""
    if q.shape[-1] % 2:
        raise RgMobileError(f"quantized checkpoint: cannot pack 4-bit values with an odd last dimension {q.shape[-1]}")
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: uint8 [..., m] -> int8 [..., 2m] in [-8, 7]."""
    lo = (packed & 0x0F).to(torch.int8) - 8
    hi = (packed >> 4).to(torch.int8) - 8
    return torch.stack([lo, hi], dim=-1).reshape(*packed.shape[:-1], 2 * packed.shape[-1])


def stored_q(qt: QuantizedTensor) -> torch.Tensor:
    """The ``.qweight`` tensor of one quantized parameter."""
    return pack_int4(qt.q) if qt.scheme.bits == 4 else qt.q


# --- the config entry --------------------------------------------------------------------
@dataclass(frozen=True)
class QuantizationConfig:
    """``config.json["quantization_config"]`` of a quantized checkpoint.

    Fields:
      recipe: the recipe the integers follow.
      method: how they were chosen, "rtn" (round to nearest) or "gptq" (calibrated).
      calibration: for calibrated methods, which text and how many tokens; else None.
      format_version: layout version; a reader refuses versions newer than it knows.
    """

    recipe: Recipe
    method: str = "rtn"
    calibration: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise RgMobileError(f"quantization method must be one of {list(METHODS)}, got {self.method!r}")
        if not self.recipe.is_quantized:
            raise RgMobileError(f"recipe {self.recipe.name!r} quantizes nothing: not a quantized checkpoint")

    def to_dict(self) -> dict[str, Any]:
        return {
            "quant_method": QUANT_METHOD,
            "format_version": self.format_version,
            "recipe": self.recipe.to_dict(),
            "method": self.method,
            "calibration": self.calibration,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str) -> QuantizationConfig:
        if not isinstance(data, dict):
            raise RgMobileError(f"{where}: quantization_config must be an object")
        if data.get("quant_method") != QUANT_METHOD:
            raise RgMobileError(
                f"{where}: quantization_config.quant_method {data.get('quant_method')!r} is not supported "
                f"(only {QUANT_METHOD!r}, written by rgmobile quantize); start from the float checkpoint"
            )
        version = data.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise RgMobileError(f"{where}: quantization_config.format_version must be a positive integer")
        if version > FORMAT_VERSION:
            raise RgMobileError(
                f"{where}: quantized checkpoint format_version {version} is newer than this rgmobile reads "
                f"({FORMAT_VERSION}); upgrade rgmobile"
            )
        recipe_data = data.get("recipe")
        if not isinstance(recipe_data, dict):
            raise RgMobileError(f"{where}: quantization_config.recipe must be an object")
        calibration = data.get("calibration")
        if calibration is not None and not isinstance(calibration, dict):
            raise RgMobileError(f"{where}: quantization_config.calibration must be an object or null")
        return cls(
            recipe=Recipe.from_dict(recipe_data, f"{where}: quantization_config.recipe"),
            method=str(data.get("method", "")),
            calibration=calibration,
            format_version=version,
        )


def is_quantized_folder(folder: Path) -> bool:
    """True when ``folder/config.json`` has a ``quantization_config`` (of any kind: the reader judges it)."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        return False
    try:
        return "quantization_config" in json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError):
        return False  # the ordinary HF reader reports a broken config


# --- writing -------------------------------------------------------------------------------
def checkpoint_tensors(model: Griffin, weights: QuantizedWeights) -> dict[str, torch.Tensor]:
    """model.safetensors' contents: float parameters (float32) and each quantized one's qweight + scales."""
    out: dict[str, torch.Tensor] = {}
    for name, p in model.state_dict().items():
        hf = HF_PREFIX + name
        qt = weights.get(name)
        if qt is None:
            out[hf] = p.detach().float().contiguous()
        else:
            out[hf + QWEIGHT] = stored_q(qt).contiguous()
            out[hf + SCALES] = qt.scale.contiguous()
    return out


def write_quantized_checkpoint(
    out_dir: Path,
    model: Griffin,
    qconfig: QuantizationConfig,
    weights: QuantizedWeights,
    tokenizer: Path,
    report: dict[str, Any] | None = None,
    extra_text: dict[str, str] | None = None,
    check_replace: Callable[[Path], None] | None = None,
) -> int:
    """Write the folder atomically; returns the bytes of model.safetensors.

    ``report`` is written as quality_report.json after its ``size`` gains ``checkpoint_bytes``
    (the safetensors file, known only once written); ``extra_text``: file name -> text to add;
    ``check_replace`` runs just before an existing ``out_dir`` is replaced and raises to refuse.
    """
    tensors = checkpoint_tensors(model, weights)
    with atomic_dir(Path(out_dir), check_replace=check_replace) as tmp:
        hf = config_to_hf(model.config)
        hf["quantization_config"] = qconfig.to_dict()
        (tmp / CONFIG_NAME).write_text(json.dumps(hf, indent=2) + "\n")
        save_file(tensors, str(tmp / SINGLE_NAME), metadata={"format": "pt", "quant_method": QUANT_METHOD})
        mask = os.umask(0)
        os.umask(mask)
        (tmp / SINGLE_NAME).chmod(0o666 & ~mask)  # safetensors writes owner-only; a checkpoint is meant to be shared
        size = (tmp / SINGLE_NAME).stat().st_size
        shutil.copyfile(tokenizer, tmp / TOKENIZER_NAME)
        for name, text in (extra_text or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        if report is not None:
            report.setdefault("size", {})["checkpoint_bytes"] = size
            fp32 = report["size"].get("fp32_bytes")
            if fp32:
                report["size"]["ratio"] = size / fp32
            (tmp / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    return size


# --- reading -------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuantizedFolder:
    """What :func:`read_quantized_checkpoint` returns: config, float state (our names), integers."""

    config: GriffinConfig
    state: dict[str, torch.Tensor]  # float parameters + dequantized quantized ones, in ``dtype``
    quantization: GivenQuantization
    qconfig: QuantizationConfig


def _expected_q_shape(shape: tuple[int, ...], block_diagonal: bool) -> tuple[int, ...]:
    """``QuantizedTensor.q`` shape of a parameter of ``shape`` (gates are held per head transposed)."""
    return (shape[0], shape[2], shape[1]) if block_diagonal else shape


def _decode(
    hf: str, qraw: torch.Tensor, sraw: torch.Tensor, scheme: WeightScheme, shape: tuple[int, ...], bd: bool, where: str
) -> QuantizedTensor:
    want_q = _expected_q_shape(shape, bd)
    if scheme.bits == 4:
        if qraw.dtype != torch.uint8:
            raise RgMobileError(f"{where}: {hf}{QWEIGHT} must be uint8 (4-bit pairs packed per byte), got {qraw.dtype}")
        stored = (*want_q[:-1], want_q[-1] // 2)
    else:
        if qraw.dtype != torch.int8:
            raise RgMobileError(f"{where}: {hf}{QWEIGHT} must be int8 (8-bit values), got {qraw.dtype}")
        stored = want_q
    if tuple(qraw.shape) != stored:
        raise RgMobileError(f"{where}: {hf}{QWEIGHT} has shape {tuple(qraw.shape)}, the config needs {stored}")
    if sraw.dtype != torch.float32:
        raise RgMobileError(f"{where}: {hf}{SCALES} must be float32, got {sraw.dtype}")
    if sraw.numel() and not (bool(torch.isfinite(sraw).all()) and float(sraw.min()) > 0):
        raise RgMobileError(f"{where}: {hf}{SCALES} holds zero, negative or non-finite scales")
    q = unpack_int4(qraw) if scheme.bits == 4 else qraw
    try:
        return QuantizedTensor(q.contiguous(), sraw.contiguous(), scheme, block_diagonal=bd)
    except RgMobileError as exc:
        raise RgMobileError(f"{where}: {hf}: {exc}") from None


def read_quantized_checkpoint(folder: Path, dtype: torch.dtype = torch.float32) -> QuantizedFolder:
    """Read and check a quantized folder; every problem is one clear error naming the tensor."""
    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    hf_config = read_json(config_path)
    qconfig = QuantizationConfig.from_dict(hf_config.get("quantization_config"), str(config_path))
    config = config_from_hf(hf_config, source=str(config_path))
    config.check_memory(dtype_bytes=torch.empty((), dtype=dtype).element_size(), what=str(config_path))
    where = str(folder / SINGLE_NAME)
    if not (folder / SINGLE_NAME).is_file():
        raise RgMobileError(f"{folder}: a quantized checkpoint needs {SINGLE_NAME} (it is never sharded)")
    raw = read_raw_safetensors(folder / SINGLE_NAME)
    with torch.device("meta"):
        skeleton = Griffin(config)
    schemes = schemes_by_param(skeleton, qconfig.recipe)
    shapes = expected_shapes(config)
    quantized_hf = {HF_PREFIX + n for n in schemes}
    for name in raw:
        base = name.removesuffix(QWEIGHT).removesuffix(SCALES)
        if base != name and base not in quantized_hf:
            raise RgMobileError(
                f"{where}: unexpected tensor {name}: recipe {qconfig.recipe.name} does not quantize {base}"
            )
        if base == name and name in quantized_hf:
            raise RgMobileError(f"{where}: {name} is stored in float, but recipe {qconfig.recipe.name} quantizes it")
    weights: QuantizedWeights = {}
    for ours, (scheme, bd) in schemes.items():
        hf = HF_PREFIX + ours
        missing = [hf + s for s in (QWEIGHT, SCALES) if hf + s not in raw]
        if missing:
            raise RgMobileError(f"{where}: missing tensor {missing[0]} (recipe {qconfig.recipe.name} quantizes {hf})")
        weights[ours] = _decode(hf, raw.pop(hf + QWEIGHT), raw.pop(hf + SCALES), scheme, shapes[ours], bd, where)
    state: dict[str, torch.Tensor] = {}
    for name, t in raw.items():
        if not t.is_floating_point():
            raise RgMobileError(f"{where}: tensor {name} has dtype {t.dtype}; float parameters must be floating point")
        state[name.removeprefix(HF_PREFIX)] = t.to(dtype)
    for ours, qt in weights.items():
        state[ours] = qt.dequantize().to(dtype)
    given = GivenQuantization(qconfig.recipe, weights, qconfig.method)
    return QuantizedFolder(config=config, state=state, quantization=given, qconfig=qconfig)


def quantized_bytes(folder: Path) -> int:
    """Size of a quantized checkpoint's weights file."""
    return (Path(folder) / SINGLE_NAME).stat().st_size


def weight_sqnr(model: Griffin, weights: QuantizedWeights) -> dict[str, Any]:
    """Weight SQNR in dB of the quantized parameters: over all of them, and the worst one."""
    params = dict(model.named_parameters())
    signal = noise = 0.0
    worst_name, worst = "", math.inf
    for name, qt in weights.items():
        w = params[name].detach().double()
        d = w - qt.dequantize().double()
        s, n = float(w.pow(2).sum()), float(d.pow(2).sum())
        signal, noise = signal + s, noise + n
        db = 10 * math.log10(s / n) if n > 0 else math.inf
        if db < worst:
            worst_name, worst = name, db
    total = 10 * math.log10(signal / noise) if noise > 0 else math.inf
    return {"all_db": total, "min_db": worst, "min_param": worst_name, "params": len(weights)}
