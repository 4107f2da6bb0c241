"""``manifest.json``: the one description of an exported artifact, for every format.

A runtime (Python, Android, iOS) runs the model from this file alone: it names
the programs (one per step length), the exact graph I/O (the IOSpec), the
config, the special tokens and the tokenizer, and pins every file by size and
sha256. ONNX, ExecuTorch and Core ML artifacts share this schema; whatever is
specific to one format lives in ``programs[*].entry`` and ``format_details``.

Schema (``schema_version`` 1), all keys required unless marked optional:

  schema_version   int, 1. A reader refuses a newer version ("upgrade rgmobile").
  format           "onnx" | "executorch" | "coreml" (exporter.formats.FORMATS).
  rgmobile_version exporter version that wrote the artifact.
  created          ISO 8601 UTC time of the export.
  source           {"checkpoint": path that was exported, "kind": "hf" | "official"}.
  precision        weight/activation precision: "fp32", "fp16", "bf16", "int8", "int4", ...
  quantization     null, or the quantization recipe (data, see quantization/).
  config           GriffinConfig.to_dict(): vocab, width, layers, block types, window, conv width...
  special_tokens   {"bos_id", "eos_id", "pad_id"}.
  tokenizer_file   relative path of the SentencePiece model (listed in files).
  prefill_chunk    tokens per prefill step (the largest program seq_len).
  io               IOSpec.to_dict(): names, dtypes, symbolic shapes ("batch", "seq"),
                   roles, state pairs (input <-> output) and init ("zeros").
  programs         {name: {"file": relative path, "seq_len": t, "entry": optional
                   method/function inside the file, "min_seq_len": optional}}; "decode"
                   (t = 1) always, "prefill" (t = prefill_chunk) when prefill_chunk > 1,
                   "prefill_<t>" for each --prefill-lengths t (ExecuTorch, Core ML iOS 18).
                   "seq_len" binds the symbolic "seq" of the IOSpec for that program; with
                   "min_seq_len" the program runs any t from it to "seq_len" (a graph with a
                   symbolic token dimension), so a prompt's remainder after the last whole
                   chunk is one call. No two programs run the same t. Readers that ignore
                   "min_seq_len" stay correct: they run the remainder as decode steps.
  files            [{"path", "size", "sha256"}] for every file of the artifact except
                   manifest.json itself; a directory (e.g. .mlpackage) is listed
                   file by file.
  format_details   {} or per-format facts (opset, external data file, ...).

Optional top-level objects (readers of schema 1 accept them and may ignore them;
docs/bundle.md defines them):

  identity              {"config_sha256", "weights_sha256", "precision"} (exporter/artifact/identity.py):
                        what a saved state must match.
  runtime_requirements  minimum runtime versions, e.g. {"onnxruntime": "1.22.0"}.
  bundle                written by ``rgmobile package`` only (rgmobile/package/bundle.py).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from exporter import __version__
from exporter.config import GriffinConfig
from exporter.errors import RgMobileError
from exporter.fsio import sha256_file, write_json
from exporter.step.iospec import IOSpec

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
SPECIAL_TOKEN_KEYS = ("bos_id", "eos_id", "pad_id")

# key -> accepted JSON types; every key is required.
_FIELDS: dict[str, tuple[type, ...]] = {
    "schema_version": (int,),
    "format": (str,),
    "rgmobile_version": (str,),
    "created": (str,),
    "source": (dict,),
    "precision": (str,),
    "quantization": (dict, type(None)),
    "config": (dict,),
    "special_tokens": (dict,),
    "tokenizer_file": (str,),
    "prefill_chunk": (int,),
    "io": (dict,),
    "programs": (dict,),
    "files": (list,),
    "format_details": (dict,),
}
# Optional keys -> accepted JSON types (null = absent).
_OPTIONAL: dict[str, tuple[type, ...]] = {
    "identity": (dict, type(None)),
    "runtime_requirements": (dict, type(None)),
    "bundle": (dict, type(None)),
}


@dataclass(frozen=True)
class FileEntry:
    """One file of the artifact, pinned by size and content."""

    path: str  # relative, POSIX separators
    size: int
    sha256: str


@dataclass(frozen=True)
class Program:
    """One exported step: ``seq_len`` tokens per call (with ``min_seq_len``, any t from it to
    ``seq_len``), read from ``file`` (``entry`` inside it)."""

    file: str
    seq_len: int
    entry: str | None = None
    min_seq_len: int | None = None  # None: seq_len tokens only

    @property
    def lengths(self) -> range:
        """Every t this program runs."""
        return range(self.min_seq_len or self.seq_len, self.seq_len + 1)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file, "seq_len": self.seq_len}
        if self.entry is not None:
            out["entry"] = self.entry
        if self.min_seq_len is not None:
            out["min_seq_len"] = self.min_seq_len
        return out


def describe_lengths(lengths: Iterable[int]) -> str:
    """Step lengths as runs, longest first: "128..2, 1"."""
    runs: list[list[int]] = []
    for t in sorted(set(lengths), reverse=True):
        if runs and runs[-1][1] == t + 1:
            runs[-1][1] = t
        else:
            runs.append([t, t])
    return ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in runs)


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json`` (see the module docstring for the schema)."""

    format: str
    source: dict[str, str]
    precision: str
    config: GriffinConfig
    tokenizer_file: str
    prefill_chunk: int
    io: IOSpec
    programs: dict[str, Program]
    files: tuple[FileEntry, ...]
    quantization: dict[str, Any] | None = None
    format_details: dict[str, Any] = field(default_factory=dict)
    special_tokens: dict[str, int] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    rgmobile_version: str = __version__
    created: str = ""
    identity: dict[str, str] | None = None
    runtime_requirements: dict[str, str] | None = None
    bundle: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.special_tokens:
            tokens = {k: getattr(self.config, k) for k in SPECIAL_TOKEN_KEYS}
            object.__setattr__(self, "special_tokens", tokens)
        if not self.created:
            now = _dt.datetime.now(_dt.UTC).replace(microsecond=0)
            object.__setattr__(self, "created", now.isoformat().replace("+00:00", "Z"))

    @property
    def source_checkpoint(self) -> str | None:
        return self.source.get("checkpoint")

    @property
    def data_file(self) -> str | None:
        """The file the programs read their weights from beside the program files
        (``format_details.data_file``: ExecuTorch fp32's ``model.ptd``), or None; listed in
        ``files`` (:meth:`check_consistency`)."""
        name = self.format_details.get("data_file")
        return name if isinstance(name, str) else None

    def program_for(self, seq_len: int) -> tuple[str, Program]:
        for name, prog in self.programs.items():
            if seq_len in prog.lengths:
                return name, prog
        raise RgMobileError(
            f"manifest: no program runs {seq_len} tokens per step; have {describe_lengths(self.seq_lens())}"
        )

    def seq_lens(self) -> tuple[int, ...]:
        """Every step length some program runs, longest first."""
        return tuple(sorted({t for p in self.programs.values() for t in p.lengths}, reverse=True))

    def program_files(self) -> list[str]:
        """The artifact's distinct program files, sorted (one ``step.onnx`` may serve both programs)."""
        return sorted({p.file for p in self.programs.values()})

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "format": self.format,
            "rgmobile_version": self.rgmobile_version,
            "created": self.created,
            "source": dict(self.source),
            "precision": self.precision,
            "quantization": self.quantization,
            "config": self.config.to_dict(),
            "special_tokens": dict(self.special_tokens),
            "tokenizer_file": self.tokenizer_file,
            "prefill_chunk": self.prefill_chunk,
            "io": self.io.to_dict(),
            "programs": {name: p.to_dict() for name, p in self.programs.items()},
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
            "format_details": dict(self.format_details),
            **{key: value for key, value in self._optional().items() if value is not None},
        }

    def _optional(self) -> dict[str, Any]:
        return {"identity": self.identity, "runtime_requirements": self.runtime_requirements, "bundle": self.bundle}

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST_NAME) -> Manifest:
        """Parse and check the schema; any problem is an :class:`RgMobileError` naming the field."""
        if not isinstance(data, dict):
            raise RgMobileError(f"{where}: expected a JSON object")
        version = data.get("schema_version")
        if not isinstance(version, int):
            raise RgMobileError(f"{where}: missing or non-integer schema_version")
        if version > SCHEMA_VERSION:
            raise RgMobileError(
                f"{where}: schema_version {version} is newer than this rgmobile reads ({SCHEMA_VERSION}); "
                "upgrade rgmobile"
            )
        if version < 1:
            raise RgMobileError(f"{where}: invalid schema_version {version}")
        missing = [k for k in _FIELDS if k not in data]
        if missing:
            raise RgMobileError(f"{where}: missing required field(s) {missing}")
        for key, types in _FIELDS.items():
            if not isinstance(data[key], types) or (types == (int,) and isinstance(data[key], bool)):
                names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
                raise RgMobileError(f"{where}: field {key!r} must be {names}, got {type(data[key]).__name__}")
        for key, types in _OPTIONAL.items():
            if not isinstance(data.get(key), types):
                got = type(data[key]).__name__
                raise RgMobileError(f"{where}: optional field {key!r} must be an object, got {got}")
        for key in ("identity", "runtime_requirements"):
            if data.get(key) is not None and not all(isinstance(v, str) for v in data[key].values()):
                raise RgMobileError(f"{where}: every value of {key!r} must be a string")
        try:
            config = GriffinConfig.from_dict(data["config"])
            io = IOSpec.from_dict(data["io"])
        except RgMobileError as exc:
            raise RgMobileError(f"{where}: {exc}") from None
        programs = {name: _program(name, p, where) for name, p in data["programs"].items()}
        files = tuple(_file_entry(f, where) for f in data["files"])
        tokens = data["special_tokens"]
        bad = [k for k in SPECIAL_TOKEN_KEYS if not isinstance(tokens.get(k), int)]
        if bad:
            raise RgMobileError(f"{where}: special_tokens needs integer {bad}")
        manifest = cls(
            format=data["format"],
            source={str(k): str(v) for k, v in data["source"].items()},
            precision=data["precision"],
            config=config,
            tokenizer_file=data["tokenizer_file"],
            prefill_chunk=data["prefill_chunk"],
            io=io,
            programs=programs,
            files=files,
            quantization=data["quantization"],
            format_details=data["format_details"],
            special_tokens={k: int(v) for k, v in tokens.items()},
            schema_version=version,
            rgmobile_version=data["rgmobile_version"],
            created=data["created"],
            identity=data.get("identity"),
            runtime_requirements=data.get("runtime_requirements"),
            bundle=data.get("bundle"),
        )
        manifest.check_consistency(where)
        return manifest

    def check_consistency(self, where: str = MANIFEST_NAME) -> None:
        """Cross-field checks: programs, files and I/O agree with each other and the config."""
        listed = {f.path for f in self.files}
        if len(listed) != len(self.files):
            raise RgMobileError(f"{where}: a file is listed twice in 'files'")
        if not self.programs:
            raise RgMobileError(f"{where}: 'programs' is empty; an artifact needs at least a decode program")
        if 1 not in {p.seq_len for p in self.programs.values()}:
            raise RgMobileError(f"{where}: no program with seq_len 1 (decode)")
        if self.prefill_chunk < 1 or self.prefill_chunk != max(p.seq_len for p in self.programs.values()):
            raise RgMobileError(f"{where}: prefill_chunk {self.prefill_chunk} is not the largest program seq_len")
        owner: dict[int, str] = {}
        for name, prog in self.programs.items():
            for t in prog.lengths:
                if owner.setdefault(t, name) != name:
                    raise RgMobileError(f"{where}: programs {owner[t]!r} and {name!r} both run {t} tokens per step")
        for name, prog in self.programs.items():
            if not _covered(prog.file, listed):
                raise RgMobileError(f"{where}: program {name!r} file {prog.file!r} is not listed in 'files'")
        if self.tokenizer_file not in listed:
            raise RgMobileError(f"{where}: tokenizer_file {self.tokenizer_file!r} is not listed in 'files'")
        data = self.format_details.get("data_file")
        if data is not None and (not isinstance(data, str) or data not in listed):
            raise RgMobileError(f"{where}: format_details.data_file {data!r} is not listed in 'files'")
        logits = self.io.outputs[0]
        if logits.shape[-1] != self.config.vocab_size:
            raise RgMobileError(
                f"{where}: logits width {logits.shape[-1]} != config vocab_size {self.config.vocab_size}"
            )
        if len(self.io.state_inputs) != 2 * self.config.num_layers:
            raise RgMobileError(
                f"{where}: io has {len(self.io.state_inputs)} state inputs; "
                f"a {self.config.num_layers}-layer model has {2 * self.config.num_layers}"
            )


