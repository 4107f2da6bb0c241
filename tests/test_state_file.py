"""Saved states (``*.rgstate``, docs/bundle.md "Saved states"): the file format and its refusals.

The file is read back with the plain ``safetensors`` reader (an independent
parser of the same format) as well as ours; every refusal is one RgMobileError.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config, tiny_model
from safetensors import safe_open
from safetensors.numpy import save

from exporter.artifact.identity import compute_identity
from exporter.errors import RgMobileError
from exporter.step.iospec import build_iospec
from runtime_py.generate import run_tokens
from runtime_py.identity import Identity, backend_identity
from runtime_py.state_file import SavedState, load_state, save_state
from runtime_py.torch_backend import TorchBackend

IO = build_iospec(tiny_config())
IO16 = build_iospec(tiny_config(), "float16")


@pytest.fixture(scope="module")
def backend() -> TorchBackend:
    return TorchBackend(tiny_model(seed=1))


@pytest.fixture(scope="module")
def saved(backend: TorchBackend) -> SavedState:
    """The state after 20 tokens (past the window of 16), with the 21st token unrun."""
    ids = [2, *range(10, 30)]
    _, state = run_tokens(backend, ids[:-1], backend.init_state(1))
    return SavedState(tuple(ids), backend.state_arrays(state), backend_identity(backend))


def _write(path: Path, tensors: dict[str, np.ndarray], **meta: str) -> Path:
    path.write_bytes(save(tensors, metadata=meta))
    return path


def _parts(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    with safe_open(str(path), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def test_identity_of_the_reference_is_compute_identity(backend: TorchBackend) -> None:
    ident = backend_identity(backend)
    assert ident.to_dict() == compute_identity(backend.model, "fp32")
    assert ident.precision == "fp32" and len(ident.weights_sha256) == 64
    assert backend_identity(TorchBackend(tiny_model(seed=2))).mismatch(ident) == (
        "it was saved from a model with different weights"
    )


def test_round_trip_is_exact_and_follows_the_contract(tmp_path: Path, saved: SavedState) -> None:
    path = tmp_path / "s.rgstate"
    size = save_state(path, saved, IO)
    assert size == path.stat().st_size and not list(tmp_path.glob(".*tmp*"))  # renamed into place
    tensors, meta = _parts(path)  # the upstream reader
    assert meta == {
        "rgmobile.format": "rgmobile-state",
        "rgmobile.schema_version": "1",
        "rgmobile.position": "20",
        **{f"rgmobile.{k}": v for k, v in saved.identity.to_dict().items()},
    }
    assert tensors["token_ids"].dtype == np.int64 and tensors["token_ids"].tolist() == list(saved.token_ids)
    assert sorted(tensors) == sorted(["token_ids", *(s.name for s in IO.state_inputs)])
    for s in IO.state_inputs:
        assert tensors[s.name].shape == s.concrete_shape(1) and tensors[s.name].dtype == np.float32
    back = load_state(path, saved.identity, IO)
    assert back.token_ids == saved.token_ids and back.position == 20
    assert all(np.array_equal(back.arrays[k], v) for k, v in saved.arrays.items())
    kv = next(s.name for s in IO.state_inputs if s.field == "key")
    assert np.abs(back.arrays[kv]).sum() > 0  # a real state, not zeros


def test_float_tensors_convert_to_the_openers_dtype(tmp_path: Path, saved: SavedState) -> None:
    path = tmp_path / "s.rgstate"
    save_state(path, saved, IO16)  # written as an fp16 artifact would (recurrent state stays fp32)
    tensors, _ = _parts(path)
    conv = next(s.name for s in IO.state_inputs if s.field == "conv_state")
    rec = next(s.name for s in IO.state_inputs if s.field == "recurrent_state")
    assert tensors[conv].dtype == np.float16 and tensors[rec].dtype == np.float32
    back = load_state(path, saved.identity, IO)
    assert back.arrays[conv].dtype == np.float32
    np.testing.assert_allclose(back.arrays[conv], saved.arrays[conv], rtol=1e-3, atol=1e-3)


def _base(saved: SavedState) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    tensors = {"token_ids": np.asarray(saved.token_ids, np.int64), **saved.arrays}
    meta = {
        "rgmobile.format": "rgmobile-state",
        "rgmobile.schema_version": "1",
        "rgmobile.position": str(saved.position),
        **{f"rgmobile.{k}": v for k, v in saved.identity.to_dict().items()},
    }
    return tensors, meta


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda t, m: m.update({"rgmobile.schema_version": "2"}), "newer than this rgmobile reads"),
        (lambda t, m: m.update({"rgmobile.format": "something-else"}), "not an rgmobile state"),
        (lambda t, m: m.update({"rgmobile.config_sha256": "0" * 64}), "different config"),
        (lambda t, m: m.update({"rgmobile.weights_sha256": "0" * 64}), "different weights"),
        (lambda t, m: m.update({"rgmobile.precision": "int4"}), "precision 'int4'"),
        (lambda t, m: m.pop("rgmobile.weights_sha256"), "weights_sha256"),
        (lambda t, m: m.update({"rgmobile.position": "19"}), "breaks the invariant"),
        (lambda t, m: m.update({"rgmobile.position": "-1"}), "breaks the invariant"),
        (lambda t, m: t.pop("past_key_values.0.conv_state"), "past_key_values.0.conv_state is missing"),
        (lambda t, m: t.update({"past_key_values.0.recurrent_state": np.zeros((1, 3), np.float32)}), "needs (1, 64)"),
        (lambda t, m: t.update({"past_key_values.0.recurrent_state": np.zeros((1, 64), np.int64)}), "needs float32"),
        (lambda t, m: t.update({"token_ids": np.asarray(t["token_ids"], np.int32)}), "int64 vector"),
        (lambda t, m: t.update({"extra": np.zeros(2, np.float32)}), "unexpected tensors"),
    ],
)
def test_refusals_are_one_line(tmp_path: Path, saved: SavedState, edit, needle: str) -> None:
    tensors, meta = _base(saved)
    edit(tensors, meta)
    path = _write(tmp_path / "bad.rgstate", tensors, **meta)
    with pytest.raises(RgMobileError, match=needle.replace("(", r"\(").replace(")", r"\)")) as info:
        load_state(path, saved.identity, IO)
    assert "\n" not in str(info.value)


def test_a_model_with_another_shape_is_refused(tmp_path: Path, saved: SavedState) -> None:
    path = tmp_path / "s.rgstate"
    save_state(path, saved, IO)
    other = TorchBackend(tiny_model(tiny_config(window=8), seed=1))
    with pytest.raises(RgMobileError, match="different config"):
        load_state(path, backend_identity(other), other.io)


def test_broken_files_are_refused(tmp_path: Path, saved: SavedState) -> None:
    good = tmp_path / "good.rgstate"
    save_state(good, saved, IO)
    raw = good.read_bytes()
    cases = {
        "empty": b"",
        "text": b"hello, this is not a state file at all",
        "truncated": raw[: len(raw) - 100],
        "huge-header": struct.pack("<Q", 1 << 40) + raw[8:],
        "not-json": struct.pack("<Q", 4) + b"\xff\xfe{]" + raw[12:],
        "pickle": b"\x80\x04\x95" + raw[3:],
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.rgstate"
        path.write_bytes(data)
        with pytest.raises(RgMobileError) as info:
            load_state(path, saved.identity, IO)
        assert str(path) in str(info.value) and "\n" not in str(info.value), name
    with pytest.raises(RgMobileError, match="cannot read"):
        load_state(tmp_path / "absent.rgstate", saved.identity, IO)
    header = json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])
    assert header["token_ids"]["dtype"] == "I64"  # the on-disk layout the apps parse


def test_saving_checks_shapes_and_tokens(tmp_path: Path, saved: SavedState) -> None:
    with pytest.raises(RgMobileError, match="without tokens"):
        save_state(tmp_path / "a.rgstate", SavedState((), saved.arrays, saved.identity), IO)
    arrays = {**saved.arrays, "past_key_values.0.conv_state": np.zeros((1, 1, 1), np.float32)}
    with pytest.raises(RgMobileError, match="conv_state"):
        save_state(tmp_path / "b.rgstate", SavedState(saved.token_ids, arrays, saved.identity), IO)
    assert not list(tmp_path.iterdir())


def test_identity_mismatch_messages() -> None:
    a = Identity("c", "w", "fp32")
    assert a.mismatch(a) is None
    assert "config" in (Identity("x", "w", "fp32").mismatch(a) or "")
    assert "precision" in (Identity("c", "w", "int4").mismatch(a) or "")
