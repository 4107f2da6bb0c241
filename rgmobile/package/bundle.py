"""``rgmobile package``: an exported artifact -> one self-contained phone bundle (docs/bundle.md).

``package(options)``:
  1. reads the artifact's manifest and checks every file's sha256 (a broken artifact is refused);
  2. checks the pairing (android: onnx, executorch in one .pte; ios: coreml, onnx);
  3. runs ``validate`` against the reference checkpoint and refuses a failing artifact
     (Core ML off macOS can only be "incomplete": packaged, and the bundle says so);
  4. writes the bundle into a temporary folder beside ``out`` and renames it into place:
     the program files (ONNX weights stored once, rgmobile/package/onnx_bundle.py),
     ``tokenizer.model``, ``selftest.json`` (rgmobile/package/selftest.py), the
     onnxruntime-genai files (ONNX), ``README.txt`` and a fresh ``manifest.json`` with the
     ``bundle``, ``identity`` and ``runtime_requirements`` sections.

``check_bundle(path)`` re-verifies a bundle (manifest, sha256 of every file, no symlinks,
selftest.json schema); ``selftest_bundle(path)`` also runs its self-test with the Python runtime.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.artifact.manifest import Manifest, file_entries, read_manifest, write_manifest
from exporter.artifact.out_folder import check_out, check_replaceable
from exporter.errors import RgMobileError
from exporter.formats import bundle_targets
from exporter.fsio import atomic_dir, write_json
from exporter.step.dtypes import dtype
from rgmobile.package.selftest import SELFTEST_NAME, read_selftest
from rgmobile.package.selftest_check import SelftestResult

log = logging.getLogger(__name__)

# bundle target -> the formats its app runs: from the formats' entries (exporter/formats.py).
TARGET_FORMATS: dict[str, tuple[str, ...]] = bundle_targets()
README_NAME = "README.txt"


@dataclass(frozen=True)
class PackageOptions:
    """What ``rgmobile package`` builds (Typer options map 1:1 to these).

    Fields:
      artifact: the exported artifact folder (has manifest.json).
      target: "android" or "ios".
      out: the bundle folder to write (an existing bundle is replaced).
      name: the bundle's name (default: the name of ``out``); the apps list bundles by it.
      checkpoint: the reference checkpoint; None = the manifest's source checkpoint.
      threads: CPU threads for validation and the self-test.
    """

    artifact: Path
    target: str
    out: Path
    name: str | None = None
    checkpoint: Path | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.target not in TARGET_FORMATS:
            raise RgMobileError(f"--target must be one of {sorted(TARGET_FORMATS)}, got {self.target!r}")
        name = self.bundle_name
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise RgMobileError(f"--name must be a plain folder name, got {name!r}")
        out, art = Path(self.out).resolve(), Path(self.artifact).resolve()
        if out == art or art in out.parents:
            raise RgMobileError(f"--out {self.out} is the artifact folder or inside it; choose another folder")
        check_out(Path(self.out))  # an existing folder is replaced only when it is provably ours

    @property
    def bundle_name(self) -> str:
        return self.name if self.name is not None else Path(self.out).resolve().name


@dataclass(frozen=True)
class PackageResult:
    manifest: Manifest
    validation_status: str  # "pass" or "incomplete"
    validation_summary: dict[str, Any]
    incomplete_checks: tuple[str, ...]  # the validate checks that could not run here


def check_pairing(target: str, fmt: str) -> None:
    """A ``target`` bundle can carry only the formats its app runs."""
    allowed = TARGET_FORMATS[target]
    if fmt not in allowed:
        apps = {"android": "the Android app runs ONNX and ExecuTorch", "ios": "the iOS app runs Core ML and ONNX"}
        raise RgMobileError(
            f"cannot package a {fmt} artifact for {target}: {apps[target]} ({', '.join(allowed)}); "
            f"export with --format {' or --format '.join(allowed)}"
        )


def check_single_program_file(target: str, manifest: Manifest) -> None:
    """ExecuTorch's Android ``Module`` loads a .pte alone: a program whose weights live in a
    ``.ptd`` data file (fp32 exports) cannot run in the app."""
    data = manifest.data_file
    if target == "android" and data is not None:
        raise RgMobileError(
            f"cannot package this executorch artifact for android: its weights are in {data}, which "
            "ExecuTorch's Android Module does not load (it takes one .pte); export with --quant int8 or "
            "--quant int4 (weights inside the .pte, the phone sizes) or with --format onnx"
        )


def state_bytes(manifest: Manifest) -> int:
    """Bytes of one sequence's state (batch 1), from the IOSpec: the same at every context length."""
    return sum(math.prod(s.concrete_shape(batch=1)) * dtype(s.dtype).itemsize for s in manifest.io.state_inputs)


