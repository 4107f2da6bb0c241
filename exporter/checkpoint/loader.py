"""One entry point for every checkpoint: ``load_checkpoint(path)`` -> :class:`Checkpoint`.

A folder is read as Hugging Face (config.json + safetensors), or as a quantized checkpoint when
its config has a ``quantization_config`` (exporter/checkpoint/quantized.py), a ``.pt``/``.pth``/``.bin``
file as the official recurrentgemma state dict. Both end in the same strict
check (:func:`weight_map.check_state_dict`) and the same tokenizer check, so
every later stage can trust ``Checkpoint.model`` and ``Checkpoint.tokenizer_path``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from exporter.checkpoint.hf import CONFIG_NAME, load_hf_folder
from exporter.checkpoint.official import load_official
from exporter.checkpoint.weight_map import check_state_dict
from exporter.config import GriffinConfig
from exporter.errors import RgMobileError
from exporter.fsio import first_line
from exporter.model.griffin import Griffin

if TYPE_CHECKING:
    from quantization.qweights import GivenQuantization

log = logging.getLogger(__name__)

CheckpointKind = Literal["hf", "official"]
OFFICIAL_SUFFIXES = (".pt", ".pth", ".bin")
TOKENIZER_NAME = "tokenizer.model"
ACCEPTED = (
    "a Hugging Face folder (config.json + model.safetensors or a sharded index + tokenizer.model) "
    f"or an official recurrentgemma state dict file ({'/'.join(OFFICIAL_SUFFIXES)})"
)
# The small self-trained English model shipped inside the package (package-data bundled/*/*).
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "bundled" / "brown-small"


@dataclass(frozen=True)
class Checkpoint:
    """A loaded, checked checkpoint.

    Fields:
      config: the architecture the weights were checked against.
      model: :class:`Griffin` in eval mode holding the weights (in the requested dtype).
      tokenizer_path: a SentencePiece model whose vocab size equals ``config.vocab_size``.
      source: the path that was loaded.
      kind: "hf" (folder) or "official" (.pt state dict).
      quantization: for a quantized checkpoint, its recipe with the integers and scales
        (``model`` then holds their dequantized values: the quantized eager reference); else None.
    """

    config: GriffinConfig
    model: Griffin
    tokenizer_path: Path
    source: Path
    kind: CheckpointKind
    quantization: GivenQuantization | None = None


def check_tokenizer(path: Path, config: GriffinConfig) -> None:
    """``path`` must be a SentencePiece model with exactly ``config.vocab_size`` pieces.

    RecurrentGemma's tokenizer has as many pieces as embedding rows (256000); a
    different count means tokenizer and weights do not belong together.
    """
    import sentencepiece as spm

    if not path.is_file():
        raise RgMobileError(f"{path}: missing tokenizer.model; pass --tokenizer or put it next to the weights")
    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError, UnicodeDecodeError) as exc:  # a corrupt piece is not UTF-8
        raise RgMobileError(f"{path}: not a valid SentencePiece model ({first_line(exc)})") from None
    pieces = sp.get_piece_size()
    if pieces != config.vocab_size:
        raise RgMobileError(
            f"{path}: tokenizer vocab size {pieces} != model vocab_size {config.vocab_size}; "
            "they must be equal (RecurrentGemma: 256000): use the tokenizer these weights were trained with"
        )


def build_model(config: GriffinConfig, state: dict[str, torch.Tensor], source: str) -> Griffin:
    """A Griffin holding ``state`` after the strict name/shape check.

    The skeleton is built on the meta device (no random init, no memory: a 2B
    model would otherwise hold two copies of its weights at peak) and
    ``assign=True`` makes the parameters *be* the loaded tensors.
    """
    check_state_dict(config, state, source)
    with torch.device("meta"):
        model = Griffin(config)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def checkpoint_kind(path: Path) -> tuple[CheckpointKind, Path]:
    """(kind, default tokenizer path) of a checkpoint path: an HF folder ("hf") or an official
    state dict file ("official"); a missing or other path is one clear error."""
    if not path.exists():
        raise RgMobileError(f"{path}: checkpoint path does not exist; expected {ACCEPTED}")
    if path.is_dir():
        return "hf", path / TOKENIZER_NAME
    if path.is_file() and path.suffix.lower() in OFFICIAL_SUFFIXES:
        return "official", path.parent / TOKENIZER_NAME
    hint = " (for a .safetensors file, pass the folder that holds it)" if path.suffix == ".safetensors" else ""
    raise RgMobileError(f"{path}: not an accepted checkpoint{hint}; expected {ACCEPTED}")


def load_checkpoint(path: Path, dtype: torch.dtype = torch.float32, tokenizer: Path | None = None) -> Checkpoint:
    """Load an HF folder or an official ``.pt`` into a checked :class:`Checkpoint`."""
    path = Path(path)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise RgMobileError(f"dtype {dtype!r} is not a floating-point torch dtype (use float32, bfloat16, float16)")
    kind, default_tok = checkpoint_kind(path)
    given: GivenQuantization | None = None
    if kind == "hf":
        from exporter.checkpoint.quantized import is_quantized_folder, read_quantized_checkpoint

        if is_quantized_folder(path):  # written by `rgmobile quantize` (docs/quantized-checkpoint.md)
            folder = read_quantized_checkpoint(path, dtype)
            config, state, given = folder.config, folder.state, folder.quantization
        else:
            config, state = load_hf_folder(path, dtype)
    else:
        config, state = load_official(path, dtype)
    tok = Path(tokenizer) if tokenizer is not None else default_tok
    model = build_model(config, state, str(path))
    check_tokenizer(tok, config)
    log.info("loaded %s checkpoint %s: %d layers, width %d, %s", kind, path, config.num_layers, config.width, dtype)
    return Checkpoint(config=config, model=model, tokenizer_path=tok, source=path, kind=kind, quantization=given)


def default_checkpoint() -> Path:
    """The bundled model folder; a clear error while it has not been trained/installed yet."""
    if not (BUNDLED_DIR / CONFIG_NAME).is_file():
        raise RgMobileError(
            f"the bundled model is not available at {BUNDLED_DIR} (not trained or not installed yet); "
            "pass a checkpoint path instead"
        )
    return BUNDLED_DIR
