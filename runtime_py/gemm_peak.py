"""This machine's int8 GEMM peak: how fast could prefill run at best?

Prefill runs every linear layer on a whole chunk at once, so it is bound by
integer matrix-multiply throughput, not by memory bandwidth (decode's bound,
:mod:`runtime_py.bandwidth`). The quantized artifacts run their linears as
int8 GEMMs (uint8 or int8 activations times int8/int4 weights), so

    prefill GEMM fraction = prefill tok/s x linear ops per token / int8 GEMM ops/s

is how much of what the cores can do the prefill program gets.

:func:`measure_int8_gemm` times onnxruntime's two int8 GEMM kernels on the same
product [m, k] x [k, n], the weights an initializer (prepacked, as in an exported graph),
on the CPU execution provider with the benchmark's thread count, in alternating rounds:

  MatMulInteger           uint8 activations x int8 weights -> int32;
  DynamicQuantizeMatMul   float activations quantized per tensor to uint8 x int8 weights
                          with a scale per output column -> float (what onnxruntime's
                          dynamic quantization writes; it includes the activation
                          quantization and the dequantization, so it is not flattered).

and, when ExecuTorch is installed, XNNPACK's (:mod:`runtime_py.gemm_xnnpack`: float activations
quantized per token, int8 weights per output channel: what an ExecuTorch int8 linear runs): on an
AMD EPYC without AMX it beat both at a 32-token chunk's shape, though not at the default m = 512
(2026-12-07).

The peak is the fastest kernel's best run. ``DynamicQuantizeMatMul`` is what an
``--prefill-int8`` prefill program runs (quantization/onnx_prefill8.py); on the Intel Xeon
with AMX of 2026-12-06 the two measured alike (best 1.7-2.9 against 1.3-2.1 TOPS, medians
0.8-1.4 TOPS, two cores; the best and the median of one kernel differ by up to 2x on a shared
host). ops/s = 2·m·k·n / seconds (one multiply and one add per multiply-accumulate).
The default shape is an MLP projection of
RecurrentGemma-2B (width 2560, MLP width 7680) on a 512-token chunk.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from exporter.errors import RgMobileError
from runtime_py import gemm_xnnpack

log = logging.getLogger(__name__)

DEFAULT_SHAPE = (512, 2560, 7680)  # (m, k, n)


KERNELS = ("MatMulInteger", "DynamicQuantizeMatMul")  # onnxruntime's; XNNPACK's is added when installed


@dataclass(frozen=True)
class GemmPeak:
    """int8 GEMM throughput of this machine: the fastest of the int8 kernels timed.

    Fields:
      threads: threads of every kernel (onnxruntime intra-op threads, ExecuTorch's thread pool).
      m, k, n: the product [m, k] x [k, n] that was timed.
      samples_seconds: seconds of each timed run of the fastest kernel.
      kernel: the fastest kernel, with its runtime's version.
      kernels: every kernel timed, as (name, seconds of each timed run): :data:`KERNELS`, then
        XNNPACK's (:data:`runtime_py.gemm_xnnpack.NAME`) when ExecuTorch is installed.
    """

    threads: int
    m: int
    k: int
    n: int
    samples_seconds: tuple[float, ...]
    kernel: str
    kernels: tuple[tuple[str, tuple[float, ...]], ...] = ()

    @property
    def ops(self) -> int:
        """Operations of one product: a multiply and an add per multiply-accumulate."""
        return 2 * self.m * self.k * self.n

    @property
    def best_ops_per_s(self) -> float:
        return self.ops / min(self.samples_seconds)

    @property
    def median_ops_per_s(self) -> float:
        return self.ops / statistics.median(self.samples_seconds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "the fastest of the int8 GEMM kernels timed (onnxruntime's MatMulInteger: uint8 x int8 -> "
            "int32; DynamicQuantizeMatMul: float activations quantized per tensor to uint8 x int8 weights with a "
            "scale per column -> float; with ExecuTorch installed XNNPACK's fully-connected: float activations "
            "quantized per token x int8 weights per channel -> float), timed in alternating rounds; ops = 2*m*k*n",
            "kernel": self.kernel,
            "threads": self.threads,
            "shape": {"m": self.m, "k": self.k, "n": self.n},
            "ops": self.ops,
            "repeats": len(self.samples_seconds),
            "best_ops_per_s": float(f"{self.best_ops_per_s:.4g}"),
            "median_ops_per_s": float(f"{self.median_ops_per_s:.4g}"),
            "samples_seconds": [round(s, 6) for s in self.samples_seconds],
            "kernels": {
                op: {
                    "best_ops_per_s": float(f"{self.ops / min(xs):.4g}"),
                    "median_ops_per_s": float(f"{self.ops / statistics.median(xs):.4g}"),
                }
                for op, xs in self.kernels
            },
        }


def _session(op: str, k: int, n: int, threads: int, seed: int) -> Any:
    """A one-node graph of ``op`` with int8 weights [k, n] as an initializer."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = [numpy_helper.from_array(rng.integers(-128, 128, (k, n), dtype=np.int8), "w")]
    if op == "MatMulInteger":
        node = helper.make_node("MatMulInteger", ["a", "w"], ["y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:  # onnxruntime's contrib op: a per-tensor dynamic quantization of a, a scale per column of w
        weights += [
            numpy_helper.from_array((rng.random(n, dtype=np.float32) + 0.5) / 128, "w_scale"),
            numpy_helper.from_array(np.zeros(n, np.int8), "w_zero"),
        ]
        node = helper.make_node("DynamicQuantizeMatMul", ["a", "w", "w_scale", "w_zero"], ["y"], domain="com.microsoft")
        a_type = y_type = TensorProto.FLOAT
    graph = helper.make_graph(
        [node], "int8_gemm_peak",
        [helper.make_tensor_value_info("a", a_type, ["m", k])],
        [helper.make_tensor_value_info("y", y_type, ["m", n])],
        weights,
    )  # fmt: skip
    opsets = [helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    onnx.checker.check_model(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _ort_run(op: str, m: int, k: int, n: int, threads: int, seed: int) -> Callable[[], object]:
    """A callable running onnxruntime's ``op`` on one [m, k] x [k, n] product."""
    session, feed = _session(op, k, n, threads, seed), _feed(op, m, k, seed)
    return lambda: session.run(None, feed)


def _feed(op: str, m: int, k: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed + 1)
    if op == "MatMulInteger":
        return {"a": rng.integers(0, 256, (m, k), dtype=np.uint8)}
    return {"a": rng.standard_normal((m, k), dtype=np.float32)}


def measure_int8_gemm(
    threads: int = 1,
    m: int = DEFAULT_SHAPE[0],
    k: int = DEFAULT_SHAPE[1],
    n: int = DEFAULT_SHAPE[2],
    repeats: int = 10,
    warmup: int = 3,
    seed: int = 0,
) -> GemmPeak:
    """Time ``repeats`` int8 products [m, k] x [k, n] per kernel after ``warmup`` untimed ones,
    the kernels alternating run by run (a shared machine's noise falls on both)."""
    if threads < 1 or repeats < 1 or warmup < 0 or min(m, k, n) < 1:
        raise RgMobileError(
            f"int8 GEMM peak: need threads >= 1, repeats >= 1, warmup >= 0 and a positive shape; "
            f"got threads={threads}, repeats={repeats}, warmup={warmup}, m,k,n={m},{k},{n}"
        )
    try:
        import onnxruntime as ort
    except ImportError:
        raise RgMobileError(
            "the int8 GEMM peak needs onnxruntime (pip install onnxruntime), or pass --gemm-m 0"
        ) from None
    runs = {op: _ort_run(op, m, k, n, threads, seed) for op in KERNELS}
    versions = dict.fromkeys(KERNELS, f"CPUExecutionProvider, onnxruntime {ort.__version__}")
    if gemm_xnnpack.available():
        import executorch.version

        runs[gemm_xnnpack.NAME] = gemm_xnnpack.xnnpack_int8_gemm(m, k, n, threads, seed)
        versions[gemm_xnnpack.NAME] = f"executorch {executorch.version.__version__}"
    for _ in range(warmup):
        for run in runs.values():
            run()
    samples: dict[str, list[float]] = {op: [] for op in runs}
    for _ in range(repeats):
        for op, run in runs.items():
            t0 = time.perf_counter()
            run()
            samples[op].append(time.perf_counter() - t0)
    best = min(runs, key=lambda op: min(samples[op]))
    kernel = f"{best} ({versions[best]})"
    result = GemmPeak(threads, m, k, n, tuple(samples[best]), kernel, tuple((op, tuple(samples[op])) for op in runs))
    log.info(
        "int8 GEMM %dx%dx%d (%d threads): best %.3g ops/s, median %.3g ops/s (%s); %s",
        m, k, n, threads, result.best_ops_per_s, result.median_ops_per_s, best,
        ", ".join(f"{op} best {result.ops / min(xs):.3g}" for op, xs in samples.items()),
    )  # fmt: skip
    return result
