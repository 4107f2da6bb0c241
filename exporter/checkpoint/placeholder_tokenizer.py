"""A placeholder SentencePiece model for artifacts exported from random weights.

Every artifact ships a ``tokenizer.model`` whose piece count equals the model's
vocab (the manifest, the runtimes and the demo apps rely on it). A random-init
export (``rgmobile export --random-init 2b``, for benchmarks) has no trained
tokenizer, so we write one directly as a SentencePiece ``ModelProto`` instead
of training one: building 256,000 pieces takes about a second, needs no
corpus and is byte-for-byte deterministic.

Layout (Gemma's special ids): 0 ``<pad>``, 1 ``</s>``, 2 ``<s>``, 3 ``<unk>``,
then ``▁`` (space), then either all 256 ``<0xNN>`` byte pieces with byte
fallback (vocab >= 261: any text round-trips) or, for test-sized vocabularies,
as many printable ASCII characters as fit (others become ``<unk>``). The rest
are ``<unused{k}>`` pieces of type UNUSED, which encoding never produces
(Gemma's own tokenizer reserves ``<unused*>`` pieces the same way).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from exporter.config import GriffinConfig
from exporter.errors import RgMobileError
from exporter.fsio import atomic_file

SPACE = "\u2581"  # SentencePiece's escaped whitespace
_SPECIALS = (("<pad>", "pad_id"), ("</s>", "eos_id"), ("<s>", "bos_id"))


def placeholder_pieces(vocab_size: int) -> tuple[list[str], bool]:
    """(piece strings after the 4 specials, byte_fallback) for ``vocab_size``."""
    room = vocab_size - 4
    if room < 1:
        raise RgMobileError(f"placeholder tokenizer: vocab_size {vocab_size} is too small (need at least 5)")
    if room >= 1 + 256:
        pieces = [SPACE] + [f"<0x{b:02X}>" for b in range(256)]
        byte_fallback = True
    else:
        chars = [c for c in string.printable if c.isprintable() and c != " "]
        pieces = ([SPACE] + chars)[:room]
        byte_fallback = False
    pieces += [f"<unused{k}>" for k in range(room - len(pieces))]
    return pieces, byte_fallback


def write_placeholder_tokenizer(path: Path, config: GriffinConfig) -> Path:
    """Write a ``config.vocab_size``-piece SentencePiece model to ``path`` (atomically)."""
    from sentencepiece import sentencepiece_model_pb2 as _pb

    pb: Any = _pb  # generated protobuf module: no type stubs

    wanted = {"pad_id": 0, "eos_id": 1, "bos_id": 2}
    got = {k: getattr(config, k) for k in wanted}
    if got != wanted:
        raise RgMobileError(
            f"placeholder tokenizer: special ids {got} differ from Gemma's {wanted}; pass --tokenizer instead"
        )
    kind = pb.ModelProto.SentencePiece.Type
    model = pb.ModelProto()
    for piece, _ in _SPECIALS:
        model.pieces.add(piece=piece, score=0.0, type=kind.CONTROL)
    model.pieces.add(piece="<unk>", score=0.0, type=kind.UNKNOWN)
    pieces, byte_fallback = placeholder_pieces(config.vocab_size)
    for i, piece in enumerate(pieces):
        if piece.startswith("<unused"):
            model.pieces.add(piece=piece, score=0.0, type=kind.UNUSED)
        elif piece.startswith("<0x"):
            model.pieces.add(piece=piece, score=0.0, type=kind.BYTE)
        else:
            model.pieces.add(piece=piece, score=-float(i), type=kind.NORMAL)
    spec = model.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.vocab_size = config.vocab_size
    spec.byte_fallback = byte_fallback
    spec.pad_id, spec.eos_id, spec.bos_id, spec.unk_id = 0, 1, 2, 3
    spec.model_prefix = "rgmobile-placeholder"
    norm = model.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = False
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    with atomic_file(Path(path)) as tmp:
        tmp.write_bytes(model.SerializeToString())
    return Path(path)
