"""Train a Gemma-style SentencePiece tokenizer: BPE with byte fallback, pad/eos/bos/unk = 0/1/2/3.

The options mirror Gemma's ``tokenizer.model`` (normalizer ``identity``, no
dummy prefix, whitespace kept, digits split, unknown characters as bytes), so
the bundled model goes through exactly the code paths a real RecurrentGemma
tokenizer does. Training is single-threaded on the whole input: deterministic.
"""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import sentencepiece as spm

from exporter.errors import RgMobileError
from exporter.fsio import atomic_file

log = logging.getLogger(__name__)

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3


def train_tokenizer(text: str, out_path: Path, vocab_size: int = 4096) -> Path:
    """Train on ``text`` (one paragraph per line is what SentencePiece reads) and write ``out_path``."""
    lines = [p for p in text.splitlines() if p.strip()]
    if not lines:
        raise RgMobileError("tokenizer: the training text is empty")
    model = io.BytesIO()
    # An iterator, not a file: the trainer would record the (temporary) input path in the model.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        pad_id=PAD_ID, eos_id=EOS_ID, bos_id=BOS_ID, unk_id=UNK_ID,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        character_coverage=0.9999,
        max_sentence_length=1 << 16,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        num_threads=1,
        minloglevel=2,
    )  # fmt: skip
    with atomic_file(Path(out_path)) as tmp_path:
        tmp_path.write_bytes(model.getvalue())
    log.info("tokenizer: %d pieces written to %s", vocab_size, out_path)
    return Path(out_path)


def load_tokenizer(path: Path) -> spm.SentencePieceProcessor:
    """Load a ``tokenizer.model``; a missing or corrupt file raises :class:`RgMobileError`."""
    path = Path(path)
    if not path.is_file():
        raise RgMobileError(f"tokenizer: {path} does not exist")
    sp = spm.SentencePieceProcessor()
    try:
        sp.Load(str(path))
    except (OSError, RuntimeError) as exc:
        raise RgMobileError(f"tokenizer: cannot load {path}: {exc}") from None
    return sp


def copy_tokenizer(src: Path, dst: Path) -> None:
    """Copy a tokenizer file atomically."""
    with atomic_file(Path(dst)) as tmp:
        shutil.copyfile(src, tmp)
