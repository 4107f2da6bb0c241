"""Hostile inputs end in one RgMobileError (CLI: one line, exit 2), never a traceback or a lost file."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from conftest import tiny_config, tiny_model
from typer.testing import CliRunner

from exporter.artifact.manifest import Manifest, Program, file_entries, read_manifest, write_manifest
from exporter.artifact.out_folder import check_replaceable
from exporter.checkpoint.hf_config import config_from_hf, config_to_hf
from exporter.config import GriffinConfig
from exporter.errors import RgMobileError
from exporter.fsio import atomic_dir
from exporter.step.iospec import build_iospec
from rgmobile.cli import app, user_errors
from rgmobile.export import ExportOptions
from runtime_py.sampling import Sampler, SamplingConfig

# --- helpers -------------------------------------------------------------------------------------------------------


def fake_artifact(folder: Path, tokenizer: Path, graph: bytes = b"graph") -> Path:
    """A folder whose manifest parses as ours and lists every file (no real graph inside)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = tiny_config(window=8)
    (folder / "decode.onnx").write_bytes(graph)
    shutil.copyfile(tokenizer, folder / "tokenizer.model")
    manifest = Manifest(
        format="onnx", source={"checkpoint": "x", "kind": "hf"}, precision="fp32", config=config,
        tokenizer_file="tokenizer.model", prefill_chunk=1, io=build_iospec(config),
        programs={"decode": Program("decode.onnx", 1)}, files=file_entries(folder),
    )  # fmt: skip
    write_manifest(folder, manifest)
    return folder


def dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


# --- data loss: export --out --------------------------------------------------------------------------------------


def test_export_refuses_a_web_app_folder_with_its_own_manifest(tmp_path: Path) -> None:
    web = tmp_path / "webapp"
    web.mkdir()
    (web / "manifest.json").write_text(json.dumps({"name": "My PWA", "start_url": "/"}))
    (web / "index.html").write_text("<html></html>")
    with pytest.raises(RgMobileError, match="not an rgmobile manifest"):
        ExportOptions(out=web)
    assert sorted(p.name for p in web.iterdir()) == ["index.html", "manifest.json"]


def test_export_refuses_an_artifact_holding_a_user_file(tmp_path: Path, tiny_tokenizer: Path) -> None:
    art = fake_artifact(tmp_path / "art", tiny_tokenizer)
    ExportOptions(out=art)  # an rgmobile artifact and nothing else: replaceable
    (art / "NOTES.txt").write_text("mine")
    with pytest.raises(RgMobileError, match="NOTES.txt"):
        ExportOptions(out=art)
    assert (art / "NOTES.txt").read_text() == "mine"


def test_replace_rechecks_at_the_swap(tmp_path: Path, tiny_tokenizer: Path) -> None:
    """A file added while the export ran is not deleted either: the check runs again just before the swap."""
    art = fake_artifact(tmp_path / "art", tiny_tokenizer)
    with pytest.raises(RgMobileError, match="late.txt"):
        with atomic_dir(art, check_replace=check_replaceable) as tmp:
            (tmp / "decode.onnx").write_bytes(b"new")
            (art / "late.txt").write_text("added during the export")
    assert (art / "late.txt").exists() and (art / "decode.onnx").read_bytes() == b"graph"
    assert [p.name for p in tmp_path.iterdir()] == ["art"]  # no staging left