def _safe_relpath(path: Any, where: str, what: str) -> str:
    if not isinstance(path, str) or not path:
        raise RgMobileError(f"{where}: {what} path must be a non-empty string")
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or "\\" in path:
        raise RgMobileError(f"{where}: {what} path {path!r} must be relative, inside the artifact, with '/'")
    return path


def _program(name: str, data: Any, where: str) -> Program:
    if not isinstance(data, dict) or not isinstance(data.get("seq_len"), int) or data["seq_len"] < 1:
        raise RgMobileError(f"{where}: program {name!r} needs 'file' and a positive integer 'seq_len'")
    entry = data.get("entry")
    if entry is not None and not isinstance(entry, str):
        raise RgMobileError(f"{where}: program {name!r} 'entry' must be a string")
    low = data.get("min_seq_len")
    if low is not None and (not isinstance(low, int) or isinstance(low, bool) or not 1 <= low <= data["seq_len"]):
        raise RgMobileError(f"{where}: program {name!r} 'min_seq_len' must be an integer from 1 to its seq_len")
    return Program(
        file=_safe_relpath(data.get("file"), where, f"program {name!r}"), seq_len=data["seq_len"], entry=entry,
        min_seq_len=low,
    )  # fmt: skip


def _file_entry(data: Any, where: str) -> FileEntry:
    if not isinstance(data, dict):
        raise RgMobileError(f"{where}: every entry of 'files' must be an object")
    path = _safe_relpath(data.get("path"), where, "file")
    size, sha = data.get("size"), data.get("sha256")
    if not isinstance(size, int) or size < 0 or not isinstance(sha, str) or len(sha) != 64:
        raise RgMobileError(f"{where}: file {path!r} needs an integer 'size' and a 64-hex-digit 'sha256'")
    return FileEntry(path, size, sha.lower())


