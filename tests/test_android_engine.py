"""The Kotlin engine (android_demo/engine) against rgmobile's Python runtime on packaged bundles.

One ``mvn package`` per session builds the engine and runs its JUnit tests (tokenizer = sentencepiece
on every golden string, seeded sampling, typed bundle errors, greedy ids, self-test, resume) on the
fp32 and int4 bundles (the default export: decode and prefill in one ``step.onnx``, one session)
and the fp32 ``--graph-per-length`` bundle ("per_length": ``decode.onnx`` and ``prefill.onnx``); then
the runnable jar is compared with the Python loop: greedy ids on every self-test prompt (2 x window new
tokens), ``--selftest``, state files both ways, and exit 2 on a bad bundle. Needs Java 17 and Maven
(Maven Central or a filled ~/.m2).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from bundles import widen_a_state_dim

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "android_demo" / "engine"
JAR = ENGINE / "target" / "engine.jar"
THREADS = "1"


@pytest.fixture(scope="session")
def android_bundles(request: pytest.FixtureRequest) -> dict[str, Path]:
    """{"fp32", "int4", "per_length", "prefill8"}: packaged android bundles ("per_length": fp32 with
    ``--graph-per-length``; "prefill8": int4 with ``--prefill-int8``; the shared session fixtures;
    RGMOBILE_BUNDLE_* reuse ready ones)."""
    given = {p: os.environ.get(f"RGMOBILE_BUNDLE_{p.upper()}") for p in ("fp32", "int4", "per_length", "prefill8")}
    if all(given.values()):
        return {p: Path(str(v)) for p, v in given.items()}
    per_length = request.getfixturevalue("per_length_bundles")["android"]
    prefill8 = request.getfixturevalue("prefill8_bundles")["android"]
    return {**request.getfixturevalue("onnx_bundles"), "per_length": per_length, "prefill8": prefill8}


@pytest.fixture(scope="session")
def engine_jar(android_bundles: dict[str, Path]) -> Path:
    """Build the jar with ``mvn package``: the JUnit suite runs first, on the same bundles."""
    if shutil.which("mvn") is None or shutil.which("java") is None:
        pytest.fail("Maven and Java 17 are needed to build the Kotlin engine (scripts/test.sh installs them)")
    env = {
        **os.environ,
        "RGMOBILE_BUNDLE_FP32": str(android_bundles["fp32"]),
        "RGMOBILE_BUNDLE_INT4": str(android_bundles["int4"]),
        "RGMOBILE_BUNDLE_PER_LENGTH": str(android_bundles["per_length"]),
        "RGMOBILE_UNIT_ONLY": "0",
    }
    shutil.rmtree(ENGINE / "target" / "surefire-reports", ignore_errors=True)  # no stale reports from other runs
    proc = subprocess.run(
        ["mvn", "-B", "-q", "-f", str(ENGINE / "pom.xml"), "package"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, f"mvn package failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    reports = list((ENGINE / "target" / "surefire-reports").glob("TEST-*.xml"))
    text = "".join(r.read_text() for r in reports)
    skipped = [int(n) for n in re.findall(r'<testsuite [^>]*skipped="(\d+)"', text)]
    assert len(skipped) == len(reports) >= 5 and sum(skipped) == 0, f"JUnit skipped {skipped} tests in bundle mode"
    assert JAR.is_file()
    return JAR


def run_jar(jar: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["java", "-jar", str(jar), *args], capture_output=True, text=True, timeout=600)


def python_backend(bundle: Path):  # noqa: ANN201
    from runtime_py.open import open_path
    from runtime_py.tokenizer import Tokenizer

    opened = open_path(bundle, threads=int(THREADS))
    return opened.backend, Tokenizer(opened.tokenizer_path)


@pytest.mark.parametrize("precision", ["fp32", "int4", "per_length", "prefill8"])
def test_jar_greedy_ids_equal_python(engine_jar: Path, android_bundles: dict[str, Path], precision: str) -> None:
    from runtime_py.generate import generate

    bundle = android_bundles[precision]
    selftest = json.loads((bundle / "selftest.json").read_text())
    backend, tok = python_backend(bundle)
    # the default export names one step.onnx for decode and prefill: Python opens one session (JUnit checks Kotlin's)
    assert len({id(s) for s in backend.sessions.values()}) == (2 if precision in ("per_length", "prefill8") else 1)
    for case in selftest["cases"]:
        n = case["max_new_tokens"]
        assert n >= 2 * selftest["window"]
        expected = generate(backend, tok, case["prompt"], n).new_ids
        proc = run_jar(engine_jar, str(bundle), "--prompt", case["prompt"], "--max-new-tokens", str(n),
                       "--ids", "--threads", THREADS)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        assert got == expected, f"{precision} case {case['name']}: Kotlin ids differ from Python's"
        assert "tok/s" in proc.stderr


def test_jar_without_spinning_threads_gives_the_same_ids(engine_jar: Path, android_bundles: dict[str, Path]) -> None:
    from runtime_py.generate import generate

    bundle = android_bundles["int4"]
    case = json.loads((bundle / "selftest.json").read_text())["cases"][0]
    backend, tok = python_backend(bundle)
    expected = generate(backend, tok, case["prompt"], 48).new_ids
    proc = run_jar(engine_jar, str(bundle), "--prompt", case["prompt"], "--max-new-tokens", "48", "--ids",
                   "--threads", "2", "--no-spin")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == expected


@pytest.mark.parametrize("precision", ["fp32", "int4", "per_length", "prefill8"])
def test_jar_selftest_passes(engine_jar: Path, android_bundles: dict[str, Path], precision: str) -> None:
    bundle = android_bundles[precision]
    tolerances = json.loads((bundle / "selftest.json").read_text())["tolerances"]
    proc = run_jar(engine_jar, str(bundle), "--selftest", "--threads", THREADS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["passed"] and result["failures"] == [] and result["tokenizer_mismatches"] == 0
    assert result["worst_error"] <= tolerances["max_abs_logits"]
    assert result["worst_match"] >= tolerances["greedy_match"]
    # The same checks run by rgmobile's Python runtime on the same bundle agree with Kotlin's.
    from rgmobile.package.bundle import selftest_bundle

    py = selftest_bundle(bundle, threads=int(THREADS))
    assert py.passed
    assert result["agreement"] == pytest.approx(py.agreement, abs=1e-12)
    assert result["matches"] == pytest.approx(py.matches, abs=1e-12)
    assert result["worst_error"] == pytest.approx(py.worst_error, abs=1e-4)


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_state_files_cross_between_kotlin_and_python(
    engine_jar: Path, android_bundles: dict[str, Path], precision: str, tmp_path: Path
) -> None:
    from runtime_py.generate import generate

    bundle = android_bundles[precision]
    backend, tok = python_backend(bundle)
    prompt, n, k = "The river ran past the old stone house", 140, 45
    full = generate(backend, tok, prompt, n).new_ids
    # Kotlin saves after k tokens, Python resumes.
    kt_state = tmp_path / "kotlin.rgstate"
    proc = run_jar(engine_jar, str(bundle), "--prompt", prompt, "--max-new-tokens", str(k), "--ids",
                   "--save-state", str(kt_state), "--threads", THREADS)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == full[:k]
    resumed = generate(backend, tok, "", n - k, resume=kt_state).new_ids
    assert resumed == full[k:], "Python resuming the Kotlin state differs from the uninterrupted run"
    # Python saves after k tokens, Kotlin resumes.
    py_state = tmp_path / "python.rgstate"
    assert generate(backend, tok, prompt, k, save_state=py_state).new_ids == full[:k]
    proc = run_jar(engine_jar, str(bundle), "--resume", str(py_state), "--max-new-tokens", str(n - k), "--ids",
                   "--threads", THREADS)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == full[k:]


def _broken_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _repin(bundle: Path, rel: str) -> None:
    import hashlib

    manifest = json.loads((bundle / "manifest.json").read_text())
    data = (bundle / rel).read_bytes()
    for f in manifest["files"]:
        if f["path"] == rel:
            f["size"], f["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_jar_exits_2_on_bad_bundles(
    engine_jar: Path, android_bundles: dict[str, Path], tmp_path: Path, tiny_tokenizer: Path
) -> None:
    src = android_bundles["fp32"]
    cases: dict[str, tuple[Path, str]] = {}
    d = _broken_copy(src, tmp_path / "missing")
    (d / "tokenizer.model").unlink()
    cases["missing"] = (d, "missing")
    d = _broken_copy(src, tmp_path / "sha")
    raw = bytearray((d / "tokenizer.model").read_bytes())
    raw[len(raw) // 2] ^= 1
    (d / "tokenizer.model").write_bytes(bytes(raw))
    cases["sha256"] = (d, "sha256")
    d = _broken_copy(src, tmp_path / "schema")
    m = json.loads((d / "manifest.json").read_text())
    m["schema_version"] = 2
    (d / "manifest.json").write_text(json.dumps(m))
    cases["schema"] = (d, "newer")
    d = _broken_copy(src, tmp_path / "tokenizer")
    shutil.copyfile(tiny_tokenizer, d / "tokenizer.model")  # a real SentencePiece model, 300 pieces
    _repin(d, "tokenizer.model")
    cases["tokenizer"] = (d, "wrong tokenizer")
    d = _broken_copy(src, tmp_path / "io")
    widen_a_state_dim(d)
    cases["io"] = (d, "the manifest's io spec says")
    for name, (bundle, words) in cases.items():
        proc = run_jar(engine_jar, str(bundle), "--prompt", "Hi", "--max-new-tokens", "2")
        assert proc.returncode == 2, f"{name}: exit {proc.returncode}\n{proc.stderr}"
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], f"{name}: {proc.stderr}"


def test_tokenizer_with_user_defined_pieces_equals_sentencepiece(engine_jar: Path, tmp_path: Path) -> None:
    """Gemma's real tokenizer has USER_DEFINED pieces (matched whole, never merged); the bundled one has none."""
    import random

    import sentencepiece as spm

    from exporter.artifact.tokenizer_strings import tokenizer_strings

    rng = random.Random(0)
    words = "the a cat dog sat on mat ran far away big small house tree river stone light dark café 東京".split()
    lines = [f"<start_of_turn>user {' '.join(rng.choice(words) for _ in range(12))}.<end_of_turn>" for _ in range(400)]
    (tmp_path / "corpus.txt").write_text("\n".join(lines))
    spm.SentencePieceTrainer.Train(
        input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / "tok"), vocab_size=400, model_type="bpe",
        byte_fallback=True, pad_id=0, eos_id=1, bos_id=2, unk_id=3, minloglevel=2, normalization_rule_name="identity",
        add_dummy_prefix=False, remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>", "\n\n"],
    )  # fmt: skip
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tok.model"))
    texts = [
        "<start_of_turn>user hi<end_of_turn>\n\nthe cat", "<start_of_turn><end_of_turn>", "x<start_of_turnx",
        "東京 🙂 café\n\n\n", "12345 the dog", *tokenizer_strings(),
    ]  # fmt: skip
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    proc = run_jar(
        engine_jar, "--tokenizer", str(tmp_path / "tok.model"), "--encode-json", str(tmp_path / "texts.json")
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    user_id = sp.piece_to_id("<start_of_turn>")
    assert user_id in got[0]["ids"]
    bad = [
        t for t, g in zip(texts, got, strict=True) if g["ids"] != sp.encode(t) or g["decoded"] != sp.decode(g["ids"])
    ]
    assert bad == [], f"Kotlin differs from sentencepiece on {len(bad)} strings, e.g. {bad[:3]}"