def _validation(options: PackageOptions, manifest: Manifest) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Run ``validate``; a failure is refused naming the worst metric; returns (bundle.validation, not-run checks)."""
    from runtime_py.thresholds import METRICS
    from runtime_py.validate import ValidateOptions, validate

    report = validate(
        ValidateOptions(artifact=options.artifact, checkpoint=options.checkpoint, threads=options.threads)
    )
    if report.status == "failed":
        if report.failures:

            def excess(f: Any) -> float:
                if f.value != f.value:  # NaN
                    return math.inf
                scale = max(abs(f.threshold), 1e-12)
                return (f.value - f.threshold) / scale if f.bound == "max" else (f.threshold - f.value) / scale

            worst = max(report.failures, key=excess).message()
        else:
            worst = next(f"{c['name']}: {c['detail']}" for c in report.checks if c["status"] == "failed")
        raise RgMobileError(
            f"{options.artifact} fails validation ({worst}); not packaged (see `rgmobile validate {options.artifact}`)"
        )
    text = json.dumps(report.to_dict(), indent=2, sort_keys=False) + "\n"  # the bytes `validate --report` writes
    summary = {k: report.summary[k] for k in (*METRICS, "greedy_common_prefix", "greedy_tokens", "positions")}
    summary["compared"] = report.compared
    summary["checkpoint"] = report.checkpoint
    if report.quality:
        summary["quality"] = report.quality.get("metrics", {})
    not_run = tuple(f"{c['name']}: {c['detail']}" for c in report.checks if c["status"] == "not run")
    status = "pass" if report.status == "passed" else "incomplete"
    section = {"status": status, "report_sha256": hashlib.sha256(text.encode()).hexdigest(), "summary": summary}
    return section, not_run


def _readme(target: str, name: str, manifest: Manifest) -> str:
    head = (
        f"rgmobile bundle {name!r}: RecurrentGemma/Griffin, {manifest.format} {manifest.precision}, for {target}.\n"
        "Open the folder as it is: manifest.json pins every file by size and sha256; selftest.json is the\n"
        "parity self-test the app's Self-test button runs (docs/bundle.md in the rgmobile repository).\n\n"
    )
    if target == "android":
        return head + (
            "Put it on a device (ExecuTorch's demo convention):\n\n"
            f"  adb shell mkdir -p /data/local/tmp/rgmobile/{name}\n"
            f"  adb push BUNDLE_DIR/. /data/local/tmp/rgmobile/{name}/\n\n"
            "The app lists the folders under /data/local/tmp/rgmobile/ and, when one is opened, copies it\n"
            "into its app-private storage (files/bundles/<name>/), re-checks every sha256 there, and runs it\n"
            "from that copy.\n"
        )
    return head + (
        "Put it on a device, either:\n"
        "  - copy the folder into the app's Documents folder (Files app: On My iPhone > RGMobile, or\n"
        "    Finder file sharing with the device connected), then pick it in the app; or\n"
        "  - drag the folder into the Xcode project as a folder reference (blue folder) and tick the app\n"
        "    target, so it ships inside the app bundle.\n"
    )


def _copy(src: Path, dst: Path) -> None:
    if src.is_symlink():
        raise RgMobileError(f"{src} is a symlink; a bundle holds plain files only")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def package(options: PackageOptions) -> PackageResult:
    """Verify, validate and write the bundle (see the module docstring)."""
    from exporter.artifact.identity import compute_identity
    from exporter.artifact.requirements import runtime_requirements
    from exporter.checkpoint.loader import load_checkpoint
    from rgmobile.package.selftest import build_selftest
    from runtime_py.open import open_artifact_backend
    from runtime_py.thresholds import thresholds_for
    from runtime_py.tokenizer import Tokenizer
    from runtime_py.torch_backend import TorchBackend

    artifact = Path(options.artifact)
    manifest = read_manifest(artifact, verify=True)
    check_pairing(options.target, manifest.format)
    check_single_program_file(options.target, manifest)
    if manifest.bundle is not None:
        raise RgMobileError(f"{artifact} is already a bundle; package the artifact it was made from")
    validation, not_run = _validation(options, manifest)
    ckpt_path = options.checkpoint or Path(str(manifest.source_checkpoint))
    ckpt = load_checkpoint(Path(ckpt_path))
    reference = TorchBackend(ckpt.model, threads=options.threads)
    runnable = manifest.format != "coreml"
    if manifest.format == "coreml":
        from runtime_py.validate_coreml import predictions_possible

        runnable = predictions_possible()
    backend = open_artifact_backend(artifact, manifest, options.threads) if runnable else None
    tokenizer = Tokenizer(artifact / manifest.tokenizer_file)
    selftest = build_selftest(
        reference=reference, artifact=backend, tokenizer=tokenizer, artifact_format=manifest.format,
        precision=manifest.precision, tolerances=thresholds_for(manifest.format, manifest.precision),
    )  # fmt: skip
    identity = manifest.identity or compute_identity(ckpt.model, manifest.precision)
    requirements = manifest.runtime_requirements or runtime_requirements(
        manifest.format, manifest.precision, manifest.format_details
    )
    name = options.bundle_name
    with atomic_dir(Path(options.out), check_replace=check_replaceable) as tmp:
        details = dict(manifest.format_details)
        written: set[str] = set()
        if manifest.format == "onnx":
            from exporter.artifact.genai import GENAI_FILES, write_genai_files
            from rgmobile.package.onnx_bundle import write_onnx_programs

            details.update(write_onnx_programs(artifact, manifest, tmp))
            written |= {p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file()}
            if not all((artifact / f).is_file() for f in GENAI_FILES):  # an artifact exported before they existed
                decode_file = manifest.programs["decode"].file
                if write_genai_files(tmp, manifest.config, artifact / manifest.tokenizer_file, decode_file):
                    written |= set(GENAI_FILES)
        for f in manifest.files:
            if f.path not in written:
                _copy(artifact / f.path, tmp / f.path)
        write_json(tmp / SELFTEST_NAME, selftest)
        (tmp / README_NAME).write_text(_readme(options.target, name, manifest))
        bundle = {
            "target": options.target, "name": name, "selftest_file": SELFTEST_NAME,
            "state_bytes": state_bytes(manifest), "validation": validation,
        }  # fmt: skip
        out_manifest = dataclasses.replace(
            manifest, files=file_entries(tmp), format_details=details, identity=identity,
            runtime_requirements=requirements, bundle=bundle,
        )  # fmt: skip
        write_manifest(tmp, out_manifest)
        check_bundle(tmp)  # the bundle must read back before it is renamed into place
    log.info("packaged %s for %s into %s (%s)", artifact, options.target, options.out, validation["status"])
    return PackageResult(out_manifest, validation["status"], validation["summary"], not_run)


@dataclass(frozen=True)
class BundleSummary:
    manifest: Manifest
    selftest: dict[str, Any]
    total_bytes: int


def check_bundle(bundle_dir: Path) -> BundleSummary:
    """Re-verify a bundle: manifest schema, every file's size and sha256, no symlinks, selftest.json schema."""
    root = Path(bundle_dir)
    links = [p for p in root.rglob("*") if p.is_symlink()]
    if links:
        raise RgMobileError(f"{root}: {links[0].relative_to(root)} is a symlink; a bundle holds plain files only")
    manifest = read_manifest(root, verify=True)
    if manifest.bundle is None:
        raise RgMobileError(f"{root}: manifest.json has no 'bundle' section; this is an artifact, not a bundle")
    b = manifest.bundle
    selftest_file = b.get("selftest_file")
    if not isinstance(selftest_file, str) or selftest_file not in {f.path for f in manifest.files}:
        raise RgMobileError(f"{root}: bundle.selftest_file {selftest_file!r} is not listed in manifest files")
    validation = b.get("validation")
    if b.get("target") not in TARGET_FORMATS or not isinstance(validation, dict):
        raise RgMobileError(f"{root}: manifest 'bundle' needs a target {sorted(TARGET_FORMATS)} and 'validation'")
    if validation.get("status") not in ("pass", "incomplete"):
        raise RgMobileError(f"{root}: bundle.validation.status must be 'pass' or 'incomplete'")
    check_pairing(str(b["target"]), manifest.format)
    selftest = read_selftest(root / selftest_file)
    if selftest["vocab_size"] != manifest.config.vocab_size or selftest["artifact_format"] != manifest.format:
        raise RgMobileError(f"{root}: {selftest_file} was written for another model or format; re-run package")
    return BundleSummary(manifest, selftest, sum(f.size for f in manifest.files))


def selftest_bundle(bundle_dir: Path, threads: int | None = None) -> SelftestResult:
    """Check the bundle, then run its self-test with rgmobile's Python runtime."""
    from rgmobile.package.selftest_check import run_selftest
    from runtime_py.open import open_artifact_backend
    from runtime_py.tokenizer import Tokenizer

    summary = check_bundle(bundle_dir)
    m = summary.manifest
    if m.format == "coreml":
        from runtime_py.validate_coreml import predictions_possible

        if not predictions_possible():
            raise RgMobileError(f"{bundle_dir}: a Core ML bundle's self-test needs macOS/iOS (Core ML cannot run here)")
    backend = open_artifact_backend(Path(bundle_dir), m, threads)
    tokenizer = Tokenizer(Path(bundle_dir) / m.tokenizer_file)
    return run_selftest(summary.selftest, backend, tokenizer, m.special_tokens["eos_id"])