def _covered(path: str, listed: set[str]) -> bool:
    """A program file is a listed file, or a directory (e.g. .mlpackage) holding listed files."""
    return path in listed or any(f.startswith(path.rstrip("/") + "/") for f in listed)


def file_entries(artifact_dir: Path) -> tuple[FileEntry, ...]:
    """Size and sha256 of every file under ``artifact_dir`` except the manifest, sorted by path."""
    root = Path(artifact_dir)
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.relative_to(root).as_posix() != MANIFEST_NAME:
            out.append(FileEntry(p.relative_to(root).as_posix(), p.stat().st_size, sha256_file(p)))
    return tuple(out)


def write_manifest(artifact_dir: Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` atomically into ``artifact_dir``."""
    manifest.check_consistency()
    path = Path(artifact_dir) / MANIFEST_NAME
    write_json(path, manifest.to_dict())
    log.info("wrote %s (%d files)", path, len(manifest.files))
    return path


def verify_files(artifact_dir: Path, manifest: Manifest) -> None:
    """Every listed file exists with the listed size and sha256 (size first: cheap)."""
    root = Path(artifact_dir)
    real_root = root.resolve()
    for f in manifest.files:
        p = root / f.path
        linked = [q for q in (p, *p.parents) if root in q.parents and q.is_symlink()]  # inside root only
        if linked:
            raise RgMobileError(
                f"{root}: {f.path} is a symbolic link ({linked[-1].relative_to(root).as_posix()}); an artifact's "
                "files must be real files inside it: re-copy the artifact without links"
            )
        if real_root not in p.resolve().parents:
            raise RgMobileError(f"{root}: {f.path} resolves outside the artifact folder; re-copy the artifact")
        if not p.is_file():
            raise RgMobileError(f"{root}: file {f.path} listed in {MANIFEST_NAME} is missing; re-export the artifact")
        size = p.stat().st_size
        if size != f.size:
            raise RgMobileError(
                f"{root}: {f.path} is {size} bytes, {MANIFEST_NAME} says {f.size} (truncated or replaced); "
                "re-export or re-copy the artifact"
            )
        digest = sha256_file(p)
        if digest != f.sha256:
            raise RgMobileError(
                f"{root}: {f.path} sha256 {digest[:12]}... does not match {MANIFEST_NAME} ({f.sha256[:12]}...): "
                "the file was modified or corrupted; re-export or re-copy the artifact"
            )


def read_manifest(artifact_dir: Path, verify: bool = True) -> Manifest:
    """Parse and check ``artifact_dir/manifest.json``; with ``verify`` also check every file's size and sha256."""
    root = Path(artifact_dir)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise RgMobileError(f"{root}: no {MANIFEST_NAME}; not an rgmobile artifact (export one with `rgmobile export`)")
    if path.is_symlink():
        raise RgMobileError(f"{path} is a symbolic link; an artifact's manifest must be a real file inside it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RgMobileError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise RgMobileError(f"{path}: not valid JSON (nested too deeply)") from None
    except OSError as exc:
        raise RgMobileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    manifest = Manifest.from_dict(data, where=str(path))
    if verify:
        verify_files(root, manifest)
    return manifest
