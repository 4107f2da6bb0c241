"""Next-token samplers over logits [v]: greedy, temperature, top-k, top-p, seeded."""

from __future__ import annotations

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
        if self.temperature < 0:
            raise RgMobileError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise RgMobileError(f"top-k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise RgMobileError(f"top-p must be in (0, 1], got {self.top_p}")


class Sampler:
    def __init__(self, config: SamplingConfig) -> None:
        self.config = config
        self.rng = np.random.default_rng(config.seed)

    def __call__(self, logits: np.ndarray) -> int:
        """logits [v] -> token id."""
        cfg = self.config
        if cfg.temperature == 0.0:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / cfg.temperature
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
