"""``rgmobile package``: pairings, the validation gate, tampered bundles, weights stored once, the self-test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_helpers import rehash, tiny_onnx_artifact
from typer.testing import CliRunner

from exporter.artifact.genai import GENAI_FILES
from exporter.artifact.manifest import read_manifest
from exporter.errors import RgMobileError
from rgmobile.cli import app
from rgmobile.package.bundle import PackageOptions, check_bundle, package, selftest_bundle
from rgmobile.package.onnx_bundle import inline_initializer_bytes
from rgmobile.package.selftest import SELFTEST_NAME

runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    return tiny_onnx_artifact(tmp_path_factory, tiny_checkpoint)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_onnx: Path) -> Path:
    out = tmp_path_factory.mktemp("pkg") / "tiny-android"
    result = _invoke("package", tiny_onnx, "--target", "android", "--out", out, "--name", "tiny")
    assert result.exit_code == 0, result.output
    assert "validation passed" in result.output and "weights.bin" in result.output
    return out


def _copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / bundle.name))


def _scale_one_tensor(bundle: Path, factor: float) -> str:
    """Scale the largest float tensor inside weights.bin in place; returns its name."""
    proto = onnx.load_model(str(bundle / "decode.onnx"), load_external_data=False)
    spans = []
    for init in proto.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL and init.data_type == onnx.TensorProto.FLOAT:
            info = {e.key: e.value for e in init.external_data}
            spans.append((int(info["length"]), int(info["offset"]), init.name))
    length, offset, name = max(spans)
    with open(bundle / "weights.bin", "r+b") as f:
        f.seek(offset)
        values = np.frombuffer(f.read(length), dtype="<f4") * np.float32(factor)
        f.seek(offset)
        f.write(values.astype("<f4").tobytes())
    return name


# --- the tiny model: fast ------------------------------------------------------------------------


def test_onnx_android_bundle_layout_and_manifest(tiny_bundle: Path, tiny_onnx: Path) -> None:
    names = {p.name for p in tiny_bundle.iterdir()}
    expected = {"manifest.json", "tokenizer.model", SELFTEST_NAME, "README.txt", "decode.onnx", "prefill.onnx"}
    # the tiny tokenizer is not in Gemma's layout: no onnxruntime-genai files (tests/test_genai.py)
    assert expected | {"weights.bin"} == names and not set(GENAI_FILES) & names
    m = read_manifest(tiny_bundle)
    assert m.bundle is not None and m.bundle["target"] == "android" and m.bundle["name"] == "tiny"
    assert m.bundle["validation"]["status"] == "pass" and len(m.bundle["validation"]["report_sha256"]) == 64
    assert m.bundle["state_bytes"] == m.config.state_bytes(dtype_bytes=4)["total"]
    source = read_manifest(tiny_onnx)
    assert m.identity == source.identity and m.identity is not None and m.identity["precision"] == "fp32"
    assert m.runtime_requirements == {"onnxruntime": "1.18.0"}
    assert "adb push" in (tiny_bundle / "README.txt").read_text()
    assert "/data/local/tmp/rgmobile/tiny/" in (tiny_bundle / "README.txt").read_text()


def test_check_and_selftest_from_the_cli(tiny_bundle: Path) -> None:
    result = _invoke("package", "--check", tiny_bundle, "--selftest")
    assert result.exit_code == 0, result.output
    assert "self-test passed" in result.output and "onnxruntime >= 1.18.0" in result.output


def test_onnx_ios_bundle(tiny_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny-ios"
    result = _invoke("package", tiny_onnx, "--target", "ios", "--out", out)
    assert result.exit_code == 0, result.output
    m = check_bundle(out).manifest
    assert m.bundle is not None and m.bundle["target"] == "ios" and m.bundle["name"] == "tiny-ios"
    assert "Documents" in (out / "README.txt").read_text()


def test_wrong_pairing_is_refused(tiny_onnx: Path, tmp_path: Path) -> None:
    fake = Path(shutil.copytree(tiny_onnx, tmp_path / "fake-coreml"))
    data = json.loads((fake / "manifest.json").read_text())
    data["format"] = "coreml"  # manifest.json is not hashed: only the pairing can refuse this
    (fake / "manifest.json").write_text(json.dumps(data))
    line = _one_line_error(_invoke("package", fake, "--target", "android", "--out", tmp_path / "b"))
    assert "cannot package a coreml artifact for android" in line
    assert not (tmp_path / "b").exists()
    with pytest.raises(RgMobileError, match="--target must be one of"):
        PackageOptions(artifact=tiny_onnx, target="windows", out=tmp_path / "c")


def test_broken_artifact_is_refused(tiny_onnx: Path, tmp_path: Path) -> None:
    broken = Path(shutil.copytree(tiny_onnx, tmp_path / "broken"))
    (broken / "tokenizer.model").write_bytes(b"x" + (broken / "tokenizer.model").read_bytes()[1:])
    line = _one_line_error(_invoke("package", broken, "--target", "android", "--out", tmp_path / "b"))
    assert "tokenizer.model sha256" in line


def test_failing_artifact_is_not_packaged(tiny_onnx: Path, tmp_path: Path) -> None:
    """Weights altered with the sha256 fixed: only the validation gate can refuse it."""
    bad = Path(shutil.copytree(tiny_onnx, tmp_path / "bad"))
    proto = onnx.load_model(str(bad / "decode.onnx"))
    init = max(proto.graph.initializer, key=lambda i: len(i.raw_data))
    values = onnx.numpy_helper.to_array(init) * np.float32(1.5)
    init.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), init.name))
    onnx.save_model(proto, str(bad / "decode.onnx"))
    rehash(bad)
    line = _one_line_error(_invoke("package", bad, "--target", "android", "--out", tmp_path / "b"))
    assert "fails validation" in line and "threshold" in line
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("damage", ["flip", "missing", "manifest-newer", "selftest-newer", "symlink"])
def test_tampered_bundle_is_refused(tiny_bundle: Path, tmp_path: Path, damage: str) -> None:
    b = _copy(tiny_bundle, tmp_path)
    if damage == "flip":
        data = bytearray((b / "weights.bin").read_bytes())
        data[len(data) // 2] ^= 0x01
        (b / "weights.bin").write_bytes(bytes(data))
        expect = "weights.bin sha256"
    elif damage == "missing":
        (b / "prefill.onnx").unlink()
        expect = "prefill.onnx listed in manifest.json is missing"
    elif damage == "manifest-newer":
        data = json.loads((b / "manifest.json").read_text())
        data["schema_version"] = 2
        (b / "manifest.json").write_text(json.dumps(data))
        expect = "newer than this rgmobile reads"
    elif damage == "selftest-newer":
        data = json.loads((b / SELFTEST_NAME).read_text())
        data["schema_version"] = 2
        (b / SELFTEST_NAME).write_text(json.dumps(data))
        rehash(b)  # the sha256 agrees: only the schema check can refuse it
        expect = "newer than this rgmobile reads"
    else:
        (b / "README.txt").unlink()
        (b / "README.txt").symlink_to(tiny_bundle / "README.txt")
        expect = "symlink"
    line = _one_line_error(_invoke("package", "--check", b))
    assert expect in line
    with pytest.raises(RgMobileError):
        check_bundle(b)


def test_selftest_fails_when_the_weights_are_altered(tiny_bundle: Path, tmp_path: Path) -> None:
    b = _copy(tiny_bundle, tmp_path)
    _scale_one_tensor(b, 1.05)
    rehash(b)
    check_bundle(b)  # the bundle is consistent: the sha256 were fixed
    result = selftest_bundle(b)
    assert not result.passed and result.worst_error > 1e-3, result.summary()
    cli = _invoke("package", "--check", b, "--selftest")
    assert cli.exit_code == 1 and "self-test FAILED" in cli.output


def test_existing_non_bundle_out_is_refused(tiny_onnx: Path, tmp_path: Path) -> None:
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("mine")
    with pytest.raises(RgMobileError, match="not an rgmobile artifact folder"):
        PackageOptions(artifact=tiny_onnx, target="android", out=tmp_path / "occupied")
    # A web app's folder that merely has a manifest.json is not ours either: nothing in it is deleted.
    web = tmp_path / "webapp"
    web.mkdir()
    (web / "manifest.json").write_text('{"name": "my app", "start_url": "/"}')
    (web / "index.html").write_text("<html></html>")
    with pytest.raises(RgMobileError, match="not an rgmobile manifest"):
        PackageOptions(artifact=tiny_onnx, target="android", out=web)
    assert sorted(p.name for p in web.iterdir()) == ["index.html", "manifest.json"]


def test_replacing_a_bundle_keeps_files_the_user_added(tiny_bundle: Path, tiny_onnx: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / "NOTES.txt").write_text("my notes")
    with pytest.raises(RgMobileError, match="does not list"):
        PackageOptions(artifact=tiny_onnx, target="android", out=bundle)
    assert (bundle / "NOTES.txt").read_text() == "my notes"
    with pytest.raises(RgMobileError, match="is the artifact folder or inside it"):
        PackageOptions(artifact=tiny_onnx, target="android", out=tiny_onnx / "bundle")


# --- other formats (slow: lowering / conversion) -------------------------------------------------


@pytest.fixture(scope="module")
def tiny_et_int8(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An int8 ExecuTorch export: one .pte, the layout the Android app loads."""
    out = tmp_path_factory.mktemp("et-int8") / "tiny-et-int8"
    result = _invoke("export", tiny_checkpoint, "--format", "executorch", "--quant", "int8", "--out", out,
                     "--prefill-chunk", "8")  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_executorch_android_bundle_and_ios_refusal(tiny_et_int8: Path, tmp_path: Path) -> None:
    line = _one_line_error(_invoke("package", tiny_et_int8, "--target", "ios", "--out", tmp_path / "no"))
    assert "cannot package a executorch artifact for ios" in line
    out = tmp_path / "et-android"
    package(PackageOptions(artifact=tiny_et_int8, target="android", out=out))
    m = check_bundle(out).manifest
    assert {f.path for f in m.files} >= {"model.pte", "tokenizer.model", SELFTEST_NAME, "README.txt"}
    assert m.runtime_requirements == {"executorch": "1.5.1"}
    assert selftest_bundle(out).passed