def test_export_out_dot_inside_an_artifact_is_refused_before_any_work(
    tmp_path: Path, tiny_tokenizer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    art = fake_artifact(tmp_path / "art", tiny_tokenizer)
    monkeypatch.chdir(art)
    with pytest.raises(RgMobileError, match="current folder"):
        ExportOptions(out=Path("."))
    monkeypatch.chdir(art.parent)
    with pytest.raises(RgMobileError, match="current folder"):
        ExportOptions(out=Path(".."))  # an ancestor of the working folder
    (tmp_path / "link").symlink_to(art)
    with pytest.raises(RgMobileError, match="symbolic link"):
        ExportOptions(out=tmp_path / "link")


def test_stale_staging_of_a_killed_export_is_cleaned(tmp_path: Path) -> None:
    target = tmp_path / "art"
    stale = tmp_path / f".art.tmp-{dead_pid()}-abc"
    stale.mkdir()
    (stale / "decode.onnx").write_bytes(b"half")
    live = tmp_path / ".art.tmp-1-xyz"  # pid 1 is alive: another export in progress
    live.mkdir()
    foreign = tmp_path / ".art.tmp-notapid"  # not our naming: not ours to judge
    foreign.mkdir()
    with atomic_dir(target) as tmp:
        assert str(os.getpid()) in tmp.name  # the owner is recorded in the name
        (tmp / "f").write_text("x")
    assert not stale.exists() and live.exists() and foreign.exists() and (target / "f").exists()


def test_a_swap_interrupted_by_a_kill_is_undone(tmp_path: Path) -> None:
    """Killed between moving the old artifact aside and renaming the new one in: the old one comes back."""
    old = tmp_path / f".art.old-{dead_pid()}"
    old.mkdir()
    (old / "manifest.json").write_text("{}")
    with atomic_dir(tmp_path / "other"):
        pass
    with atomic_dir(tmp_path / "art") as tmp:
        assert (tmp_path / "art" / "manifest.json").exists()  # restored before this run replaces it
        (tmp / "new").write_text("x")
    assert not old.exists()


# --- config.json / manifest config: types and ranges ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("hidden_size", "256", "hidden_size"),
        ("num_hidden_layers", "6", "num_hidden_layers"),
        ("block_types", 3, "block_types"),
        ("attention_window_size", [16], "attention_window_size"),
        ("rope_theta", "big", "rope_theta"),
        ("rms_norm_eps", float("nan"), "rms_norm_eps"),
        ("attention_bias", "no", "attention_bias"),
        ("bos_token_id", "2", "bos_token_id"),
        ("rope_parameters", [1], "rope_parameters"),
        ("num_hidden_layers", 10**12, "num_hidden_layers"),
        ("attention_window_size", 10**9, "attention_window_size"),
        ("vocab_size", True, "vocab_size"),
    ],
)
def test_hf_config_wrong_types_name_the_key(key: str, value: object, named: str) -> None:
    hf = config_to_hf(tiny_config())
    hf[key] = value
    with pytest.raises(RgMobileError, match=named):
        config_from_hf(hf)


@pytest.mark.parametrize(
    ("key", "value"),
    [("window", "64"), ("width", 64.5), ("block_types", 5), ("logits_soft_cap", "30"), ("rope_theta", math.inf),
     ("embed_scale_by_sqrt_width", 1), ("bos_id", 10**6), ("window", 10**9), ("block_types", [3]),
     ("partial_rotary_factor", None), ("name", 7)],
)  # fmt: skip
def test_manifest_config_wrong_types_name_the_key(key: str, value: object) -> None:
    data = tiny_config().to_dict()
    data[key] = value
    with pytest.raises(RgMobileError, match=key):
        GriffinConfig.from_dict(data)


def test_int_floats_are_one_config() -> None:
    data = tiny_config().to_dict()
    data["logits_soft_cap"], data["rope_theta"] = 30, 10000
    assert GriffinConfig.from_dict(data).to_dict() == tiny_config().to_dict()


def test_a_config_too_big_for_memory_is_refused_before_allocating(tmp_path: Path) -> None:
    from exporter.checkpoint.loader import load_checkpoint
    from exporter.checkpoint.random_init import random_model
    from exporter.config import available_memory_bytes

    if available_memory_bytes() is None:  # without the check, random_model would really try to allocate it
        pytest.skip("available memory unknown on this OS (no /proc/meminfo)")
    huge = tiny_config().with_(vocab_size=2_000_000, width=65536, num_heads=64, lru_width=65536)
    with pytest.raises(RgMobileError, match="GiB"):
        random_model(huge)
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config_to_hf(huge)))
    with pytest.raises(RgMobileError, match="GiB"):  # before the (absent) weights are even looked for
        load_checkpoint(folder)


# --- sampling ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{"temperature": float("nan")}, {"temperature": float("inf")}, {"temperature": -1.0}, {"top_p": float("nan")},
     {"seed": -1}, {"seed": 2**64}, {"top_k": -3}],
)  # fmt: skip
def test_sampling_options_are_checked(kwargs: dict) -> None:
    with pytest.raises(RgMobileError):
        SamplingConfig(**kwargs)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_sampling_from_nan_logits_is_a_clear_error(temperature: float) -> None:
    logits = np.zeros(16, dtype=np.float32)
    logits[3] = np.nan
    with pytest.raises(RgMobileError, match="non-finite"):
        Sampler(SamplingConfig(temperature=temperature, seed=0))(logits)


def test_a_tiny_temperature_is_its_limit_greedy() -> None:
    logits = np.array([0.0, 3.0, 1.0], dtype=np.float32)
    assert Sampler(SamplingConfig(temperature=1e-320, seed=0))(logits) == 1


