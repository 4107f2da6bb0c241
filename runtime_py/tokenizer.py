"""SentencePiece tokenizer (Gemma layout: pad 0, eos 1, bos 2)."""

from __future__ import annotations

from pathlib import Path

import sentencepiece as spm

from exporter.errors import RgMobileError


class Tokenizer:
    def __init__(self, path: Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise RgMobileError(f"tokenizer: {path} not found (expected a SentencePiece tokenizer.model)")
        self.path = path
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(path))
        except (OSError, RuntimeError, UnicodeDecodeError) as exc:  # a corrupt piece is not UTF-8
            raise RgMobileError(f"tokenizer: {path} is not a valid SentencePiece model ({exc})") from None

    @property
    def vocab_size(self) -> int:
        return int(self.sp.GetPieceSize())

    @property
    def bos_id(self) -> int:
        return int(self.sp.bos_id())

    @property
    def eos_id(self) -> int:
        return int(self.sp.eos_id())

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # bytes that were not UTF-8 (argv) arrive as lone surrogates
            raise RgMobileError("the text to encode is not valid UTF-8 (pass UTF-8 text)") from None
        ids = list(self.sp.EncodeAsIds(text))
        return [self.bos_id, *ids] if add_bos and self.bos_id >= 0 else ids

    def decode(self, ids: list[int]) -> str:
        return str(self.sp.DecodeIds([int(i) for i in ids]))
