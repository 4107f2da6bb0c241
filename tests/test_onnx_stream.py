"""The streamed ONNX export (``--stream-weights``: the step traced with fake weights, each weight
made from the seed or read from the checkpoint one at a time, so no whole model ever exists)
against the in-memory export of the same weights, and against the eager reference.

Also the tied head of a small table: the export's optimizer folds ``Transpose(embed_tokens)``
into a copy when the table has at most 8192 values (``--random-init tiny``), and the quantizer
finds the head by that copy's values.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from exporter.artifact.manifest import read_manifest
from exporter.checkpoint import loader, random_init
from exporter.checkpoint.loader import load_checkpoint
from exporter.checkpoint.random_init import random_model
from exporter.checkpoint.weight_map import to_official
from exporter.config import preset
from exporter.errors import RgMobileError
from exporter.model.griffin import positions
from quantization.onnx import ort_reference
from quantization.recipe import load_recipe
from rgmobile.export import ExportOptions, export, streams
from runtime_py.onnx_backend import OnnxBackend
from runtime_py.torch_backend import TorchBackend
from runtime_py.validate import compare, summarize
from tests.oracles import official_model

SEED = 5
CHUNK = 4
_CACHE: dict[str, Path] = {}


def _export(tmp: Path, name: str, config_file: str, **options) -> Path:
    if name not in _CACHE:
        out = tmp / name
        with pytest.MonkeyPatch.context() as mp:
            if options.get("stream_weights"):  # nothing may build the whole model
                mp.setattr(random_init, "random_model", _refuse)
            export(ExportOptions(out=out, random_init=config_file, seed=SEED, prefill_chunk=CHUNK, **options))
        _CACHE[name] = out
    return _CACHE[name]


def _refuse(*args, **kwargs):
    raise AssertionError("the streamed export built the whole model")


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("stream") / "tiny300.json"
    path.write_text(json.dumps(tiny_config().to_dict()))  # vocab 300: the head's transpose stays a node
    return str(path)


@pytest.fixture(scope="module")
def int4_pair(tmp_path_factory: pytest.TempPathFactory, config_file: str) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("stream-int4")
    opts = {"quant": "int4", "accuracy_level": 0}  # fp32 activations: the integers' exact maths
    return _export(tmp, "memory", config_file, **opts), _export(tmp, "stream", config_file, stream_weights=True, **opts)


def _graph(artifact: Path) -> onnx.ModelProto:
    return onnx.load(str(artifact / "step.onnx"), load_external_data=False)


def _run(artifact: Path, seq: int) -> list[np.ndarray]:
    """One step of ``seq`` tokens from a random state, the same feeds for every artifact."""
    session = ort.InferenceSession(str(artifact / "step.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for i in session.get_inputs():
        shape = [1 if d == "batch" else seq if isinstance(d, str) else d for d in i.shape]
        if "int" in i.type:
            feeds[i.name] = rng.integers(0, 16, size=shape).astype(np.int64)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return session.run(None, feeds)


@pytest.mark.slow
def test_streamed_int4_export_is_the_in_memory_export(int4_pair: tuple[Path, Path]) -> None:
    memory, stream = int4_pair
    a, b = _graph(memory), _graph(stream)
    assert Counter(n.op_type for n in a.graph.node) == Counter(n.op_type for n in b.graph.node)
    inits = [{(i.name, tuple(i.dims), i.data_type) for i in g.graph.initializer} for g in (a, b)]
    assert inits[0] == inits[1]
    ma, mb = read_manifest(memory), read_manifest(stream)
    assert ma.identity == mb.identity  # weights_sha256 computed one tensor at a time: the same weights
    assert mb.format_details["streamed_weights"] and not ma.format_details["streamed_weights"]
    assert ma.quantization == mb.quantization
    for seq in (1, CHUNK):
        for x, y in zip(_run(memory, seq), _run(stream, seq), strict=True):
            assert np.array_equal(x, y)


@pytest.mark.slow
def test_streamed_int4_export_matches_the_eager_reference(int4_pair: tuple[Path, Path], config_file: str) -> None:
    stream = int4_pair[1]
    m = read_manifest(stream)
    model = random_model(m.config, seed=SEED)
    ref = ort_reference(model, load_recipe("int4"))  # the eager model with the graph's integers
    prompt = [int(t) for t in np.random.default_rng(1).integers(3, m.config.vocab_size, 2 * CHUNK + 3)]
    cmp, greedy = compare(OnnxBackend(stream, m), TorchBackend(ref), prompt, steps=40, greedy_tokens=8)
    errors = summarize(cmp, greedy)[0]
    assert errors["max_abs_logits"] < 2e-5 and errors["max_state_abs"] < 2e-5
    assert errors["top1_agreement"] == 1.0


@pytest.mark.slow
def test_streamed_fp32_export_matches_the_eager_model(tmp_path_factory: pytest.TempPathFactory, config_file: str):
    stream = _export(tmp_path_factory.mktemp("stream-fp32"), "fp32", config_file, stream_weights=True)
    m = read_manifest(stream)
    assert not (stream / "weights.bin").exists()  # a small graph keeps its weights inline, as in memory
    prompt = [int(t) for t in np.random.default_rng(2).integers(3, m.config.vocab_size, 2 * CHUNK + 3)]
    model = random_model(m.config, seed=SEED)
    cmp, greedy = compare(OnnxBackend(stream, m), TorchBackend(model), prompt, steps=40, greedy_tokens=8)
    errors = summarize(cmp, greedy)[0]
    assert errors["max_abs_logits"] < 1e-4 and errors["max_state_abs"] < 1e-4
    assert errors["top1_agreement"] == 1.0


@pytest.mark.slow
def test_a_folded_head_transpose_is_found_and_quantized(tmp_path_factory: pytest.TempPathFactory) -> None:
    """``--random-init tiny`` (vocab 128 x width 64 = 8192 values): the optimizer folds the head's
    transpose into a copy of the table; the quantizer still ties the head to the embedding's integers."""
    out = _export(tmp_path_factory.mktemp("folded"), "folded", "tiny", quant="int4", accuracy_level=0)
    g = _graph(out).graph
    cfg = preset("tiny")
    floats = [tuple(i.dims) for i in g.initializer if i.data_type == onnx.TensorProto.FLOAT]
    assert (cfg.width, cfg.vocab_size) not in floats and (cfg.vocab_size, cfg.width) not in floats
    assert sum(n.op_type == "GatherBlockQuantized" for n in g.node) == 1
    m = read_manifest(out)
    assert m.quantization is not None and m.quantization["onnx"]["classes"]["embedding"]["matmuls"] == 1
    ref = ort_reference(random_model(cfg, seed=SEED), load_recipe("int4"))
    prompt = [int(t) for t in np.random.default_rng(3).integers(3, cfg.vocab_size, 2 * CHUNK + 3)]
    cmp, greedy = compare(OnnxBackend(out, m), TorchBackend(ref), prompt, steps=20, greedy_tokens=8)
    assert summarize(cmp, greedy)[0]["max_abs_logits"] < 2e-5


