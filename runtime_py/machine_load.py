"""What a benchmark needs to know about the machine it ran on: the CPU and how busy it was.

A decode rate means little without the CPU's vector extensions (int8 dot products decide int4
and int8 speed: AVX-512 VNNI / AVX-VNNI / AMX on x86, dotprod / i8mm on ARM) and without knowing
whether another process held a core meanwhile: a 2-thread decode loses far more than half its
speed when one of two cores is taken. :func:`cpu_info` reads the first; :func:`busy_cores`
samples the second from the kernel's CPU time counters (Linux; None elsewhere).
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

# The flags that decide the speed of our kernels, as the kernel names them in /proc/cpuinfo.
X86_FLAGS = (
    "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
    "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
)  # fmt: skip
ARM_FLAGS = ("asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2", "sme")
# Cores busy with other work above which a measurement is flagged as disturbed.
BUSY_CORES_WARN = 0.5


def _cpuinfo_text() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def cpu_info(cpuinfo: str | None = None) -> dict[str, Any]:
    """{"model": str, "isa": [flags present from X86_FLAGS / ARM_FLAGS], "source": where it was read}."""
    text = _cpuinfo_text() if cpuinfo is None else cpuinfo
    model, flags = "", set[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    if not text:
        return {"model": platform.processor() or platform.machine(), "isa": [], "source": "platform"}
    wanted = X86_FLAGS + ARM_FLAGS
    return {"model": model or platform.machine(), "isa": [f for f in wanted if f in flags], "source": "/proc/cpuinfo"}


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies summed over all cores, from /proc/stat; None where it does not exist."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if first[0] != "cpu":
        return None
    values = [int(v) for v in first[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


def busy_cores(seconds: float = 0.5) -> float | None:
    """How many cores were busy (any process) over ``seconds``; call it while this process idles."""
    before = _cpu_times()
    if before is None:
        return None
    time.sleep(seconds)
    after = _cpu_times()
    if after is None or after[1] == before[1]:
        return None
    fraction = (after[0] - before[0]) / (after[1] - before[1])
    return round(fraction * (os.cpu_count() or 1), 3)


def load_sample(seconds: float = 0.5) -> dict[str, Any]:
    """{"loadavg_1m", "busy_cores"} now; both None where the OS does not say."""
    try:
        load1 = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        load1 = None
    return {"loadavg_1m": load1, "busy_cores": busy_cores(seconds)}


def disturbed(sample: dict[str, Any]) -> bool:
    """True when another process kept at least half a core busy while nothing of ours ran."""
    busy = sample.get("busy_cores")
    return busy is not None and busy >= BUSY_CORES_WARN
