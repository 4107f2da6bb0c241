"""Checkpoint loading: HF folders (single, sharded, transformers-written) and official .pt agree;
every bad input is one clear RgMobileError line."""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_config, tiny_model
from oracles import hf_model
from safetensors.torch import load_file, save_file

from exporter.checkpoint import loader
from exporter.checkpoint.hf_config import config_to_hf
from exporter.checkpoint.loader import Checkpoint, default_checkpoint, load_checkpoint
from exporter.checkpoint.save import save_hf_folder
from exporter.checkpoint.weight_map import to_official
from exporter.config import GriffinConfig
from exporter.errors import RgMobileError
from exporter.model.griffin import positions

Tensor = torch.Tensor


@pytest.fixture(scope="session")
def weights() -> tuple[GriffinConfig, dict[str, Tensor]]:
    model = tiny_model()
    return model.config, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _official_dir(root: Path, state: dict[str, Tensor], tokenizer: Path, config: GriffinConfig | None) -> Path:
    root.mkdir(parents=True)
    torch.save(to_official(state), root / "model.pt")
    shutil.copyfile(tokenizer, root / "tokenizer.model")
    if config is not None:
        (root / "config.json").write_text(json.dumps(config_to_hf(config)))
    return root / "model.pt"


@pytest.fixture(scope="session")
def formats(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path, weights) -> dict[str, Path]:
    """The same weights as an HF folder, a sharded HF folder and an official .pt (with and without sidecar)."""
    config, state = weights
    root = tmp_path_factory.mktemp("formats")
    return {
        "single": save_hf_folder(config, state, root / "single", tokenizer=tiny_tokenizer),
        "sharded": save_hf_folder(config, state, root / "sharded", tokenizer=tiny_tokenizer, max_shard_bytes=200_000),
        "official": _official_dir(root / "official", state, tiny_tokenizer, config),
        "official_bare": _official_dir(root / "official_bare", state, tiny_tokenizer, None),
    }


def _logits(model: torch.nn.Module, ids: Tensor) -> Tensor:
    with torch.no_grad():
        return model(ids, positions(0, ids.shape[1], ids.shape[0]), model.init_state(ids.shape[0]))[0]


def _ids(config: GriffinConfig, t: int, b: int = 2) -> Tensor:
    return torch.randint(0, config.vocab_size, (b, t), generator=torch.Generator().manual_seed(7))


# --- the formats agree ------------------------------------------------------------------
def test_all_formats_give_identical_logits_beyond_the_window(formats, weights) -> None:
    config, _ = weights
    assert len(list(formats["sharded"].glob("model-*-of-*.safetensors"))) >= 3
    loaded = {name: load_checkpoint(formats[name]) for name in ("single", "sharded", "official")}
    ids = _ids(config, config.window + 9)
    ref = _logits(loaded["single"].model, ids)
    for name, ckpt in loaded.items():
        assert isinstance(ckpt, Checkpoint)
        assert ckpt.config == config, name
        assert not ckpt.model.training
        assert ckpt.kind == ("official" if name == "official" else "hf")
        assert ckpt.tokenizer_path.name == "tokenizer.model"
        assert torch.equal(_logits(ckpt.model, ids), ref), name


def test_official_without_sidecar_infers_shapes_and_uses_recurrentgemma_defaults(formats, weights) -> None:
    config, _ = weights
    ckpt = load_checkpoint(formats["official_bare"])
    assert ckpt.config == config.with_(window=2048)
    assert (ckpt.config.logits_soft_cap, ckpt.config.embed_scale_by_sqrt_width) == (30.0, True)
    assert (ckpt.config.bos_id, ckpt.config.eos_id, ckpt.config.pad_id) == (2, 1, 0)


