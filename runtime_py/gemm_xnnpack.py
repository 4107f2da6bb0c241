"""XNNPACK's int8 GEMM, for the int8 GEMM peak (:mod:`runtime_py.gemm_peak`).

One ``nn.Linear`` [k -> n] quantized as the int8 recipe quantizes an ExecuTorch linear
(torchao ``Int8DynamicActivationIntxWeightConfig``, int8 weights per output channel, "8da8w":
activations quantized to int8 per token at run time), lowered with the XNNPACK partitioner
for a static [m, k] input and run by the ExecuTorch runtime. Like onnxruntime's
``DynamicQuantizeMatMul`` it includes the activation quantization and the dequantization.

Measured because the ExecuTorch programs run XNNPACK's kernels, not onnxruntime's, and neither
is the faster on every host and shape: on an AMD EPYC without AMX (2026-12-07)
scripts/group_size_kernels.py timed XNNPACK's int8 per-channel linears of a 2B MLP at 0.68 TOPS
(t = 32) where a bench run's onnxruntime peak had read 0.56 TOPS; at the peak's own shape (m = 512)
in the next bench run onnxruntime's ``MatMulInteger`` was the faster (0.62 against 0.50 TOPS).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np

NAME = "XNNPACK fully-connected (ExecuTorch, 8da8w)"


def available() -> bool:
    """Whether ExecuTorch and torchao are installed (the bench runs without them)."""
    try:
        import executorch.runtime  # noqa: F401
        import torchao  # noqa: F401
    except ImportError:
        return False
    return True


def xnnpack_int8_gemm(m: int, k: int, n: int, threads: int, seed: int) -> Callable[[], object]:
    """A callable running one XNNPACK int8 product [m, k] x [k, n] (weights random, prepacked)."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime
    from torchao.quantization import quantize_

    from quantization.executorch import torchao_config
    from quantization.recipe import WeightScheme

    torch.manual_seed(seed)
    linear = torch.nn.Sequential(torch.nn.Linear(k, n, bias=False)).eval()
    quantize_(linear, torchao_config(WeightScheme(8, "per_channel")))  # as the int8 recipe's linears
    rng = np.random.default_rng(seed + 1)
    a = torch.from_numpy(rng.standard_normal((m, k), dtype=np.float32))
    with torch.no_grad():
        ep = torch.export.export(linear, (a,), strict=False)
    program = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    buffer = io.BytesIO()
    program.write_to_file(buffer)
    portable_lib._unsafe_reset_threadpool(threads)
    loaded = Runtime.get().load_program(buffer.getvalue())
    method = loaded.load_method("forward")

    def run() -> object:
        return method.execute([a])

    run.program = loaded  # type: ignore[attr-defined]  # the method needs its program alive
    return run