@pytest.mark.slow
def test_fp32_executorch_with_a_data_file_is_refused_for_android(tiny_et_artifact: Path, tmp_path: Path) -> None:
    """ExecuTorch's Android Module loads one .pte: the fp32 program's model.ptd would not load in the app."""
    line = _one_line_error(_invoke("package", tiny_et_artifact, "--target", "android", "--out", tmp_path / "no"))
    assert "its weights are in model.ptd" in line and "--quant int8 or --quant int4" in line
    assert not (tmp_path / "no").exists()


@pytest.mark.slow
def test_coreml_ios_bundle_is_incomplete_on_linux(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from rgmobile.export import ExportOptions, export

    artifact = tmp_path / "cm"
    export(ExportOptions(out=artifact, format="coreml", checkpoint=tiny_checkpoint, prefill_chunk=8, ios=18))
    line = _one_line_error(_invoke("package", artifact, "--target", "android", "--out", tmp_path / "no"))
    assert "cannot package a coreml artifact for android" in line
    out = tmp_path / "cm-ios"
    result = _invoke("package", artifact, "--target", "ios", "--out", out)
    assert result.exit_code == 0, result.output
    assert "validation INCOMPLETE" in result.output and "validation passed" not in result.output
    m = check_bundle(out).manifest
    assert m.bundle is not None and m.bundle["validation"]["status"] == "incomplete"
    assert m.runtime_requirements == {"ios": "18", "macos": "15"}
    selftest = json.loads((out / SELFTEST_NAME).read_text())
    assert all(c["artifact_greedy_ids"] is None for c in selftest["cases"])


# --- the bundled model (slow: shared session bundles) --------------------------------------------


@pytest.mark.slow
def test_bundled_fp32_weights_are_stored_once(onnx_bundles: dict[str, Path]) -> None:
    b = onnx_bundles["fp32"]
    m = read_manifest(b)
    weight_bytes = 4 * m.config.parameter_counts()["total"]
    total = sum(f.size for f in m.files)
    assert total < 1.2 * weight_bytes, (total, weight_bytes)
    for graph in m.program_files():  # the default export: one step.onnx
        assert inline_initializer_bytes(b / graph) == 0
        assert (b / graph).stat().st_size < 0.05 * weight_bytes
    assert m.format_details["external_data"] == "weights.bin"
    assert {f.path for f in m.files} >= set(GENAI_FILES)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_bundled_selftest_passes(onnx_bundles: dict[str, Path], precision: str) -> None:
    b = onnx_bundles[precision]
    m = check_bundle(b).manifest
    assert m.precision == precision and m.bundle is not None and m.bundle["validation"]["status"] == "pass"
    expected = {"fp32": "1.18.0", "int4": "1.23.0"}[precision]
    assert m.runtime_requirements == {"onnxruntime": expected}
    result = selftest_bundle(b)
    assert result.passed, result.summary()
    data = json.loads((b / SELFTEST_NAME).read_text())
    assert data["window"] == 64 and all(c["max_new_tokens"] == 128 for c in data["cases"])
    if precision == "fp32":
        assert result.worst_error < 1e-4 and result.worst_match == 1.0
        assert all(c["artifact_greedy_ids"] == c["reference_greedy_ids"] for c in data["cases"])
