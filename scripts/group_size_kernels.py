"""Speed of the int4 GEMM kernels by weight group size, in both CPU runtimes, one process.

Two 2B MLP blocks (width 2560, 7680 hidden: two up projections and a down projection each,
with their residual), with random weights, as:

* ExecuTorch / XNNPACK: torchao ``Int8DynamicActivationIntxWeightConfig`` (what
  ``--format executorch --quant int4`` lowers: int8 activations per token, int4 weights per
  group), one ``.pte`` per scheme holding a t = 1 and a t = ``--chunk`` method;
* onnxruntime: one ``MatMulNBits`` graph per block size (``accuracy_level`` 4, fp32 scales,
  what ``--format onnx --quant int4`` writes), symbolic t.

Each round times every scheme in turn (decode: five t = 1 calls; prefill: one call of t =
``--chunk``), so a busy machine slows them alike; the first two rounds are warm-up. Reports the
medians and the prefill's integer ops per second (2 x multiply-accumulates). Weights are random:
a kernel's speed does not depend on them. Usage:

    python scripts/group_size_kernels.py --chunk 32 --rounds 12 --out kernels.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.fsio import write_json  # noqa: E402

WIDTH, HIDDEN, BLOCKS = 2560, 7680, 2
WARMUP_ROUNDS = 2
DECODE_CALLS = 5
# name -> (bits, group size; 0 = per output channel)
ET_SCHEMES = {"int4 g32": (4, 32), "int4 g64": (4, 64), "int4 g128": (4, 128), "int4 g256": (4, 256),
              "int4 per channel": (4, 0), "int8 per channel": (8, 0)}  # fmt: skip
ORT_BLOCKS = (32, 64, 128, 256)


def _mlp() -> Any:
    import torch
    from torch import nn

    class Mlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            shapes = ((WIDTH, HIDDEN), (WIDTH, HIDDEN), (HIDDEN, WIDTH))
            self.blocks = nn.ModuleList(
                nn.ModuleList(nn.Linear(i, o, bias=False) for i, o in shapes) for _ in range(BLOCKS)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for up, gate, down in self.blocks:  # type: ignore[misc]
                x = x + down(up(x) * gate(x))
            return x

    torch.manual_seed(0)
    return Mlp().eval()


def _pte(bits: int, group: int, chunk: int, path: Path) -> None:
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization import quantize_

    from quantization.executorch import torchao_config
    from quantization.recipe import WeightScheme

    model = _mlp()
    scheme = WeightScheme(bits, "per_channel") if group == 0 else WeightScheme(bits, "per_group", group)
    quantize_(model, torchao_config(scheme))  # as --format executorch quantizes its linears
    eps = {f"t{t}": torch.export.export(model, (torch.randn(1, t, WIDTH),), strict=False) for t in (1, chunk)}
    program = to_edge_transform_and_lower(eps, partitioner=[XnnpackPartitioner()]).to_executorch()
    with path.open("wb") as f:
        program.write_to_file(f)


def _onnx(block: int, path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits: list[Any] = []
    nodes: list[Any] = []

    def matmul(name: str, x: str, k: int, n: int) -> str:
        packed = rng.integers(0, 256, size=(n, k // block, block // 2), dtype=np.uint8)
        scales = (rng.random(n * (k // block), dtype=np.float32) * 0.01 + 1e-3).astype(np.float32)
        inits.extend([numpy_helper.from_array(packed, f"{name}.q"), numpy_helper.from_array(scales, f"{name}.s")])
        nodes.append(helper.make_node("MatMulNBits", [x, f"{name}.q", f"{name}.s"], [name], domain="com.microsoft",
                                      K=k, N=n, bits=4, block_size=block, accuracy_level=4))  # fmt: skip
        return name

    x = "x"
    for b in range(BLOCKS):
        up, gate = matmul(f"up{b}", x, WIDTH, HIDDEN), matmul(f"gate{b}", x, WIDTH, HIDDEN)
        nodes.append(helper.make_node("Mul", [up, gate], [f"h{b}"]))
        down = matmul(f"down{b}", f"h{b}", HIDDEN, WIDTH)
        nodes.append(helper.make_node("Add", [x, down], [f"x{b}"]))
        x = f"x{b}"
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, "t", WIDTH]) for n in ("x", x)]
    graph = helper.make_graph(nodes, "mlp", io[:1], io[1:], inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))


def _runners(chunk: int, threads: int, workdir: Path) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    """name -> (one decode call, one prefill call)."""
    import onnxruntime as ort
    import torch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    from exporter.upstream.executorch_runtime_1_5_1 import enable_weight_cache

    portable_lib._unsafe_reset_threadpool(threads)
    runtime = Runtime.get()
    enable_weight_cache()
    x1, xc = torch.randn(1, 1, WIDTH), torch.randn(1, chunk, WIDTH)
    out: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {}
    keep: list[Any] = []
    for name, (bits, group) in ET_SCHEMES.items():
        path = workdir / f"{name.replace(' ', '_')}.pte"
        _pte(bits, group, chunk, path)
        program = runtime.load_program(str(path))
        keep.append(program)
        one, many = program.load_method("t1"), program.load_method(f"t{chunk}")
        out[f"executorch {name}"] = (lambda m=one: m.execute([x1]), lambda m=many: m.execute([xc]))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    n1, nc = x1.numpy(), xc.numpy()
    for block in ORT_BLOCKS:
        path = workdir / f"mnb{block}.onnx"
        _onnx(block, path)
        s = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        out[f"onnxruntime int4 g{block}"] = (lambda s=s: s.run(None, {"x": n1}), lambda s=s: s.run(None, {"x": nc}))
    _runners.keep = keep  # type: ignore[attr-defined]  # programs outlive their methods
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunk", type=int, default=32, help="prefill call length t")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="JSON of every sample")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runners = _runners(args.chunk, args.threads, Path(tmp))
        samples: dict[str, dict[str, list[float]]] = {n: {"decode_ms": [], "prefill_ms": []} for n in runners}
        for r in range(args.rounds):
            for name, (decode, prefill) in runners.items():
                t0 = time.perf_counter()
                for _ in range(DECODE_CALLS):
                    decode()
                t1 = time.perf_counter()
                prefill()
                t2 = time.perf_counter()
                if r >= WARMUP_ROUNDS:
                    samples[name]["decode_ms"].append((t1 - t0) / DECODE_CALLS * 1e3)
                    samples[name]["prefill_ms"].append((t2 - t1) * 1e3)
    ops = 2 * BLOCKS * 3 * WIDTH * HIDDEN * args.chunk
    summary = {}
    for name, s in samples.items():
        decode_ms, prefill_ms = statistics.median(s["decode_ms"]), statistics.median(s["prefill_ms"])
        summary[name] = {"decode_ms": round(decode_ms, 3), "prefill_ms": round(prefill_ms, 2),
                         "prefill_tops": round(ops / prefill_ms / 1e9, 3)}  # fmt: skip
        print(f"{name:28s} decode {decode_ms:7.3f} ms   prefill t={args.chunk} {prefill_ms:8.2f} ms   "
              f"{summary[name]['prefill_tops']:.3f} TOPS")  # fmt: skip
    if args.out is not None:
        settings = {"chunk": args.chunk, "rounds": args.rounds, "threads": args.threads,
                    "warmup_rounds": WARMUP_ROUNDS, "decode_calls": DECODE_CALLS,
                    "shape": {"width": WIDTH, "hidden": HIDDEN, "blocks": BLOCKS}}  # fmt: skip
        write_json(args.out, {"settings": settings, "summary": summary, "samples": samples})


if __name__ == "__main__":
    main()
