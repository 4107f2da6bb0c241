"""Saved generation states (``*.rgstate``, schema 1; docs/bundle.md "Saved states").

A safetensors file: 8-byte little-endian header length, a JSON header, raw
little-endian data; no pickle. Tensors: ``token_ids`` (int64 [n], BOS first)
and every state input of the IOSpec under its input name, batch 1, in the
IOSpec's dtype and shape. ``__metadata__`` (strings): ``rgmobile.format``,
``rgmobile.schema_version``, ``rgmobile.position``, and the identity of the
model that wrote it (``rgmobile.config_sha256``, ``rgmobile.weights_sha256``,
``rgmobile.precision``).

Invariant: ``position == n - 1``. The state holds the effect of
``token_ids[:-1]``; the last token (the last one sampled) has not been run yet.

Shapes: n = tokens so far; state tensors as in the IOSpec at batch 1.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from exporter.errors import RgMobileError
from exporter.fsio import atomic_file
from exporter.step.iospec import IOSpec
from runtime_py.identity import IDENTITY_KEYS, Identity

log = logging.getLogger(__name__)

FORMAT = "rgmobile-state"
SCHEMA_VERSION = 1
SUFFIX = ".rgstate"
TOKENS = "token_ids"
# A schema-1 header lists ~2 tensors per layer plus the metadata: a few KB. Anything
# past this is not a state file (and must not be allocated before it is refused).
MAX_HEADER_BYTES = 1 << 20
_FLOATS = (np.dtype(np.float32), np.dtype(np.float16))


@dataclass(frozen=True)
class SavedState:
    """What a state file holds: the tokens so far and the state after all but the last of them."""

    token_ids: tuple[int, ...]
    arrays: dict[str, np.ndarray]  # IOSpec state-input name -> array in the IOSpec's shape and dtype
    identity: Identity

    @property
    def position(self) -> int:
        """Absolute position of the last token, the next one to run."""
        return len(self.token_ids) - 1


def save_state(path: Path, state: SavedState, io: IOSpec) -> int:
    """Write ``state`` atomically; returns the file's size in bytes."""
    if not state.token_ids:
        raise RgMobileError("cannot save a state without tokens (the invariant needs the last sampled token)")
    tensors: dict[str, np.ndarray] = {TOKENS: np.asarray(state.token_ids, dtype=np.int64)}
    for spec in io.state_inputs:
        arr = state.arrays.get(spec.name)
        shape = spec.concrete_shape(batch=1)
        if arr is None or tuple(arr.shape) != shape:
            got = "missing" if arr is None else f"shaped {tuple(arr.shape)}"
            raise RgMobileError(f"cannot save the state: {spec.name} is {got}, the io spec says {shape}")
        tensors[spec.name] = np.ascontiguousarray(arr, dtype=np.dtype(spec.dtype))
    metadata = {
        "rgmobile.format": FORMAT,
        "rgmobile.schema_version": str(SCHEMA_VERSION),
        "rgmobile.position": str(state.position),
        **{f"rgmobile.{k}": v for k, v in state.identity.to_dict().items()},
    }
    data = save(tensors, metadata=metadata)
    with atomic_file(Path(path)) as tmp:
        tmp.write_bytes(data)
    log.info("saved state at position %d to %s (%d bytes)", state.position, path, len(data))
    return len(data)


def _read_header(path: Path, raw: bytes) -> dict[str, str]:
    """The metadata of a safetensors file, after checking the header is sane."""
    if len(raw) < 8:
        raise RgMobileError(f"{path}: not a state file (too short to be safetensors)")
    (size,) = struct.unpack("<Q", raw[:8])
    if size > MAX_HEADER_BYTES or 8 + size > len(raw):
        raise RgMobileError(f"{path}: not a state file or truncated (header of {size} bytes in a {len(raw)}-byte file)")
    try:
        header = json.loads(raw[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RgMobileError(f"{path}: not a state file (its header is not JSON)") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("rgmobile.format") != FORMAT:
        found = meta.get("rgmobile.format") if isinstance(meta, dict) else None
        raise RgMobileError(f"{path}: not an rgmobile state (format {found!r}, expected {FORMAT!r})")
    return {str(k): str(v) for k, v in meta.items()}


def load_state(path: Path, identity: Identity, io: IOSpec) -> SavedState:
    """Read and check a state file against the opener's ``identity`` and ``io``.

    Refuses (one line) a wrong format, a newer schema, a different model or
    precision, missing or mis-shaped tensors, a broken position invariant and
    truncated files; float tensors are converted to the IOSpec's float dtype.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RgMobileError(f"{path}: cannot read the state file ({exc.strerror})") from None
    meta = _read_header(path, raw)
    version = meta.get("rgmobile.schema_version", "")
    if not version.isdigit() or int(version) < 1:
        raise RgMobileError(f"{path}: invalid rgmobile.schema_version {version!r}")
    if int(version) > SCHEMA_VERSION:
        raise RgMobileError(
            f"{path}: state schema_version {version} is newer than this rgmobile reads ({SCHEMA_VERSION}); "
            "upgrade rgmobile"
        )
    saved = Identity.from_dict({k: meta.get(f"rgmobile.{k}", "") for k in IDENTITY_KEYS}, f"{path} (metadata)")
    why = saved.mismatch(identity)
    if why is not None:
        raise RgMobileError(f"{path}: this state does not belong to the model being run: {why}")
    try:
        tensors = load(raw)
    except SafetensorError as exc:
        raise RgMobileError(f"{path}: not a valid safetensors file or truncated ({exc})") from None
    tokens = tensors.pop(TOKENS, None)
    if tokens is None or tokens.dtype != np.int64 or tokens.ndim != 1 or tokens.size == 0:
        raise RgMobileError(f"{path}: {TOKENS} must be a non-empty int64 vector")
    position = meta.get("rgmobile.position", "")
    if not position.isdigit() or int(position) != tokens.size - 1:
        raise RgMobileError(
            f"{path}: rgmobile.position {position!r} breaks the invariant position == len(token_ids) - 1 "
            f"({tokens.size - 1})"
        )
    arrays: dict[str, np.ndarray] = {}
    for spec in io.state_inputs:
        arr = tensors.pop(spec.name, None)
        want = spec.concrete_shape(batch=1)
        if arr is None:
            raise RgMobileError(f"{path}: state tensor {spec.name} is missing")
        if tuple(arr.shape) != want:
            raise RgMobileError(f"{path}: state tensor {spec.name} is {tuple(arr.shape)}, this model needs {want}")
        dtype = np.dtype(spec.dtype)
        if arr.dtype != dtype and not (arr.dtype in _FLOATS and dtype in _FLOATS):
            raise RgMobileError(f"{path}: state tensor {spec.name} is {arr.dtype}, this model needs {dtype}")
        arrays[spec.name] = np.ascontiguousarray(arr, dtype=dtype)
    if tensors:
        raise RgMobileError(f"{path}: unexpected tensors {sorted(tensors)[:3]} (not in this model's io spec)")
    return SavedState(tuple(int(t) for t in tokens), arrays, saved)
