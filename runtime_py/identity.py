"""The identity of what a backend runs: what a saved state (``*.rgstate``) must match.

An exported artifact carries its identity in ``manifest.json`` (``identity``:
config_sha256, weights_sha256, precision; written at export by
:func:`exporter.artifact.identity.compute_identity`). The PyTorch reference
computes the same function on its loaded model, with precision ``"fp32"``.
Hashing the weights reads every parameter (about 20 s at the 2B shape), so it
runs only when a state is saved or resumed, never when a backend opens.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from exporter.errors import RgMobileError

log = logging.getLogger(__name__)

IDENTITY_KEYS = ("config_sha256", "weights_sha256", "precision")


@dataclass(frozen=True)
class Identity:
    config_sha256: str
    weights_sha256: str
    precision: str

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> Identity:
        missing = [k for k in IDENTITY_KEYS if not isinstance(data.get(k), str) or not data.get(k)]
        if missing:
            raise RgMobileError(f"{where}: identity has no {missing}")
        return cls(data["config_sha256"], data["weights_sha256"], data["precision"])

    def to_dict(self) -> dict[str, str]:
        return {"config_sha256": self.config_sha256, "weights_sha256": self.weights_sha256, "precision": self.precision}

    def mismatch(self, other: Identity) -> str | None:
        """A one-line description of the first field that differs (None when they agree)."""
        if self.config_sha256 != other.config_sha256:
            return "it was saved from a model with a different config"
        if self.weights_sha256 != other.weights_sha256:
            return "it was saved from a model with different weights"
        if self.precision != other.precision:
            return f"it was saved at precision {self.precision!r}, this model runs {other.precision!r}"
        return None


def backend_identity(backend: Any) -> Identity:
    """The identity of ``backend``: from its manifest (artifacts) or by hashing its model (PyTorch reference)."""
    manifest = getattr(backend, "manifest", None)
    if manifest is not None:
        data = getattr(manifest, "identity", None)
        if not data:
            raise RgMobileError(
                "the artifact's manifest has no identity (exported by an older rgmobile); "
                "re-export it to save or resume states"
            )
        return Identity.from_dict(data, "manifest.json")
    model = getattr(backend, "model", None)
    if model is None:
        raise RgMobileError(f"backend {getattr(backend, 'name', '?')!r} cannot tell which model it runs")
    cached = getattr(backend, "_identity", None)
    if isinstance(cached, Identity):
        return cached
    from exporter.artifact.identity import compute_identity

    t0 = time.perf_counter()
    ident = Identity.from_dict(compute_identity(model, "fp32"), "checkpoint")
    log.info("hashed the model's weights in %.1fs", time.perf_counter() - t0)
    try:
        backend._identity = ident  # computed once per backend
    except AttributeError:
        pass
    return ident
