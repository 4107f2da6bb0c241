"""onnxruntime-genai files of an ONNX artifact: ``genai_config.json``, ``tokenizer.json``, ``tokenizer_config.json``.

onnxruntime-genai (0.18) runs our ONNX export as its model type ``decoder``: it finds the
recurrent state inputs ``past_key_values.{i}.conv_state|recurrent_state`` and outputs
``present.{i}.…`` by name, and passes the fixed-size KV ring through (past and present share
one buffer, ``past_present_share_buffer``). Its ``decoder-pipeline`` form (``prefill.onnx``
for the first append, then ``decode.onnx``) also runs our graphs.

We write the plain ``decoder`` form over ``decode.onnx`` (t = 1) with ``search.chunk_size: 1``:
onnxruntime-genai then feeds a multi-token prompt one token at a time, which is exact
(the same maths as our t = 1 steps), and every app that already runs a ``decoder`` model
opens it unchanged.

onnxruntime-genai does not read SentencePiece ``tokenizer.model``; it reads the Hugging Face
``tokenizer.json``. It is made by transformers' Gemma converter from our ``tokenizer.model``
(a byte-fallback BPE model) and checked against sentencepiece on the golden strings
(exporter/artifact/tokenizer_strings.py) before it is written; a tokenizer the converter cannot
reproduce gets no onnxruntime-genai files at all. BOS is not added by onnxruntime-genai's
encoder: an app prepends ``bos_token_id`` itself (docs/bundle.md).
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from exporter.config import GriffinConfig
from exporter.fsio import write_json

log = logging.getLogger(__name__)

GENAI_CONFIG = "genai_config.json"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
GENAI_FILES = (GENAI_CONFIG, TOKENIZER_JSON, TOKENIZER_CONFIG)
# onnxruntime-genai's total-length budget; the state does not grow, so any length runs.
DEFAULT_MAX_LENGTH = 8192


def genai_config(
    config: GriffinConfig, decode_file: str = "decode.onnx", max_length: int = DEFAULT_MAX_LENGTH
) -> dict[str, Any]:
    """The ``genai_config.json`` of a ``decoder`` model over the t = 1 graph."""
    head_dim = config.width // config.num_heads
    return {
        "model": {
            "type": "decoder",
            "bos_token_id": config.bos_id,
            "eos_token_id": config.eos_id,
            "pad_token_id": config.pad_id,
            "vocab_size": config.vocab_size,
            "context_length": max_length,
            "decoder": {
                "filename": decode_file,
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "head_size": head_dim,
                "hidden_size": config.width,
                "num_attention_heads": config.num_heads,
                "num_key_value_heads": config.num_kv_heads,
                "num_hidden_layers": config.num_layers,
                "inputs": {
                    "input_ids": "input_ids",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
            },
        },
        "search": {
            "chunk_size": 1,
            "do_sample": False,
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": max_length,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": True,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }


def tokenizer_json(tokenizer_model: Path, dest: Path) -> None:
    """Write the Hugging Face ``tokenizer.json`` of a SentencePiece ``tokenizer.model`` (Gemma layout)."""
    import sentencepiece as spm
    from transformers.convert_slow_tokenizer import GemmaConverter, GemmaSentencePieceExtractor

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))

    class _Extractor(GemmaSentencePieceExtractor):  # type: ignore[misc]
        # transformers 5.x: the Gemma extractor reads ``self.sp``, which the base class no longer sets
        def __init__(self, model: str) -> None:
            super().__init__(model)
            self.sp = spm.SentencePieceProcessor(model_file=model)

    class _Converter(GemmaConverter):  # type: ignore[misc]
        SpmExtractor = _Extractor

    original = SimpleNamespace(
        vocab_file=str(tokenizer_model), add_prefix_space=None, legacy=True,
        pad_token=sp.id_to_piece(0), eos_token=sp.id_to_piece(1), bos_token=sp.id_to_piece(2),
    )  # fmt: skip
    _Converter(original).converted().save(str(dest))


def tokenizer_config(config: GriffinConfig, tokenizer_model: Path) -> dict[str, Any]:
    """``tokenizer_config.json``: the special tokens, no BOS added by the encoder."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    return {
        "tokenizer_class": "GemmaTokenizer",
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": sp.id_to_piece(config.bos_id),
        "eos_token": sp.id_to_piece(config.eos_id),
        "pad_token": sp.id_to_piece(config.pad_id),
        "unk_token": sp.id_to_piece(sp.unk_id()),
        "clean_up_tokenization_spaces": False,
        "model_max_length": DEFAULT_MAX_LENGTH,
    }


def tokenizer_json_mismatches(tokenizer_model: Path, tokenizer_file: Path) -> list[str]:
    """Golden strings (exporter/artifact/tokenizer_strings.py) on which ``tokenizer.json`` and sentencepiece differ."""
    import sentencepiece as spm
    from tokenizers import Tokenizer as HFTokenizer

    from exporter.artifact.tokenizer_strings import tokenizer_strings

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    hf = HFTokenizer.from_file(str(tokenizer_file))
    bad = []
    for text in tokenizer_strings():
        ids = list(sp.encode(text))
        if hf.encode(text, add_special_tokens=False).ids != ids or hf.decode(ids) != sp.decode(ids):
            bad.append(text)
    return bad


def write_genai_files(
    out_dir: Path, config: GriffinConfig, tokenizer_model: Path, decode_file: str = "decode.onnx"
) -> bool:
    """Write the three onnxruntime-genai files into an ONNX artifact or bundle folder.

    Only when the converted ``tokenizer.json`` reproduces sentencepiece on every golden string:
    the Gemma converter assumes Gemma's SentencePiece settings (no dummy prefix, no whitespace
    folding, identity normalizer). Another tokenizer (e.g. a default-trained SentencePiece model)
    gets no onnxruntime-genai files rather than a tokenizer that encodes differently; returns
    whether the files were written. ``decode_file``: the t = 1 graph (``step.onnx`` with
    ``--one-program``).
    """
    out_dir = Path(out_dir)
    scratch = out_dir / f".{TOKENIZER_JSON}.tmp"
    tokenizer_json(tokenizer_model, scratch)
    bad = tokenizer_json_mismatches(tokenizer_model, scratch)
    if bad:
        scratch.unlink()
        log.warning(
            "no onnxruntime-genai files: the converted tokenizer.json differs from sentencepiece on %d golden "
            "strings (e.g. %r); the tokenizer is not in Gemma's SentencePiece layout",
            len(bad), bad[0],
        )  # fmt: skip
        return False
    scratch.replace(out_dir / TOKENIZER_JSON)
    write_json(out_dir / GENAI_CONFIG, genai_config(config, decode_file))
    write_json(out_dir / TOKENIZER_CONFIG, tokenizer_config(config, tokenizer_model))
    log.info("wrote onnxruntime-genai files %s into %s", GENAI_FILES, out_dir)
    return True
