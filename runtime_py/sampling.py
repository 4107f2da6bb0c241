"""Next-token samplers over logits [v]: greedy, temperature, top-k, top-p, seeded."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from exporter.errors import RgMobileError


@dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 means greedy (argmax); top_k 0 and top_p 1.0 disable those filters."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        # `not x >= 0` (rather than `x < 0`) also refuses NaN, for which every comparison is False.
        if not isinstance(self.temperature, int | float) or not (0 <= self.temperature < math.inf):
            raise RgMobileError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise RgMobileError(f"top-k must be an integer >= 0 (0 = off), got {self.top_k}")
        if not isinstance(self.top_p, int | float) or not 0.0 < self.top_p <= 1.0:
            raise RgMobileError(f"top-p must be in (0, 1] (1 = off), got {self.top_p}")
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed < 2**63):
            raise RgMobileError(f"seed must be an integer in 0..2^63-1, got {self.seed}")


class Sampler:
    def __init__(self, config: SamplingConfig) -> None:
        self.config = config
        self.rng = np.random.default_rng(config.seed)

    def __call__(self, logits: np.ndarray) -> int:
        """logits [v] -> token id."""
        cfg = self.config
        if not np.isfinite(logits).all():
            bad = int(np.count_nonzero(~np.isfinite(logits)))
            raise RgMobileError(
                f"the model produced {bad} non-finite logit(s) (NaN or Inf) out of {logits.shape[-1]}: "
                "cannot sample; the weights or the artifact are broken (run `rgmobile validate`)"
            )
        if cfg.temperature == 0.0:
            return int(np.argmax(logits))
        with np.errstate(over="ignore"):
            z = logits.astype(np.float64) / cfg.temperature
        if not np.isfinite(z).all():  # a temperature so small the scaled logits overflow: its limit, greedy
            return int(np.argmax(logits))
        if cfg.top_k and cfg.top_k < z.shape[-1]:
            kth = np.partition(z, -cfg.top_k)[-cfg.top_k]
            z = np.where(z < kth, -np.inf, z)
        p = np.exp(z - np.max(z))
        p /= p.sum()
        if cfg.top_p < 1.0:
            order = np.argsort(-p)
            cum = np.cumsum(p[order])
            keep = cum - p[order] < cfg.top_p  # smallest prefix whose mass reaches top_p
            mask = np.zeros_like(p, dtype=bool)
            mask[order[keep]] = True
            p = np.where(mask, p, 0.0)
            p /= p.sum()
        return int(self.rng.choice(p.shape[-1], p=p))
