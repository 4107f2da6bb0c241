"""Resident memory of a Core ML export, stage by stage (``format_details["memory_stages"]``).

Each :meth:`StageMemory.mark` closes a stage: the RSS at its end and the
highest RSS sampled while it ran (a background sampler, as
:class:`exporter.resources.ResourceMonitor`; a spike shorter than the interval
can be missed). Off Linux (no /proc) the values are None. Logged at INFO, so
``rgmobile -v export`` shows where the memory goes.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

from exporter.resources import ResourceMonitor, current_rss_bytes

log = logging.getLogger(__name__)

_GB = 1e9


def _gb(n: int | None) -> float | None:
    return None if n is None else round(n / _GB, 3)


class StageMemory:
    """``mem = StageMemory(); ...; mem.mark("decode: convert"); ...; mem.close(); mem.stages``."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.stages: list[dict[str, Any]] = []
        self._monitor: ResourceMonitor | None = None
        self._t0 = 0.0
        self._open()

    def _open(self) -> None:
        self._t0 = time.perf_counter()
        self._monitor = ResourceMonitor(self.interval).__enter__()

    def mark(self, stage: str, collect: bool = True) -> None:
        """End ``stage`` (after a ``gc.collect()`` unless told not to: freed memory shows as freed)."""
        if collect:
            gc.collect()
        assert self._monitor is not None
        self._monitor.close()
        peak = self._monitor.stats().sampled_peak_rss_bytes
        rss = current_rss_bytes()
        entry = {
            "stage": stage,
            "seconds": round(time.perf_counter() - self._t0, 1),
            "peak_gb": _gb(peak),
            "end_gb": _gb(rss),
        }
        self.stages.append(entry)
        log.info("coreml memory: %-28s peak %s GB, end %s GB, %ss", stage, entry["peak_gb"], entry["end_gb"],
                 entry["seconds"])  # fmt: skip
        self._open()

    def close(self) -> None:
        if self._monitor is not None:
            self._monitor.close()
            self._monitor = None
