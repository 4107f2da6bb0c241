"""Wall time and memory of a run: peak RSS from the kernel plus a sampled RSS curve.

Two peaks, because they answer different questions:

* ``ru_maxrss`` (``resource.getrusage``) is the kernel's high-water mark for the
  whole process lifetime: exact, but it includes whatever ran before (in a test
  process, earlier tests). On Linux it is in KiB, on macOS in bytes.
* the sampled peak reads the current RSS (``/proc/self/statm``) every
  ``interval`` seconds in a background thread while the run is inside the
  monitor: it belongs to this run only, but can miss a spike shorter than
  the interval.

Used by ``rgmobile export`` (``format_details["export_stats"]`` of the manifest)
and by the bench workers.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss_bytes() -> int | None:
    """Resident set size of this process now; None where /proc is unavailable (macOS)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def current_anon_bytes() -> int | None:
    """The anonymous part of the resident set now (RssAnon: heap, runtime-packed weights; not the
    file-backed pages of mapped model files, which the kernel can drop and re-read); None where
    /proc is unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        return None
    return None


def max_rss_bytes(children: bool = False) -> int:
    """The kernel's peak RSS of this process (or of its waited-for children), in bytes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB
    return int(usage.ru_maxrss) * scale


@dataclass(frozen=True)
class ResourceStats:
    """What a :class:`ResourceMonitor` saw.

    Fields:
      wall_seconds: time inside the monitor.
      peak_rss_bytes: ru_maxrss when the monitor closed (process lifetime peak).
      sampled_peak_rss_bytes: highest sampled RSS inside the monitor (None without /proc).
      start_rss_bytes: RSS when the monitor opened (None without /proc).
      samples: number of RSS samples taken.
      sample_interval_seconds: time between samples.
    """

    wall_seconds: float
    peak_rss_bytes: int
    sampled_peak_rss_bytes: int | None
    start_rss_bytes: int | None
    samples: int
    sample_interval_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "wall_seconds": round(self.wall_seconds, 3),
            "peak_rss_bytes": self.peak_rss_bytes,
            "sampled_peak_rss_bytes": self.sampled_peak_rss_bytes,
            "start_rss_bytes": self.start_rss_bytes,
            "samples": self.samples,
            "sample_interval_seconds": self.sample_interval_seconds,
            "peak_rss_source": "resource.getrusage(RUSAGE_SELF).ru_maxrss (process lifetime)",
        }


class ResourceMonitor:
    """``with ResourceMonitor() as mon: ...`` then ``mon.stats()``."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self._peak: int | None = None
        self._start_rss: int | None = None
        self._samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._t1: float | None = None

    def _sample(self) -> None:
        rss = current_rss_bytes()
        if rss is not None:
            self._peak = rss if self._peak is None else max(self._peak, rss)
            self._samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> ResourceMonitor:
        self._t0 = time.perf_counter()
        self._start_rss = current_rss_bytes()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._sample()
            self._t1 = time.perf_counter()

    def stats(self) -> ResourceStats:
        """Stats so far (the monitor may still be running: the manifest is written inside it)."""
        self._sample()
        end = self._t1 if self._t1 is not None else time.perf_counter()
        return ResourceStats(
            wall_seconds=end - self._t0,
            peak_rss_bytes=max_rss_bytes(),
            sampled_peak_rss_bytes=self._peak,
            start_rss_bytes=self._start_rss,
            samples=self._samples,
            sample_interval_seconds=self.interval,
        )
