"""``export --one-program`` (ONNX, the default): one graph, ``step.onnx``, for every step length from 1 to the
prefill chunk, traced with a doubling scan and a gather for the ring write. Both manifest programs
name it and the runtime opens one session. Checked against the official ``recurrentgemma`` model
over a sequence three windows long, at every step length, fp32 and int4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from exporter.artifact.manifest import read_manifest
from exporter.checkpoint.loader import load_checkpoint
from exporter.errors import RgMobileError
from exporter.model.griffin import positions
from exporter.model.layers import linear_scan
from exporter.model.state import flatten_state
from exporter.step.step import StepModule, any_length
from rgmobile.cli import app
from rgmobile.export import ExportOptions, export
from runtime_py.backend import plan_chunks
from runtime_py.open import open_artifact_backend as open_artifact
from runtime_py.validate import ValidateOptions, validate
from tests.conftest import tiny_model
from tests.oracles import official_model

CHUNK = 8
TOL = 1e-4


@pytest.mark.parametrize("max_len", [1, 5, 8])
def test_one_graph_scans_equal_the_loop_for_every_length(max_len: int) -> None:
    gen = torch.Generator().manual_seed(max_len)
    for t in range(1, max_len + 1):
        a = torch.rand(2, t, 6, generator=gen)
        a[0, t // 2] = 0.0  # a reset inside the chunk
        u, h0 = torch.randn(2, t, 6, generator=gen), torch.randn(2, 6, generator=gen)
        want = linear_scan(a, u, h0, None)
        torch.testing.assert_close(linear_scan(a, u, h0, max_len), want, atol=1e-6, rtol=1e-6)
        # padded to max_len with the identity and unrolled: the loop's sums exactly
        assert torch.equal(linear_scan(a, u, h0, max_len, padded=True), want)


def test_any_length_step_equals_the_per_length_step() -> None:
    """The PyTorch step inside ``any_length`` against the unrolled one, over mixed lengths across the window."""
    model = tiny_model()
    step = StepModule(model)
    ids = torch.randint(0, model.config.vocab_size, (2, CHUNK), generator=torch.Generator().manual_seed(0))
    ref = any_ = flatten_state(model.init_state(2))
    pos = 0
    for t in [CHUNK, 1, 3, CHUNK, CHUNK, 5, 1, CHUNK, CHUNK]:
        p = positions(pos, t, 2)
        with torch.no_grad():
            out_ref = step(ids[:, :t], p, *ref)
            with any_length(model, CHUNK):
                out_any = step(ids[:, :t], p, *any_)
        for a, b in zip(out_ref, out_any, strict=True):
            torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-5)
        ref, any_ = out_ref[1:], out_any[1:]
        pos += t
    assert pos > 2 * model.config.window
    assert all(m.max_len is None for m in model.modules() if hasattr(m, "max_len"))  # restored


def test_options_refuse_one_program_outside_onnx(tmp_path: Path) -> None:
    with pytest.raises(RgMobileError, match="--one-program is an onnx option"):
        ExportOptions(out=tmp_path / "a", format="executorch", one_program=True)
    with pytest.raises(RgMobileError, match="--prefill-chunk, which must be >= 2"):
        ExportOptions(out=tmp_path / "b", prefill_chunk=1, one_program=True)
    res = CliRunner().invoke(app, ["export", "--format", "coreml", "--one-program", "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "--one-program is an onnx option" in res.output
    assert not (tmp_path / "c").exists()


def test_one_program_is_the_onnx_default(tmp_path: Path) -> None:
    """Unset, --one-program means one graph wherever there is a choice: ONNX with a prefill program."""
    assert ExportOptions(out=tmp_path / "a").one_program is True
    assert ExportOptions(out=tmp_path / "b", prefill_chunk=1).one_program is False  # decode.onnx alone
    assert ExportOptions(out=tmp_path / "c", one_program=False).one_program is False  # --graph-per-length
    for fmt in ("executorch", "coreml"):
        assert ExportOptions(out=tmp_path / fmt, format=fmt).one_program is False
        assert ExportOptions(out=tmp_path / fmt, format=fmt).prefill_any_length is False  # one method per t


def test_the_onnx_prefill_program_runs_any_length_unless_graph_per_length(tmp_path: Path) -> None:
    """The prefill graph's token dimension is symbolic by default (step.onnx, or --prefill-int8's
    prefill.onnx); --graph-per-length keeps fixed t."""
    assert ExportOptions(out=tmp_path / "a").prefill_any_length is True
    assert ExportOptions(out=tmp_path / "b", quant="int4", prefill_int8=True).prefill_any_length is True
    split = ExportOptions(out=tmp_path / "c", quant="int4", prefill_int8=True, one_program=False)
    assert split.prefill_any_length is False
    assert ExportOptions(out=tmp_path / "d", one_program=False).prefill_any_length is False
    assert ExportOptions(out=tmp_path / "e", prefill_chunk=1).prefill_any_length is False


_ARTIFACTS: dict[str, Path] = {}


def _one_program_export(root: Path, checkpoint: Path, quant: str) -> Path:
    if quant not in _ARTIFACTS:
        out = root / f"tiny-one-{quant}"
        export(ExportOptions(out=out, checkpoint=checkpoint, prefill_chunk=CHUNK, quant=quant, prefill_logits="all"))
        _ARTIFACTS[quant] = out
    return _ARTIFACTS[quant]


@pytest.fixture(scope="module")
def one_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("one")


@pytest.fixture(scope="module", params=["none", "int4"])
def one_artifact(request: pytest.FixtureRequest, one_root: Path, tiny_checkpoint: Path) -> Path:
    return _one_program_export(one_root, tiny_checkpoint, request.param)


def test_both_programs_name_one_file_and_share_one_session(one_artifact: Path) -> None:
    manifest = read_manifest(one_artifact)
    assert {n: (p.file, p.seq_len, p.min_seq_len) for n, p in manifest.programs.items()} == {
        "decode": ("step.onnx", 1, None),
        "prefill": ("step.onnx", CHUNK, 2),  # any t from 2: a prompt's remainder is one call
    }
    assert not (one_artifact / "decode.onnx").exists() and not (one_artifact / "prefill.onnx").exists()
    backend = open_artifact(one_artifact, manifest)
    assert backend.seq_lens() == tuple(range(CHUNK, 0, -1))
    assert plan_chunks(2 * CHUNK + 3, backend.seq_lens()) == [CHUNK, CHUNK, 3]
    assert len({id(s) for s in backend.sessions.values()}) == 1
    ids_input = backend.sessions[1].get_inputs()[0]
    assert ids_input.shape[1] == "seq"  # symbolic: one graph for every length


def test_every_length_matches_official(one_root: Path, tiny_checkpoint: Path) -> None:
    """Every step length 1..CHUNK through the fp32 graph, across three windows, against the official model."""
    artifact = _one_program_export(one_root, tiny_checkpoint, "none")
    manifest = read_manifest(artifact)
    backend = open_artifact(artifact, manifest)
    sess = backend.sessions[1]
    model = load_checkpoint(tiny_checkpoint).model
    n = 3 * manifest.config.window + 5
    ids = np.random.default_rng(0).integers(0, manifest.config.vocab_size, size=n)
    with torch.no_grad():
        want, _ = official_model(model.config, model.state_dict())(torch.tensor(ids[None]), positions(0, n))
    names = manifest.io.input_names
    state = [np.array(v.numpy()) for v in backend.init_state(1).values()]  # copies: the OrtValues go
    assert list(backend.init_state(1)) == names[2:]
    pos, lengths, got = 0, [], []
    while pos < n:
        t = min(n - pos, len(lengths) % CHUNK + 1)  # 1, 2, ..., CHUNK, 1, 2, ...
        feed = {names[0]: ids[None, pos : pos + t], names[1]: np.arange(pos, pos + t)[None]}
        out = sess.run(None, {**feed, **dict(zip(names[2:], state, strict=True))})
        assert out[0].shape == (1, t, manifest.config.vocab_size)
        got.append(out[0][0])
        state, pos = out[1:], pos + t
        lengths.append(t)
    assert set(lengths) == set(range(1, CHUNK + 1))
    assert float(np.abs(np.concatenate(got) - want[0].double().numpy()).max()) <= TOL


def test_validate_passes(one_artifact: Path, tiny_checkpoint: Path) -> None:
    """validate: every position's logits and the state after every step against the PyTorch reference
    (for int4, the reference with the artifact's own integers)."""
    result = validate(ValidateOptions(one_artifact, checkpoint=tiny_checkpoint, steps=20, quality=False))
    assert result.passed, result.failures
    assert result.summary["positions"] == result.prompt_tokens + result.decode_steps