def test_stream_weights_default_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import exporter.config

    def opts(**kw) -> ExportOptions:
        return ExportOptions(out=tmp_path / "a", random_init="tiny", **kw)

    assert not streams(opts(), preset("tiny")) and streams(opts(stream_weights=True), preset("tiny"))
    monkeypatch.setattr(exporter.config, "available_memory_bytes", lambda: 8 * 2**30)
    assert streams(opts(), preset("2b"))  # 10.7 GB of fp32 weights > 8 GiB: streamed by default
    assert not streams(opts(stream_weights=False), preset("2b"))
    assert not streams(opts(format="executorch"), preset("2b"))  # ONNX only
    with pytest.raises(RgMobileError, match="--stream-weights exports to onnx only"):
        opts(format="executorch", stream_weights=True)


# --- checkpoints: a Hugging Face folder and an official .pt, read one tensor at a time ---------------


@pytest.fixture(scope="module")
def official_pt(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, tiny_tokenizer: Path) -> Path:
    """The tiny checkpoint as an official state dict in bfloat16 (converted to float32 on reading)."""
    model = load_checkpoint(tiny_checkpoint).model
    root = tmp_path_factory.mktemp("official")
    torch.save({k: v.to(torch.bfloat16) for k, v in to_official(model.state_dict()).items()}, root / "model.pt")
    shutil.copyfile(tiny_tokenizer, root / "tokenizer.model")
    return root / "model.pt"