# --- CLI: one line, exit 2 ------------------------------------------------------------------------------------------


def _one_line(result) -> str:  # noqa: ANN001
    text = result.output.strip()
    assert result.exit_code == 2, text
    assert "Traceback" not in text and "╭" not in text, text
    assert len(text.splitlines()) <= 2, text
    return text


@pytest.mark.parametrize(
    "args",
    [["generate", "--max-new-tokens", "abc"], ["export", "--bogus"], ["generate", "--temperature", "nan"],
     ["generate", "--seed", "-1"], ["nosuchcommand"]],
)  # fmt: skip
def test_cli_usage_and_option_errors_are_one_line(args: list[str]) -> None:
    _one_line(CliRunner().invoke(app, args))


def test_cli_prompt_that_is_not_utf8(tiny_checkpoint: Path) -> None:
    text = _one_line(CliRunner().invoke(app, ["generate", str(tiny_checkpoint), "--prompt", "caf\udce9",
                                             "--max-new-tokens", "2"]))  # fmt: skip
    assert "UTF-8" in text


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS, errno.EPERM])
def test_user_errors_turns_unwritable_paths_into_one_line(code: int, capsys: pytest.CaptureFixture[str]) -> None:
    @user_errors
    def write() -> None:
        raise OSError(code, os.strerror(code), "/nowhere/report.json")

    with pytest.raises(typer.Exit) as exc:
        write()
    assert exc.value.exit_code == 2
    err = capsys.readouterr().err.strip()
    assert "/nowhere/report.json" in err and len(err.splitlines()) == 1


def test_cli_report_in_an_unwritable_folder(tmp_path: Path, tiny_tokenizer: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere; the errno mapping is covered by the user_errors test")
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    _one_line(CliRunner().invoke(app, ["export", "--out", str(ro / "art")]))


# --- artifacts: symlinks, graphs that do not match the manifest ----------------------------------------------------


def test_a_symlinked_artifact_file_is_refused(tmp_path: Path, tiny_tokenizer: Path) -> None:
    art = fake_artifact(tmp_path / "art", tiny_tokenizer)
    outside = tmp_path / "secret.model"
    shutil.copyfile(art / "tokenizer.model", outside)  # same bytes: size and sha256 would match
    (art / "tokenizer.model").unlink()
    (art / "tokenizer.model").symlink_to(outside)
    with pytest.raises(RgMobileError, match="symbolic link"):
        read_manifest(art)


def _onnx_graph(config: GriffinConfig, seq: int, state_dtype: int | None = None, bad_dim: bool = False,
                fail_at_run: bool = False) -> bytes:  # fmt: skip
    """A graph with the IOSpec's I/O: logits from a Cast + Expand, each present = Identity(past)."""
    import onnx
    from onnx import TensorProto, helper

    io = build_iospec(config)
    types = {"int64": TensorProto.INT64, "float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}

    def vi(spec, first: bool) -> onnx.ValueInfoProto:  # noqa: ANN001
        dims = [seq if d == "seq" else d for d in spec.shape]
        t = types[spec.dtype]
        if spec.role == "state" and state_dtype is not None:
            t = state_dtype
        if first and spec.role == "state" and bad_dim:
            dims[-1] = dims[-1] + 1
        return helper.make_tensor_value_info(spec.name, t, dims)

    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [1, seq, config.vocab_size + (5 if fail_at_run else 0)])
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["f", "shape"], ["logits"]) if fail_at_run else
        helper.make_node("Expand", ["f3", "shape"], ["logits"]),
        helper.make_node("Unsqueeze", ["f", "axis"], ["f3"]),
    ]  # fmt: skip
    for s in io.state_inputs:
        nodes.append(helper.make_node("Identity", [s.name], [s.pair]))
    axis = helper.make_tensor("axis", TensorProto.INT64, [1], [2])
    ins = [vi(s, i == 2) for i, s in enumerate(io.inputs)]
    outs = [vi(s, False) for s in io.outputs]
    graph = helper.make_graph(nodes, "fake", ins, outs, initializer=[shape, axis])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model.SerializeToString()


