"""Artifacts exported with ``--prefill-logits last`` (the default for ONNX, with its one ``step.onnx``, and
ExecuTorch): every program returns the last position's logits only ([1, 1, v]); the head runs once per
prefill chunk. Checked against the official ``recurrentgemma`` model over a sequence three windows long,
in onnxruntime and ExecuTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from exporter.artifact.manifest import read_manifest
from exporter.checkpoint.loader import load_checkpoint
from exporter.errors import RgMobileError
from exporter.model.griffin import positions
from exporter.step.iospec import IOSpec, build_iospec
from rgmobile.export import ExportOptions, export
from runtime_py.backend import Backend, every_position_seq_lens, last_logits_only, plan_chunks
from runtime_py.generate import run_tokens
from runtime_py.open import open_artifact_backend as open_artifact
from runtime_py.validate import ValidateOptions, validate
from tests.conftest import tiny_config
from tests.oracles import official_model

CHUNK = 8
TOL = 1e-4


def test_iospec_last_logits_round_trips_and_rejects_other_dims() -> None:
    cfg = tiny_config()
    spec = build_iospec(cfg, last_logits=True)
    assert spec.outputs[0].shape == ("batch", 1, cfg.vocab_size) and spec.last_logits_only
    assert IOSpec.from_dict(spec.to_dict()).last_logits_only
    assert not build_iospec(cfg).last_logits_only
    data = spec.to_dict()
    data["outputs"][0]["shape"] = ["batch", 2, cfg.vocab_size]
    with pytest.raises(RgMobileError, match=r"logits must be \[batch, seq or 1, vocab\]"):
        IOSpec.from_dict(data)


def test_export_options_refuse_bad_prefill_logits(tmp_path: Path) -> None:
    with pytest.raises(RgMobileError, match="--prefill-logits must be all or last"):
        ExportOptions(out=tmp_path / "a", prefill_logits="first")
    with pytest.raises(RgMobileError, match="Core ML packages return every position's logits"):
        ExportOptions(out=tmp_path / "b", format="coreml", prefill_logits="last")


def test_last_is_the_default_where_the_format_has_it(tmp_path: Path) -> None:
    """Unset, --prefill-logits is last for ONNX and ExecuTorch and all for Core ML; asked for, all stays."""
    assert ExportOptions(out=tmp_path / "a").prefill_logits == "last"
    assert ExportOptions(out=tmp_path / "b", format="executorch").prefill_logits == "last"
    assert ExportOptions(out=tmp_path / "c", format="coreml").prefill_logits == "all"
    assert ExportOptions(out=tmp_path / "d", prefill_logits="all").prefill_logits == "all"


@pytest.fixture(scope="module", params=["onnx", pytest.param("executorch", marks=pytest.mark.slow)])
def last_artifact(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path
) -> Path:
    out = tmp_path_factory.mktemp("last") / f"tiny-{request.param}"
    export(ExportOptions(out=out, format=request.param, checkpoint=tiny_checkpoint, prefill_chunk=CHUNK))  # default
    return out


def _official_logits(checkpoint: Path, ids: list[int]) -> np.ndarray:
    """The official model's logits [n, v] of ``ids`` from position 0 (one full-sequence call)."""
    model = load_checkpoint(checkpoint).model
    ref = official_model(model.config, model.state_dict())
    x = torch.tensor([ids], dtype=torch.int64)
    with torch.no_grad():
        logits, _ = ref(x, positions(0, len(ids)))
    return logits[0].double().numpy()


def _tokens(backend: Backend, n: int) -> list[int]:
    return np.random.default_rng(0).integers(0, backend.config.vocab_size, size=n).tolist()


def test_prefill_returns_last_position_matching_official(last_artifact: Path, tiny_checkpoint: Path) -> None:
    manifest = read_manifest(last_artifact)
    assert manifest.io.last_logits_only
    backend = open_artifact(last_artifact, manifest)
    assert last_logits_only(backend) and every_position_seq_lens(backend) == (1,)
    n = 3 * manifest.config.window + 5
    ids = _tokens(backend, n)
    want = _official_logits(tiny_checkpoint, ids)
    plan = plan_chunks(n, backend.seq_lens())
    assert plan.count(CHUNK) >= 5  # prefill chunks across the window, then t = 1 steps
    state, pos, worst = backend.init_state(1), 0, 0.0
    for t in plan:
        x = np.array([ids[pos : pos + t]], dtype=np.int64)
        logits, state = backend.step(x, np.arange(pos, pos + t, dtype=np.int64)[None], state)
        assert logits.shape == (1, 1, manifest.config.vocab_size)
        worst = max(worst, float(np.abs(logits[0, 0] - want[pos + t - 1]).max()))
        pos += t
    assert worst <= TOL


def test_every_position_through_decode_steps(last_artifact: Path, tiny_checkpoint: Path) -> None:
    """``run_tokens`` asked for every position's logits steps t = 1 on such an artifact."""
    backend = open_artifact(last_artifact, read_manifest(last_artifact))
    ids = _tokens(backend, 2 * CHUNK + 3)
    logits, _ = run_tokens(backend, ids, backend.init_state(1))
    assert logits.shape == (len(ids), backend.config.vocab_size)
    assert float(np.abs(logits - _official_logits(tiny_checkpoint, ids)).max()) <= TOL
    last, _ = run_tokens(backend, ids, backend.init_state(1), all_logits=False)
    np.testing.assert_allclose(last[0], logits[-1], atol=TOL, rtol=0)


def test_validate_compares_the_positions_it_has(last_artifact: Path, tiny_checkpoint: Path) -> None:
    result = validate(ValidateOptions(last_artifact, checkpoint=tiny_checkpoint, steps=20, quality=False))
    assert result.passed, result.failures
    # one row per prompt step: whole chunks, then the remainder (one call where the prefill program runs its length)
    prompt_rows = len(plan_chunks(result.prompt_tokens, read_manifest(last_artifact).seq_lens()))
    assert result.prompt_tokens > prompt_rows
    assert result.summary["positions"] == prompt_rows + result.decode_steps
