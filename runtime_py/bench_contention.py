"""Decode with a busy core: what a phone's other apps do to a two-thread decode.

For each measured artifact, ``bench --busy-core`` decodes again at the first position, with and
without another process spinning on one core (a "hog": a Python busy loop, started just before the
subject's process and stopped after it), and for formats whose runtime can be told not to spin-wait
(onnxruntime: ``spin_control``) both with the runtime's default spinning thread pool and without.
All variants run one after another in the same bench, so their ratios compare like with like.

The result is the subject's ``contention`` entry (runtime_py/bench_schema.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

from runtime_py.bench_worker import WorkerSpec
from runtime_py.machine_load import load_sample

log = logging.getLogger(__name__)

HOG_COMMAND = (sys.executable, "-c", "while True: pass")
HOG_NOTE = "one other process spinning on a core (a Python busy loop) for the whole subject process"


@contextlib.contextmanager
def busy_core(busy: bool) -> Iterator[None]:
    """While inside: one hog process keeps a core busy (nothing when ``busy`` is False)."""
    if not busy:
        yield
        return
    hog = subprocess.Popen(HOG_COMMAND, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        yield
    finally:
        hog.kill()
        hog.wait()


def variants(spin_control: bool) -> list[tuple[bool, bool]]:
    """(spin, busy) pairs to measure: quiet then busy, with spinning, then (where the runtime
    can stop it) the same without."""
    spins = (True, False) if spin_control else (True,)
    return [(spin, busy) for spin in spins for busy in (False, True)]


def contention_spec(spec: WorkerSpec, spin: bool) -> WorkerSpec:
    """Decode only, at the first position; no prefill, no time to first token."""
    return dataclasses.replace(
        spec, positions=spec.positions[:1], prefill_chunk=1, ttft_tokens=0, spin=spin, together=False
    )


def _rate(rows: list[dict[str, Any]], spin: bool, busy: bool) -> float | None:
    """Decode tok/s of the (spin, busy) variant; None when it was not measured or failed."""
    return next((r["tokens_per_s"] for r in rows if (r["spin"], r["busy"]) == (spin, busy)), None)


def _over(top: float | None, bottom: float | None) -> float | None:
    return top / bottom if top and bottom else None


def measure_contention(
    spec: WorkerSpec, spin_control: bool, run: Callable[[WorkerSpec], dict[str, Any]]
) -> dict[str, Any]:
    """The ``contention`` entry of one artifact: ``run`` measures a worker spec in its own process."""
    rows: list[dict[str, Any]] = []
    for spin, busy in variants(spin_control):
        with busy_core(busy):
            sample = load_sample()  # with the hog running: shows that it holds its core
            result = run(contention_spec(spec, spin))
        row: dict[str, Any] = {"spin": spin, "busy": busy, "busy_cores_before": sample["busy_cores"]}
        if "error" in result:
            row.update(tokens_per_s=None, error=result["error"])
        else:
            d = result["positions"][0]["decode"]
            row.update(tokens_per_s=d["tokens_per_s"], p10_tokens_per_s=d["p10_tokens_per_s"],
                       p90_tokens_per_s=d["p90_tokens_per_s"], error=None)  # fmt: skip
        log.info("contention: spin=%s busy=%s: %s tok/s", spin, busy, row["tokens_per_s"])
        rows.append(row)
    return {
        "position": spec.positions[0],
        "hog": HOG_NOTE,
        "rows": rows,
        "busy_over_quiet": _over(_rate(rows, True, True), _rate(rows, True, False)),
        "busy_over_quiet_no_spin": _over(_rate(rows, False, True), _rate(rows, False, False)),
        "no_spin_over_spin_busy": _over(_rate(rows, False, True), _rate(rows, True, True)),
    }