def test_hf_folder_has_transformers_semantics(formats, weights) -> None:
    config, state = weights
    ids = _ids(config, config.window - 4)
    ours = _logits(load_checkpoint(formats["single"]).model, ids)
    with torch.no_grad():
        theirs = hf_model(config, state)(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_folder_written_by_transformers_save_pretrained_loads(tmp_path, formats, weights, tiny_tokenizer) -> None:
    config, state = weights
    hf_model(config, state).save_pretrained(tmp_path / "hf")
    shutil.copyfile(tiny_tokenizer, tmp_path / "hf" / "tokenizer.model")
    theirs = load_checkpoint(tmp_path / "hf")
    ours = load_checkpoint(formats["single"])
    assert theirs.config == ours.config
    ids = _ids(config, config.window + 9)
    assert torch.equal(_logits(theirs.model, ids), _logits(ours.model, ids))


def test_dtype_and_explicit_tokenizer(tmp_path, weights, tiny_tokenizer) -> None:
    _, state = weights
    pt = tmp_path / "weights.pth"
    torch.save(to_official(state), pt)  # no tokenizer.model beside it
    ckpt = load_checkpoint(pt, dtype=torch.bfloat16, tokenizer=tiny_tokenizer)
    assert ckpt.tokenizer_path == tiny_tokenizer
    assert {p.dtype for p in ckpt.model.parameters()} == {torch.bfloat16}


def test_default_checkpoint(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(loader, "BUNDLED_DIR", tmp_path / "brown-small")
    with pytest.raises(RgMobileError, match="bundled"):
        default_checkpoint()
    (tmp_path / "brown-small").mkdir()
    (tmp_path / "brown-small" / "config.json").write_text("{}")
    assert default_checkpoint() == tmp_path / "brown-small"


# --- bad inputs: one RgMobileError line each ---------------------------------------------
@dataclass
class Env:
    """What a bad-input case starts from: good checkpoints to copy and spoil."""

    formats: dict[str, Path]
    tmp: Path
    tokenizer: Path
    state: dict[str, Tensor]

    def copy(self, name: str) -> Path:
        """A private copy of a good checkpoint (folder, or the .pt inside its folder)."""
        src = self.formats[name]
        if src.is_file():
            return Path(shutil.copytree(src.parent, self.tmp / "ck")) / src.name
        return Path(shutil.copytree(src, self.tmp / "ck"))

    def hf(self, state: dict[str, Tensor], config: GriffinConfig | None = None) -> Path:
        return save_hf_folder(config or tiny_config(), state, self.tmp / "ck", tokenizer=self.tokenizer)

    def pt(self, obj: object) -> Path:
        """``obj`` saved by torch.save as model.pt, with a good tokenizer beside it."""
        (self.tmp / "ck").mkdir()
        torch.save(obj, self.tmp / "ck" / "model.pt")
        shutil.copyfile(self.tokenizer, self.tmp / "ck" / "tokenizer.model")
        return self.tmp / "ck" / "model.pt"


Target = Path | tuple[Path, dict[str, Any]]  # what to load, and load_checkpoint's keyword arguments
BAD: dict[str, tuple[Callable[[Env], Target], str]] = {}


def bad(keyword: str) -> Callable[[Callable[[Env], Target]], Callable[[Env], Target]]:
    """Register a bad-input case whose error message must contain ``keyword``."""

    def register(fn: Callable[[Env], Target]) -> Callable[[Env], Target]:
        BAD[fn.__name__] = (fn, keyword)
        return fn

    return register


def _edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@bad("does not exist")
def path_missing(env: Env) -> Target:
    return env.tmp / "nope"


@bad("expected a hugging face folder")
def unsupported_file(env: Env) -> Target:
    (env.tmp / "model.onnx").write_bytes(b"x")
    return env.tmp / "model.onnx"


@bad("pass the folder")
def safetensors_file_not_folder(env: Env) -> Target:
    return env.formats["single"] / "model.safetensors"


@bad("dtype")
def integer_dtype(env: Env) -> Target:
    return env.formats["single"], {"dtype": torch.int8}


@bad("no config.json")
def no_config(env: Env) -> Target:
    (env.copy("single") / "config.json").unlink()
    return env.tmp / "ck"


@bad("invalid JSON")
def invalid_config_json(env: Env) -> Target:
    (env.copy("single") / "config.json").write_text("{oops")
    return env.tmp / "ck"


@bad("expected an object")
def config_json_not_an_object(env: Env) -> Target:
    (env.copy("single") / "config.json").write_text("[1]")
    return env.tmp / "ck"


@bad("missing weights")
def no_weights(env: Env) -> Target:
    (env.copy("single") / "model.safetensors").unlink()
    return env.tmp / "ck"


@bad("convert it to safetensors")
def pickle_weights_only(env: Env) -> Target:
    ck = env.copy("single")
    (ck / "model.safetensors").rename(ck / "pytorch_model.bin")
    return ck


@bad("missing from the folder")
def index_lists_missing_shard(env: Env) -> Target:
    ck = env.copy("sharded")
    sorted(ck.glob("model-*.safetensors"))[1].unlink()
    return ck


@bad("absent")
def index_places_tensor_in_wrong_shard(env: Env) -> Target:
    ck = env.copy("sharded")
    index = json.loads((ck / "model.safetensors.index.json").read_text())
    wm = index["weight_map"]
    wm["model.embed_tokens.weight"] = next(f for f in wm.values() if f != wm["model.embed_tokens.weight"])
    (ck / "model.safetensors.index.json").write_text(json.dumps(index))
    return ck


@bad("invalid JSON")
def invalid_index_json(env: Env) -> Target:
    (env.copy("sharded") / "model.safetensors.index.json").write_text("{")
    return env.tmp / "ck"


@bad("truncated")
def truncated_safetensors(env: Env) -> Target:
    _truncate(env.copy("single") / "model.safetensors")
    return env.tmp / "ck"


@bad("corrupt")
def garbage_shard(env: Env) -> Target:
    next(env.copy("sharded").glob("model-*.safetensors")).write_bytes(b"\0" * 40)
    return env.tmp / "ck"


@bad("1 missing")
def missing_tensor(env: Env) -> Target:
    return env.hf({k: v for k, v in env.state.items() if k != "layers.1.temporal_block.linear_x.bias"})


@bad("1 unexpected")
def unexpected_tensor(env: Env) -> Target:
    return env.hf({**env.state, "layers.0.extra.weight": torch.zeros(3)})


@bad("mis-shaped")
def mis_shaped_tensor(env: Env) -> Target:
    return env.hf({**env.state, "final_norm.weight": torch.zeros(65)})


@bad("lm_head")
def untied_head(env: Env) -> Target:
    ck = env.copy("single")
    tensors = load_file(ck / "model.safetensors")
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"] + 1.0
    save_file(tensors, ck / "model.safetensors")
    return ck


@bad("9 layers")
def config_has_more_layers_than_weights(env: Env) -> Target:
    _edit_json(env.copy("single") / "config.json", num_hidden_layers=9)
    return env.tmp / "ck"


@bad("unexpected")
def config_has_fewer_layers_than_weights(env: Env) -> Target:
    _edit_json(env.copy("single") / "config.json", num_hidden_layers=3)
    return env.tmp / "ck"


@bad("width 128")
def config_width_contradicts_weights(env: Env) -> Target:
    _edit_json(env.copy("single") / "config.json", hidden_size=128, lru_width=128)
    return env.tmp / "ck"


@bad("truncated")
def truncated_pt(env: Env) -> Target:
    pt = env.copy("official")
    _truncate(pt)
    return pt


@bad("corrupt")
def garbage_pt(env: Env) -> Target:
    pt = env.pt(None)
    pt.write_bytes(b"not a checkpoint")
    return pt


@bad("corrupt")
def empty_pt(env: Env) -> Target:
    pt = env.pt(None)
    pt.write_bytes(b"")
    return pt


@bad("needs Python code")
def pt_needs_code(env: Env) -> Target:
    return env.pt({"a": argparse.Namespace()})


@bad("not a dict of tensors")
def pt_list(env: Env) -> Target:
    return env.pt(list(env.state.values()))


@bad("not a dict of tensors")
def pt_non_tensor_value(env: Env) -> Target:
    return env.pt({**to_official(env.state), "step": 3})


@bad("missing tensor embedder.input_embedding")
def pt_without_embedding(env: Env) -> Target:
    off = to_official(env.state)
    del off["embedder.input_embedding"]
    return env.pt(off)


@bad("1 missing")
def pt_missing_tensor(env: Env) -> Target:
    off = to_official(env.state)
    del off["blocks.1.recurrent_block.linear_y.bias"]
    return env.pt(off)


@bad("num_hidden_layers is 3")
def sidecar_contradicts_layers(env: Env) -> Target:
    pt = env.copy("official")
    _edit_json(pt.parent / "config.json", num_hidden_layers=3)
    return pt


@bad("width (hidden_size) is 128")
def sidecar_contradicts_width(env: Env) -> Target:
    pt = env.copy("official")
    _edit_json(pt.parent / "config.json", hidden_size=128, lru_width=128)
    return pt


@bad("invalid JSON")
def sidecar_invalid_json(env: Env) -> Target:
    pt = env.copy("official")
    (pt.parent / "config.json").write_text("nope")
    return pt


@bad("missing tokenizer.model")
def no_tokenizer(env: Env) -> Target:
    (env.copy("single") / "tokenizer.model").unlink()
    return env.tmp / "ck"


@bad("missing tokenizer.model")
def explicit_tokenizer_missing(env: Env) -> Target:
    return env.formats["single"], {"tokenizer": env.tmp / "absent.model"}


@bad("not a valid SentencePiece model")
def tokenizer_not_sentencepiece(env: Env) -> Target:
    (env.copy("single") / "tokenizer.model").write_bytes(b"\x01garbage")
    return env.tmp / "ck"


@bad("must be equal")
def tokenizer_vocab_differs(env: Env) -> Target:
    config = tiny_config().with_(vocab_size=304)
    return env.hf(tiny_model(config).state_dict(), config)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_clear_error(case, tmp_path, formats, tiny_tokenizer, weights) -> None:
    make, keyword = BAD[case]
    made = make(Env(formats, tmp_path, tiny_tokenizer, weights[1]))
    path, kwargs = made if isinstance(made, tuple) else (made, {})
    with pytest.raises(RgMobileError) as info:  # any other exception type fails the test
        load_checkpoint(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    assert keyword.lower() in message.lower(), message
