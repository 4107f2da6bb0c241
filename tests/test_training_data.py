"""The Brown detokenizer and the bundled tokenizer (no network, no npm)."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.corpus import Corpus, detokenize_file, detokenize_paragraph, heldout_sample, load_brown

BUNDLED = Path(__file__).resolve().parent.parent / "exporter" / "bundled" / "brown-small"
TOKENIZER = BUNDLED / "tokenizer.model"


@pytest.mark.parametrize(
    ("tagged", "natural"),
    [
        (
            "The/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd Friday/nr an/at "
            "investigation/nn of/in Atlanta's/np$ recent/jj primary/nn election/nn produced/vbd "
            "``/`` no/at evidence/nn ''/'' that/cs any/dti irregularities/nns took/vbd place/nn ./.",
            "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary "
            'election produced "no evidence" that any irregularities took place.',
        ),
        # Brown puts the final mark after the closing quote; American prose puts it inside.
        (
            "``/`` Only/rb a/at handful/nn was/bedz received/vbn ''/'' ,/, the/at jury/nn said/vbd ./.",
            '"Only a handful was received," the jury said.',
        ),
        ("``/`` Will/md you/ppss drop/vb the/at anchor/nn ''/'' ?/. ?/.", '"Will you drop the anchor?"'),
        ("won/vbn by/in Ivan/np Allen/np Jr./np ./.", "won by Ivan Allen Jr."),
        ("of/in Ann/np ;/. ;/. each/dt day/nn", "of Ann; each day"),
        ("He/pps certainly/rb didn't/dod* want/vb it/ppo ./.", "He certainly didn't want it."),
        ("it/pps do/do n't/* matter/vb", "it don't matter"),
        ("John/np 's/$ hat/nn", "John's hat"),
        ("give/vb 'em/ppo hell/nn", "give 'em hell"),
        ("a/at fee/nn (/( $5/nns )/) is/bez due/jj :/: now/rb !/.", "a fee ($5) is due: now!"),
        ("the/at end/nn --/-- or/cc not/*", "the end--or not"),
        ("say/vb ,/, '/' Don't/do* worry/vb '/' ./.", "say, 'Don't worry'."),
        ("1/2/cd inch/nn", "1/2 inch"),
    ],
)
def test_detokenize_paragraph(tagged: str, natural: str) -> None:
    assert detokenize_paragraph(tagged) == natural


def test_detokenize_file_keeps_paragraphs_and_splits_headlines() -> None:
    tagged = (
        "\n\n\tThe/at jury/nn met/vbd ./.\nIt/pps adjourned/vbd ./.\n\n\n"
        "\tMerger/nn-hl proposed/vbn-hl \nHowever/wrb ,/, it/pps said/vbd no/rb ./.\n"
    )
    assert detokenize_file(tagged) == "The jury met. It adjourned.\n\nMerger proposed\n\nHowever, it said no."


def test_split_is_by_file_and_deterministic(tmp_path: Path) -> None:
    for k in range(40):
        (tmp_path / f"c{'ab'[k // 20]}{k % 20 + 1:02d}").write_text(f"\n\n\tFile/nn {k}/cd ./.\n")
    (tmp_path / "README").write_text("not a corpus file")
    corpus = load_brown(tmp_path)
    assert corpus.heldout_files == ("ca20", "cb20")
    assert len(corpus.train) == 38 and "File 19." in corpus.heldout
    assert load_brown(tmp_path) == corpus


def test_heldout_sample_cuts_at_paragraphs() -> None:
    corpus = Corpus(train=(), heldout=("a" * 40, "b" * 40 + "\n\n" + "c" * 40), train_files=(), heldout_files=())
    assert heldout_sample(corpus, max_bytes=100) == "a" * 40 + "\n\n" + "b" * 40 + "\n"


@pytest.fixture(scope="module")
def sp():
    if not TOKENIZER.is_file():
        pytest.skip("the bundled model has not been trained yet (python -m training.train)")
    from training.tokenizer import load_tokenizer

    return load_tokenizer(TOKENIZER)


def test_bundled_tokenizer_special_ids_and_size(sp) -> None:
    assert sp.get_piece_size() == 4096
    assert (sp.pad_id(), sp.eos_id(), sp.bos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<eos>", "<bos>", "<unk>"]


def test_bundled_tokenizer_round_trips_with_byte_fallback(sp) -> None:
    text = 'The jury said "no evidence."\n\nIt cost $1,234 -- über ☃ 漢字!  Two  spaces.'
    ids = sp.encode(text)
    assert sp.decode(ids) == text
    assert sp.unk_id() not in ids
    # Characters outside the vocabulary become UTF-8 byte pieces, as in Gemma.
    assert [sp.id_to_piece(i) for i in sp.encode("☃")] == ["<0xE2>", "<0x98>", "<0x83>"]
    assert sp.encode("\n") == [sp.piece_to_id("<0x0A>")]


def test_bundled_tokenizer_is_bpe_for_english(sp) -> None:
    ids = sp.encode("The government of the United States")
    assert len(ids) <= 8  # common English words are whole pieces
    assert sp.encode("1961") == [sp.piece_to_id(d) for d in "1961"]  # digits are split


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_sample_continues_as_the_runtime_generation_loop(tiny_tokenizer: Path, temperature: float) -> None:
    """training/sample.py draws with the runtime's sampler: the same tokens as ``generate`` on the eager model."""
    from conftest import tiny_model

    from runtime_py.generate import generate
    from runtime_py.sampling import SamplingConfig
    from runtime_py.tokenizer import Tokenizer
    from runtime_py.torch_backend import TorchBackend
    from training.sample import continue_text
    from training.tokenizer import load_tokenizer

    model = tiny_model()
    tokenizer = Tokenizer(tiny_tokenizer)
    sampling = SamplingConfig(temperature=temperature, top_k=40, seed=3)
    want = generate(TorchBackend(model), tokenizer, "the cat sat", 16, sampling)
    got = continue_text(model, load_tokenizer(tiny_tokenizer), "the cat sat", 16, temperature, top_k=40, seed=3)
    assert len(want.new_ids) > 3
    assert got == tokenizer.sp.decode([t for t in want.new_ids if t != model.config.eos_id])
