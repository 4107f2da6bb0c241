"""manifest.json: round trip, schema validation, file integrity (no export needed: fake program files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_config

from exporter.artifact.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    Manifest,
    Program,
    describe_lengths,
    file_entries,
    read_manifest,
    write_manifest,
)
from exporter.errors import RgMobileError
from exporter.step.iospec import build_iospec


def _artifact(root: Path, programs: dict[str, Program] | None = None, files: dict[str, bytes] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    files = files or {"decode.onnx": b"decode graph", "prefill.onnx": b"prefill graph" * 10, "tokenizer.model": b"spm"}
    for name, blob in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(blob)
    config = tiny_config()
    manifest = Manifest(
        format="onnx",
        source={"checkpoint": "/ckpt/tiny", "kind": "hf"},
        precision="fp32",
        config=config,
        tokenizer_file="tokenizer.model",
        prefill_chunk=max(p.seq_len for p in (programs or {"p": Program("prefill.onnx", 32)}).values()),
        io=build_iospec(config),
        programs=programs or {"decode": Program("decode.onnx", 1), "prefill": Program("prefill.onnx", 32)},
        files=file_entries(root),
        format_details={"opset": 18},
    )
    write_manifest(root, manifest)
    return root


def _edit(root: Path, change) -> None:
    data = json.loads((root / MANIFEST_NAME).read_text())
    change(data)
    (root / MANIFEST_NAME).write_text(json.dumps(data))


def test_round_trip(tmp_path: Path) -> None:
    root = _artifact(tmp_path / "a")
    m = read_manifest(root)
    assert m.schema_version == SCHEMA_VERSION and m.format == "onnx"
    assert m.config == tiny_config() and m.io == build_iospec(tiny_config())
    assert m.special_tokens == {"bos_id": 2, "eos_id": 1, "pad_id": 0}
    assert m.seq_lens() == (32, 1) and m.program_for(1) == ("decode", Program("decode.onnx", 1))
    assert [f.path for f in m.files] == ["decode.onnx", "prefill.onnx", "tokenizer.model"]
    assert m.data_file is None  # only an artifact with a listed data file names one
    assert m.files[1].size == 130 and len(m.files[1].sha256) == 64
    assert m.created.endswith("Z") and m.rgmobile_version
    assert Manifest.from_dict(m.to_dict()) == m
    data = json.loads((root / MANIFEST_NAME).read_text())
    io_in = {s["name"]: s for s in data["io"]["inputs"]}
    assert io_in["past_key_values.2.key"]["pair"] == "present.2.key"
    assert io_in["past_key_values.2.key"]["shape"] == ["batch", 1, 16, 16]
    assert data["config"]["window"] == 16 and data["programs"]["prefill"] == {"file": "prefill.onnx", "seq_len": 32}


def test_directory_programs_are_hashed_file_by_file(tmp_path: Path) -> None:
    """Core ML: a program is a .mlpackage folder; every file inside is pinned, with an entry name."""
    files = {"model.mlpackage/Manifest.json": b"{}", "model.mlpackage/Data/weights.bin": b"w" * 100,
             "tokenizer.model": b"spm"}  # fmt: skip
    progs = {
        "decode": Program("model.mlpackage", 1, entry="decode"),
        "prefill": Program("model.mlpackage", 16, "prefill"),
    }
    root = _artifact(tmp_path / "c", programs=progs, files=files)
    m = read_manifest(root)
    assert m.programs["prefill"].entry == "prefill"
    assert "model.mlpackage/Data/weights.bin" in {f.path for f in m.files}
    (root / "model.mlpackage/Data/weights.bin").write_bytes(b"x" * 100)
    with pytest.raises(RgMobileError, match=r"model.mlpackage/Data/weights.bin sha256"):
        read_manifest(root)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("io"), r"missing required field\(s\) \['io'\]"),
        (lambda d: d.update(schema_version=SCHEMA_VERSION + 1), "newer than this rgmobile reads.*upgrade"),
        (lambda d: d.update(schema_version="1"), "non-integer schema_version"),
        (lambda d: d.update(prefill_chunk="32"), "field 'prefill_chunk' must be int"),
        (lambda d: d.update(quantization=[]), "'quantization' must be dict or null"),
        (lambda d: d["config"].update(window=0), "window must be a positive integer"),
        (lambda d: d["config"].update(depth=3), "unknown field"),
        (lambda d: d["programs"].pop("decode"), "no program with seq_len 1"),
        (lambda d: d["programs"]["prefill"].update(file="other.onnx"), "'other.onnx' is not listed"),
        (lambda d: d["programs"]["prefill"].update(file="../x.onnx"), "must be relative, inside the artifact"),
        (lambda d: d["format_details"].update(data_file="model.ptd"), "data_file 'model.ptd' is not listed"),
        (lambda d: d["format_details"].update(data_file=3), "data_file 3 is not listed"),
        (lambda d: d["files"][0].update(sha256="abc"), "64-hex-digit"),
        (lambda d: d.update(prefill_chunk=8), "not the largest program seq_len"),
        (lambda d: d["programs"]["prefill"].update(min_seq_len=0), "'min_seq_len' must be an integer from 1"),
        (lambda d: d["programs"]["prefill"].update(min_seq_len=33), "'min_seq_len' must be an integer from 1"),
        (lambda d: d["programs"]["prefill"].update(min_seq_len=True), "'min_seq_len' must be an integer from 1"),
        (lambda d: d["programs"]["prefill"].update(min_seq_len=1), "'decode' and 'prefill' both run 1 tokens"),
        (lambda d: d["special_tokens"].pop("eos_id"), "special_tokens needs integer"),
        (lambda d: d["io"]["inputs"][2].update(pair="present.9.key"), "not paired"),
        (lambda d: d["io"]["outputs"][0].update(shape=["batch", "seq", 7]), "logits width 7"),
    ],
)
def test_schema_errors(tmp_path: Path, change, message: str) -> None:
    root = _artifact(tmp_path / "s")
    _edit(root, change)
    with pytest.raises(RgMobileError, match=message):
        read_manifest(root)


def test_a_program_may_run_a_range_of_lengths(tmp_path: Path) -> None:
    """``min_seq_len``: the prefill program runs any t from it to its seq_len; the manifest lists every
    length once and finds the program of each; a reader of the older schema sees seq_len as before."""
    root = _artifact(tmp_path / "r")
    _edit(root, lambda d: d["programs"]["prefill"].update(min_seq_len=2))
    m = read_manifest(root)
    assert m.programs["prefill"] == Program("prefill.onnx", 32, min_seq_len=2)
    assert m.seq_lens() == tuple(range(32, 0, -1)) and describe_lengths(m.seq_lens()) == "32..1"
    assert m.program_for(5)[0] == "prefill" and m.program_for(1)[0] == "decode"
    assert describe_lengths([32, 1]) == "32, 1" and describe_lengths([9, 8, 7, 3, 1]) == "9..7, 3, 1"
    assert Manifest.from_dict(m.to_dict()) == m
    assert m.to_dict()["programs"]["prefill"] == {"file": "prefill.onnx", "seq_len": 32, "min_seq_len": 2}


def test_not_json_and_missing(tmp_path: Path) -> None:
    with pytest.raises(RgMobileError, match="no manifest.json; not an rgmobile artifact"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(RgMobileError, match="not valid JSON"):
        read_manifest(tmp_path)


def test_sha_size_and_missing_files(tmp_path: Path) -> None:
    root = _artifact(tmp_path / "f")
    (root / "decode.onnx").write_bytes(b"decode grapH")  # same size, different content
    with pytest.raises(RgMobileError, match=r"decode.onnx sha256 .* does not match manifest.json"):
        read_manifest(root)
    assert read_manifest(root, verify=False).format == "onnx"  # verify=False skips hashing
    (root / "decode.onnx").write_bytes(b"decode graph")
    (root / "prefill.onnx").write_bytes(b"prefill")
    with pytest.raises(RgMobileError, match=r"prefill.onnx is 7 bytes, manifest.json says 130 \(truncated"):
        read_manifest(root)
    (root / "prefill.onnx").unlink()
    with pytest.raises(RgMobileError, match="prefill.onnx listed in manifest.json is missing"):
        read_manifest(root)


def test_write_refuses_inconsistent_manifest(tmp_path: Path) -> None:
    root = _artifact(tmp_path / "w")
    m = read_manifest(root)
    bad = Manifest(**{**m.__dict__, "tokenizer_file": "tok.model"})
    with pytest.raises(RgMobileError, match="tokenizer_file 'tok.model' is not listed"):
        write_manifest(root, bad)