@pytest.mark.parametrize(
    ("tweak", "match"),
    [({"state_dtype": 10}, "tensor\\(float16\\)"), ({"bad_dim": True}, "past_key_values.0")],  # 10 = FLOAT16
)
def test_onnx_graph_that_does_not_match_the_manifest_is_refused_at_open(
    tmp_path: Path, tiny_tokenizer: Path, tweak: dict, match: str
) -> None:
    from runtime_py.onnx_backend import OnnxBackend

    config = tiny_config(window=8)
    art = fake_artifact(tmp_path / "art", tiny_tokenizer, graph=_onnx_graph(config, 1, **tweak))
    with pytest.raises(RgMobileError, match=match):
        OnnxBackend(art, read_manifest(art))


def test_onnx_run_failure_is_one_error(tmp_path: Path, tiny_tokenizer: Path) -> None:
    from runtime_py.onnx_backend import OnnxBackend

    config = tiny_config(window=8)
    ok = fake_artifact(tmp_path / "ok", tiny_tokenizer, graph=_onnx_graph(config, 1))
    backend = OnnxBackend(ok, read_manifest(ok))
    logits, _ = backend.step(np.array([[5]]), np.array([[0]]), backend.init_state())
    assert logits.shape == (1, 1, config.vocab_size) and logits[0, 0, 0] == 5.0  # the fake graph runs
    art = fake_artifact(tmp_path / "art", tiny_tokenizer, graph=_onnx_graph(config, 1, fail_at_run=True))
    backend = OnnxBackend(art, read_manifest(art))
    with pytest.raises(RgMobileError, match="onnxruntime failed"):
        backend.step(np.array([[5]]), np.array([[0]]), backend.init_state())


# --- validate: a NaN model is reported as such -----------------------------------------------------------------


class _NanAfter:
    """Wraps a backend; its logits are NaN from absolute position ``start`` on."""

    def __init__(self, inner, start: int) -> None:  # noqa: ANN001
        self.inner, self.start = inner, start
        self.name, self.config = "nan", inner.config

    def seq_lens(self):  # noqa: ANN201
        return (4, 1)

    def init_state(self, batch: int = 1):  # noqa: ANN201
        return self.inner.init_state(batch)

    def step(self, ids, pos, state):  # noqa: ANN001, ANN201
        logits, state = self.inner.step(ids, pos, state)
        logits = logits.copy()
        logits[:, pos[0] >= self.start] = np.nan
        return logits, state

    def state_arrays(self, state):  # noqa: ANN001, ANN201
        return self.inner.state_arrays(state)


def test_validate_reports_a_nan_artifact_as_such() -> None:
    from runtime_py.thresholds import thresholds_for
    from runtime_py.torch_backend import TorchBackend
    from runtime_py.validate import check, compare, summarize

    model = tiny_model()
    cmp, greedy = compare(_NanAfter(TorchBackend(model), 6), TorchBackend(model), list(range(2, 12)), 4, 3)
    summary, where = summarize(cmp, greedy)
    failures = {f.metric: f for f in check(summary, where, thresholds_for("onnx", "fp32"))}
    assert "max_abs_logits" in failures and "NaN/Inf logits from position 6" in where["max_abs_logits"]


def test_validate_with_a_nan_reference_is_a_clear_error() -> None:
    from runtime_py.torch_backend import TorchBackend
    from runtime_py.validate import compare

    model = tiny_model()
    with pytest.raises(RgMobileError, match="reference .* NaN/Inf"):
        compare(TorchBackend(model), _NanAfter(TorchBackend(model), 3), list(range(2, 8)), 4, 2)


def test_tokenizer_refuses_text_that_is_not_utf8(tiny_tokenizer: Path) -> None:
    from runtime_py.tokenizer import Tokenizer

    with pytest.raises(RgMobileError, match="UTF-8"):
        Tokenizer(tiny_tokenizer).encode("caf\udce9")


def test_a_corrupt_tokenizer_is_one_error(
    tmp_path: Path, tiny_tokenizer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """scripts/fuzz.py found mutated tokenizer.model files whose loading raises UnicodeDecodeError (a piece
    that is not UTF-8) inside sentencepiece; the load is made to raise exactly that here."""
    import sentencepiece as spm

    from exporter.checkpoint.loader import check_tokenizer
    from runtime_py.tokenizer import Tokenizer

    def corrupt(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        raise UnicodeDecodeError("utf-8", b"\xa8", 0, 1, "invalid start byte")

    monkeypatch.setattr(spm.SentencePieceProcessor, "LoadFromFile", corrupt)
    with pytest.raises(RgMobileError, match="not a valid SentencePiece model"):
        check_tokenizer(tiny_tokenizer, tiny_config())
    with pytest.raises(RgMobileError, match="not a valid SentencePiece model"):
        Tokenizer(tiny_tokenizer)
