"""This machine's int8 GEMM peak: how fast could prefill run at best?

Prefill runs every linear layer on a whole chunk at once, so it is bound by
integer matrix-multiply throughput, not by memory bandwidth (decode's bound,
:mod:`runtime_py.bandwidth`). The quantized artifacts run their linears as
int8 GEMMs (uint8 or int8 activations times int8/int4 weights), so

    prefill GEMM fraction = prefill tok/s x linear ops per token / int8 GEMM ops/s

is how much of what the cores can do the prefill program gets.

:func:`measure_int8_gemm` times onnxruntime's ``MatMulInteger`` (uint8
activations [m, k] x int8 weights [k, n] -> int32 [m, n]; the weights are an
initializer, as in an exported graph) on the CPU execution provider with the
benchmark's thread count: warm-up runs, then timed repeats; ops/s =
2·m·k·n / seconds (one multiply and one add per multiply-accumulate). The
default shape is an MLP projection of RecurrentGemma-2B (width 2560, MLP width
7680) on a 512-token chunk.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from exporter.errors import RgMobileError

log = logging.getLogger(__name__)

DEFAULT_SHAPE = (512, 2560, 7680)  # (m, k, n)


@dataclass(frozen=True)
class GemmPeak:
    """int8 GEMM throughput of this machine.

    Fields:
      threads: onnxruntime intra-op threads.
      m, k, n: the product [m, k] x [k, n] that was timed.
      samples_seconds: seconds of each timed run.
      kernel: what ran, with onnxruntime's version.
    """

    threads: int
    m: int
    k: int
    n: int
    samples_seconds: tuple[float, ...]
    kernel: str

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
            "method": "onnxruntime MatMulInteger, uint8 activations x int8 weights -> int32; ops = 2*m*k*n",
            "kernel": self.kernel,
            "threads": self.threads,
            "shape": {"m": self.m, "k": self.k, "n": self.n},
            "ops": self.ops,
            "repeats": len(self.samples_seconds),
            "best_ops_per_s": float(f"{self.best_ops_per_s:.4g}"),
            "median_ops_per_s": float(f"{self.median_ops_per_s:.4g}"),
            "samples_seconds": [round(s, 6) for s in self.samples_seconds],
        }


def _session(k: int, n: int, threads: int, seed: int) -> Any:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(seed).integers(-128, 128, (k, n), dtype=np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])],
        "int8_gemm_peak",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, ["m", k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, ["m", n])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def measure_int8_gemm(
    threads: int = 1,
    m: int = DEFAULT_SHAPE[0],
    k: int = DEFAULT_SHAPE[1],
    n: int = DEFAULT_SHAPE[2],
    repeats: int = 10,
    warmup: int = 3,
    seed: int = 0,
) -> GemmPeak:
    """Time ``repeats`` int8 products [m, k] x [k, n] after ``warmup`` untimed ones."""
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
    session = _session(k, n, threads, seed)
    feed = {"a": np.random.default_rng(seed + 1).integers(0, 256, (m, k), dtype=np.uint8)}
    for _ in range(warmup):
        session.run(None, feed)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feed)
        samples.append(time.perf_counter() - t0)
    kernel = f"MatMulInteger u8s8 (CPUExecutionProvider, onnxruntime {ort.__version__})"
    result = GemmPeak(threads, m, k, n, tuple(samples), kernel)
    log.info(
        "int8 GEMM %dx%dx%d (%d threads): best %.3g ops/s, median %.3g ops/s",
        m, k, n, threads, result.best_ops_per_s, result.median_ops_per_s,
    )  # fmt: skip
    return result