def _export_checkpoint(tmp: Path, checkpoint: Path, stream: bool) -> Path:
    out = tmp / ("stream" if stream else "memory")
    with pytest.MonkeyPatch.context() as mp:
        if stream:  # nothing may load the whole checkpoint
            mp.setattr(loader, "load_checkpoint", _refuse)
        export(ExportOptions(out=out, checkpoint=checkpoint, prefill_chunk=CHUNK, quant="int4", accuracy_level=0,
                             stream_weights=stream))  # fmt: skip
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hf", "official"])
def test_streamed_checkpoint_export_is_the_in_memory_export(
    kind: str, tiny_checkpoint: Path, official_pt: Path, tmp_path: Path
) -> None:
    checkpoint = tiny_checkpoint if kind == "hf" else official_pt
    memory = _export_checkpoint(tmp_path, checkpoint, stream=False)
    stream = _export_checkpoint(tmp_path, checkpoint, stream=True)
    ma, mb = read_manifest(memory), read_manifest(stream)
    assert ma.identity == mb.identity and ma.source == mb.source and ma.config == mb.config
    assert (memory / "tokenizer.model").read_bytes() == (stream / "tokenizer.model").read_bytes()
    for seq in (1, CHUNK):
        for x, y in zip(_run(memory, seq), _run(stream, seq), strict=True):
            assert np.array_equal(x, y)


def test_streamed_checkpoint_errors(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from safetensors.torch import save_file

    from exporter.checkpoint.streamed import open_streamed

    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    tensors = load_file(bad / "model.safetensors")
    name = next(n for n in tensors if n.endswith("final_norm.weight"))
    tensors[name] = torch.zeros(3)
    save_file(tensors, bad / "model.safetensors")
    with pytest.raises(RgMobileError, match="mis-shaped"):
        open_streamed(bad)
    untied = tmp_path / "untied"
    shutil.copytree(tiny_checkpoint, untied)
    tensors = load_file(untied / "model.safetensors")
    emb = next(n for n in tensors if n.endswith("embed_tokens.weight"))
    tensors["lm_head.weight"] = tensors[emb] + 1
    save_file(tensors, untied / "model.safetensors")
    with pytest.raises(RgMobileError, match="differs from the embedding"):
        open_streamed(untied)
    with pytest.raises(RgMobileError, match="does not exist"):
        open_streamed(tmp_path / "nowhere")


@pytest.mark.slow
def test_streamed_official_export_matches_the_official_model(official_pt: Path, tmp_path: Path) -> None:
    """The oracle: a streamed fp32 export of an official ``.pt`` (bf16 on disk), one token per step across
    three windows, against Google DeepMind's ``recurrentgemma`` holding the same (bf16-valued) weights."""
    out = tmp_path / "official-fp32"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loader, "load_checkpoint", _refuse)
        export(ExportOptions(out=out, checkpoint=official_pt, prefill_chunk=CHUNK, stream_weights=True))
    m = read_manifest(out)
    model = load_checkpoint(official_pt).model  # the oracle's weights: the file's values in fp32
    n = 3 * m.config.window + 5
    ids = np.random.default_rng(4).integers(0, m.config.vocab_size, size=n)
    with torch.no_grad():
        want, _ = official_model(model.config, model.state_dict())(torch.tensor(ids[None]), positions(0, n))
    session = ort.InferenceSession(str(out / "step.onnx"), providers=["CPUExecutionProvider"])
    names = m.io.input_names
    state = [np.zeros([1 if d == "batch" else d for d in i.shape], np.float32) for i in session.get_inputs()[2:]]
    got = []
    for pos in range(n):
        feed = {names[0]: ids[None, pos : pos + 1], names[1]: np.array([[pos]])}
        outs = session.run(None, {**feed, **dict(zip(names[2:], state, strict=True))})
        got.append(outs[0][0, -1])
        state = outs[1:]
    assert float(np.abs(np.stack(got) - want[0].double().numpy()).max()) <= 1e-4
