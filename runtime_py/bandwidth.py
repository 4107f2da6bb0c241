"""The memory-bandwidth roofline of decode: how fast could this machine decode at best?

Decoding one token reads every weight of the decode program once, plus the
state (read in, written out). On a CPU that is memory-bound, so

    roofline tokens/s = streaming read bandwidth / bytes read per token

and an artifact's achieved tokens/s divided by that is its fraction of the
roofline (the number ``bench`` reports against the int4 >= 70 % goal).

:func:`measure_bandwidth` measures the streaming read bandwidth the way the
decode loop sees it: ``numpy.sum`` over an array much larger than the caches,
split across the same number of threads the benchmark runs with (numpy
releases the GIL inside the reduction), best and median over repeats.
:func:`decode_weight_bytes` counts what the decode program must read: for
ONNX the bytes of every initializer and constant the decode graph holds
(inline or external; a shared ``weights.bin`` counts once), otherwise the size
of the decode program's file(s).
"""

from __future__ import annotations

import logging
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exporter.artifact.manifest import Manifest
from exporter.errors import RgMobileError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bandwidth:
    """Streaming read bandwidth of this machine.

    Fields:
      threads: threads that read concurrently (one slice of the array each).
      array_bytes: size of the array summed (must be far above the last-level cache).
      samples_gb_s: one GB/s (1e9 bytes/s) value per repeat.
    """

    threads: int
    array_bytes: int
    samples_gb_s: tuple[float, ...]

    @property
    def best_gb_s(self) -> float:
        return max(self.samples_gb_s)

    @property
    def median_gb_s(self) -> float:
        return statistics.median(self.samples_gb_s)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "numpy.sum over a float32 array, one slice per thread",
            "threads": self.threads,
            "array_bytes": self.array_bytes,
            "repeats": len(self.samples_gb_s),
            "best_gb_s": round(self.best_gb_s, 3),
            "median_gb_s": round(self.median_gb_s, 3),
            "samples_gb_s": [round(x, 3) for x in self.samples_gb_s],
        }


def measure_bandwidth(threads: int = 1, array_bytes: int = 512 * 2**20, repeats: int = 5) -> Bandwidth:
    """Sum a ``array_bytes`` float32 array ``repeats`` times with ``threads`` threads."""
    if threads < 1 or repeats < 1 or array_bytes < 2**20:
        raise RgMobileError("bandwidth: need threads >= 1, repeats >= 1 and an array of at least 1 MiB")
    data = np.ones(array_bytes // 4, dtype=np.float32)  # np.ones touches every page: no first-touch faults later
    parts = np.array_split(data, threads)
    samples = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(np.sum, parts))  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(np.sum, parts))
            samples.append(data.nbytes / (time.perf_counter() - t0) / 1e9)
    del parts, data
    result = Bandwidth(threads, array_bytes, tuple(samples))
    log.info("bandwidth (%d threads): best %.1f GB/s, median %.1f GB/s", threads, result.best_gb_s, result.median_gb_s)
    return result


def _program_paths(artifact_dir: Path, manifest: Manifest) -> list[Path]:
    prog = manifest.programs.get("decode") or manifest.program_for(1)[1]
    root = Path(artifact_dir) / prog.file
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]


def _onnx_weight_bytes(path: Path) -> int:
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load_model(str(path), load_external_data=False)
    seen_external: set[tuple[str, str, str]] = set()
    total = 0

    def tensor_bytes(t: onnx.TensorProto) -> int:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            key = (info.get("location", ""), info.get("offset", "0"), info.get("length", ""))
            if key in seen_external:  # the same bytes referenced twice are read once
                return 0
            seen_external.add(key)
            if "length" in info:
                return int(info["length"])
            return (path.parent / info["location"]).stat().st_size
        if t.HasField("raw_data"):
            return len(t.raw_data)
        itemsize = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        return int(np.prod(t.dims, dtype=np.int64)) * itemsize if t.dims else numpy_helper.to_array(t).nbytes

    for init in proto.graph.initializer:
        total += tensor_bytes(init)
    for node in proto.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    total += tensor_bytes(attr.t)
    return total


def decode_weight_bytes(artifact_dir: Path, manifest: Manifest) -> tuple[int, str]:
    """(bytes the decode program reads per token for its weights, how they were counted)."""
    paths = _program_paths(artifact_dir, manifest)
    if manifest.format == "onnx" and len(paths) == 1 and paths[0].suffix == ".onnx":
        return _onnx_weight_bytes(paths[0]), "onnx decode graph initializers + constants (external data counted once)"
    size = sum(p.stat().st_size for p in paths)
    shared = sum(1 for p in manifest.programs.values() if p.file == manifest.program_for(1)[1].file)
    how = "size of the decode program file(s)"
    data = manifest.data_file
    if data is not None:
        # fp32: the weights are in the data file, the tied table once (exporter/targets/executorch.py)
        size += (Path(artifact_dir) / data).stat().st_size
        how += f" and its data file {data} (the tied table stored once, read whole by the head)"
    elif manifest.format == "executorch":
        # The tied table is stored twice in a quantized .pte (exporter/targets/executorch.py): the head
        # reads all of it, the lookup reads one row per token, so the lookup copy is not read.
        cfg = manifest.config
        itemsize = 1 if (manifest.quantization or {}).get("embedding") else 4  # int8 lookup table or fp32
        size -= (cfg.vocab_size - 1) * cfg.width * itemsize
        how += f" minus the embedding lookup table but one row ({'int8' if itemsize == 1 else 'fp32'} copy)"
    if shared > 1:
        how += f" (the file holds {shared} programs: an upper bound if their weights are not shared)"
    return size, how


def roofline(bandwidth_gb_s: float, bytes_per_token: int) -> float:
    """The memory-bound ceiling of decode, in tokens/s."""
    return bandwidth_gb_s * 1e9 / bytes_per_token if bytes_per_token > 0 else float("inf")
