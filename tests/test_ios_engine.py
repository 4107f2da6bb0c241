"""The Swift engine (ios_demo/) on Linux: built and tested in the Debian trixie folder of scripts/setup_swift.sh.

Against rgmobile's Python runtime on the same ios ONNX bundles (tests/bundles.py): the executable's
greedy ids equal Python's exactly for every self-test prompt (fp32 and int4, the default export whose
decode and prefill share one ``step.onnx`` and one session, and the fp32 ``--graph-per-length`` bundle
"per_length"; >= 128 new tokens),
``--selftest`` passes, a state saved in Swift resumes in Python to the same tokens and the reverse,
and a bad bundle exits 2 with one clear line. The XCTest suite runs first with the same bundles.

Needs root (debootstrap, chroot, mounts) and network the first time (Debian mirror, npm registry);
set RGMOBILE_SKIP_SWIFT=1 to skip these tests on a machine that cannot build the folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from bundles import widen_a_state_dim

from runtime_py.generate import generate
from runtime_py.open import open_path
from runtime_py.tokenizer import Tokenizer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SWIFT_SH = REPO / "scripts" / "swift.sh"
SWIFT_FLAGS = ["-c", "release", "-Xswiftc", "-enable-testing"]  # one build serves the CLI and the tests
CLI = ".build/release/rgmobile-cli"


def _run(cmd: list[str], env: dict[str, str], timeout: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def swift_root() -> Path:
    if os.environ.get("RGMOBILE_SKIP_SWIFT") == "1":
        pytest.skip("RGMOBILE_SKIP_SWIFT=1")
    proc = _run([str(REPO / "scripts" / "setup_swift.sh")], {}, timeout=3600)
    assert proc.returncode == 0, f"setup_swift.sh failed:\n{proc.stderr[-3000:]}"
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def node_ort_lib(swift_root: Path) -> str:
    """The newer libonnxruntime (from onnxruntime-node) inside the folder: runs fp32 and int4."""
    return (swift_root / ".rgmobile-ort-node-lib").read_text().strip()


class Swift:
    """Runs commands inside the folder with the bundles and a scratch dir bind-mounted."""

    def __init__(self, bundles: dict[str, Path], scratch: Path, ort_lib: str) -> None:
        self.bundles = bundles
        self.scratch = scratch
        binds = sorted({str(p.parent) for p in bundles.values()} | {str(scratch)})
        self.env = {"RGMOBILE_SWIFT_BINDS": ":".join(binds), "RGMOBILE_ORT_LIB": ort_lib}

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, timeout: int = 900
    ) -> subprocess.CompletedProcess[str]:
        return _run([str(SWIFT_SH), *args], {**self.env, **(env or {})}, timeout)


@pytest.fixture(scope="session")
def swift(
    swift_root: Path,
    ios_onnx_bundles: dict[str, Path],
    per_length_bundles: dict[str, Path],
    prefill8_bundles: dict[str, Path],
    node_ort_lib: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Swift:
    """The runner, after a release build of the package (CLI and tests); bundles "fp32", "int4", "per_length",
    "prefill8"."""
    bundles = {**ios_onnx_bundles, "per_length": per_length_bundles["ios"], "prefill8": prefill8_bundles["ios"]}
    run = Swift(bundles, tmp_path_factory.mktemp("swift"), node_ort_lib)
    build = run("swift", "build", *SWIFT_FLAGS, timeout=3600)
    assert build.returncode == 0, f"swift build failed:\n{build.stdout[-4000:]}\n{build.stderr[-2000:]}"
    return run


def _python_greedy(
    bundle: Path, prompt: str, n: int, resume: Path | None = None, save_state: Path | None = None
) -> list[int]:
    opened = open_path(bundle)
    return generate(
        opened.backend, Tokenizer(opened.tokenizer_path), prompt, n, resume=resume, save_state=save_state
    ).new_ids


def _cli_ids(swift: Swift, bundle: Path, *args: str, env: dict[str, str] | None = None) -> list[int]:
    proc = swift(CLI, str(bundle), "--ids", *args, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_swift_test_suite(swift: Swift) -> None:
    """XCTest: tokenizer goldens, bundle checks, samplers, state files, self-test, greedy ids, resume."""
    env = {f"RGMOBILE_BUNDLE_{p.upper()}": str(path) for p, path in swift.bundles.items()}  # FP32, INT4, PER_LENGTH
    proc = swift("swift", "test", *SWIFT_FLAGS, env=env, timeout=3600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "with 0 failures" in out and "skipped" not in out, out[-3000:]


@pytest.mark.parametrize(
    ("precision", "library"),
    [
        ("fp32", "node"),
        ("fp32", "system"),
        ("int4", "node"),
        ("per_length", "node"),
        ("per_length", "system"),
        ("prefill8", "node"),
    ],  # fmt: skip
)
def test_cli_greedy_ids_equal_python(swift: Swift, precision: str, library: str) -> None:
    bundle = swift.bundles[precision]
    cases = json.loads((bundle / "selftest.json").read_text())["cases"]
    # "system": Debian's onnxruntime 1.21 (runs fp32 only); "node": the newer library from npm.
    env = {"RGMOBILE_ORT_LIB": "libonnxruntime.so"} if library == "system" else None
    for case in cases:
        n = max(case["max_new_tokens"], 128)
        want = _python_greedy(bundle, case["prompt"], n)
        got = _cli_ids(swift, bundle, "--prompt", case["prompt"], "--max-new-tokens", str(n), env=env)
        assert len(want) >= 128, f"{case['name']}: Python stopped early ({len(want)} tokens); pick another prompt"
        assert got == want, f"{precision} {case['name']} ({library} onnxruntime): Swift ids differ from Python's"


def test_cli_without_spinning_threads_gives_the_same_ids(swift: Swift) -> None:
    bundle = swift.bundles["int4"]
    case = json.loads((bundle / "selftest.json").read_text())["cases"][0]
    want = _python_greedy(bundle, case["prompt"], 48)
    got = _cli_ids(swift, bundle, "--prompt", case["prompt"], "--max-new-tokens", "48", "--threads", "2", "--no-spin")
    assert got == want


@pytest.mark.parametrize("precision", ["fp32", "int4", "per_length", "prefill8"])
def test_cli_selftest_passes(swift: Swift, precision: str) -> None:
    proc = swift(CLI, str(swift.bundles[precision]), "--selftest")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "self-test PASS" in proc.stdout and "artifact ids equal" in proc.stdout


def test_state_files_cross_between_swift_and_python(swift: Swift) -> None:
    bundle = swift.bundles["fp32"]
    prompt, n, k = "The river ran past the old stone house and", 80, 30
    full = _python_greedy(bundle, prompt, n)
    assert len(full) == n
    # Swift saves after k tokens, Python resumes.
    from_swift = swift.scratch / "swift.rgstate"
    first = _cli_ids(swift, bundle, "--prompt", prompt, "--max-new-tokens", str(k), "--save-state", str(from_swift))
    assert first == full[:k]
    assert _python_greedy(bundle, "", n - k, resume=from_swift) == full[k:]
    # Python saves after k tokens, Swift resumes.
    from_python = swift.scratch / "python.rgstate"
    assert _python_greedy(bundle, prompt, k, save_state=from_python) == full[:k]
    resumed = _cli_ids(swift, bundle, "--prompt", "", "--max-new-tokens", str(n - k), "--resume", str(from_python))
    assert resumed == full[k:]


def test_bad_bundle_exits_2_with_one_line(swift: Swift) -> None:
    bad = swift.scratch / "bad-bundle"
    shutil.rmtree(bad, ignore_errors=True)
    shutil.copytree(swift.bundles["fp32"], bad)
    weights = bad / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    io = swift.scratch / "io-bundle"  # a manifest whose io spec disagrees with the graph
    shutil.rmtree(io, ignore_errors=True)
    shutil.copytree(swift.bundles["fp32"], io)
    widen_a_state_dim(io)
    cases = ((bad, "sha256"), (swift.scratch, "no manifest.json"), (io, "the manifest's io spec says"))
    for target, why in cases:  # corrupted file; not a bundle; a graph unlike its manifest
        proc = swift(CLI, str(target), "--prompt", "x", "--max-new-tokens", "4")
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2, proc.stderr
        assert len(lines) == 1 and lines[0].startswith("error: ") and why in lines[0], proc.stderr
