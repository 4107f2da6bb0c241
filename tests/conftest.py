"""Shared fixtures: tiny random configs, a tiny SentencePiece tokenizer, tiny HF folders."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from bundles import bundle_root, ios_onnx_bundles, onnx_bundles, per_length_bundles, prefill8_bundles  # noqa: F401  # session fixtures (phone bundles)
from shared import built_once, shared_root

from exporter.checkpoint.save import save_hf_folder
from exporter.config import GriffinConfig, preset
from exporter.model.griffin import Griffin, random_init_

TINY_VOCAB = 300


def tiny_config(**changes) -> GriffinConfig:
    """preset('tiny') with a vocab the tiny tokenizer fills exactly (window 16)."""
    return preset("tiny").with_(vocab_size=TINY_VOCAB, **changes)


def mapping_kb(path: Path, field: str) -> int:
    """``field`` (``Size``, ``Rss``, ``Locked``) of /proc/self/smaps summed over this process's
    mappings of ``path``, in KiB."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and not head[0].endswith(":"):
            inside = len(head) >= 6 and head[5] == str(path.resolve())
        elif inside and head and head[0] == f"{field}:":
            total += int(head[1])
    return total


def tiny_model(config: GriffinConfig | None = None, seed: int = 1) -> Griffin:
    torch.manual_seed(seed)
    return random_init_(Griffin(config or tiny_config()).eval(), seed=seed, nonzero_biases=True)


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BPE SentencePiece model with byte fallback and Gemma's special ids, vocab TINY_VOCAB."""
    import sentencepiece as spm

    def build(d: Path) -> None:
        d.mkdir(parents=True)
        rng = random.Random(0)
        words = "the a cat dog sat on mat ran far away big small house tree river stone light dark".split()
        lines = [" ".join(rng.choice(words) for _ in range(12)) + "." for _ in range(400)]
        (d / "corpus.txt").write_text("\n".join(lines))
        spm.SentencePieceTrainer.Train(
            input=str(d / "corpus.txt"), model_prefix=str(d / "tok"), vocab_size=TINY_VOCAB, model_type="bpe",
            byte_fallback=True, pad_id=0, eos_id=1, bos_id=2, unk_id=3, minloglevel=2,
        )  # fmt: skip

    return built_once(shared_root(tmp_path_factory, "spm") / "tok", build) / "tok.model"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path) -> Path:
    """An HF folder holding a tiny random model (nonzero biases) and the tiny tokenizer."""
    model = tiny_model()

    def build(out: Path) -> None:
        save_hf_folder(model.config, model.state_dict(), out, tokenizer=tiny_tokenizer)

    return built_once(shared_root(tmp_path_factory, "ckpt") / "tiny-hf", build)


@pytest.fixture(scope="session")
def tiny_et_artifact(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    """The tiny checkpoint exported with ``rgmobile export --format executorch --prefill-chunk 8
    --prefill-lengths 4,2`` (methods t = 8, 4, 2, 1).

    Lowering takes 2-4 minutes: built once per run (tests/shared.py), shared by every module that runs a .pte.
    """
    from typer.testing import CliRunner

    from rgmobile.cli import app

    def build(out: Path) -> None:
        # every position's logits: the tests compare prefill row by row
        args = ["export", str(tiny_checkpoint), "--format", "executorch", "--out", str(out),
                "--prefill-chunk", "8", "--prefill-lengths", "4,2", "--prefill-logits", "all"]  # fmt: skip
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output

    return built_once(shared_root(tmp_path_factory, "et") / "tiny-et", build)
