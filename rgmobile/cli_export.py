"""``rgmobile export``: its options, and the table of what it wrote (registered in rgmobile/cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from exporter.formats import format_names
from rgmobile.cli_common import CheckpointArg, int_list, out
from rgmobile.cli_errors import err
from rgmobile.cli_format import fmt_bytes as _fmt_bytes


def export(
    checkpoint: CheckpointArg = None,
    fmt: Annotated[str, typer.Option("--format", help=f"export target: {', '.join(format_names())}")] = "onnx",
    out_dir: Annotated[Path, typer.Option("--out", help="artifact folder (an existing artifact is replaced)")] = Path(
        "artifact"
    ),
    prefill_chunk: Annotated[int, typer.Option(help="tokens per prefill step; 1 = decode program only")] = 32,
    prefill_logits: Annotated[
        str | None,
        typer.Option(
            help="logits a step returns: all positions, or last (head once per prefill chunk; onnx, executorch) "
            "[default: last; coreml: all]",
            show_default=False,
        ),
    ] = None,
    one_program: Annotated[
        bool | None,
        typer.Option(
            "--one-program/--graph-per-length",
            help="onnx: one graph for every step length up to the chunk (one session, weights packed once; "
            "the default), or one graph per step length with a fixed t (decode.onnx, prefill.onnx; "
            "with --prefill-int8 its prefill graph then runs the chunk only, the remainder as decode steps)",
            show_default=False,
        ),
    ] = None,
    tokenizer: Annotated[Path | None, typer.Option(help="tokenizer.model, if not beside the checkpoint")] = None,
    external_data: Annotated[
        str, typer.Option(help="weights outside the graph files: auto (graphs over 2 GB), always, never")
    ] = "auto",
    ios: Annotated[
        int, typer.Option(help="coreml: minimum iOS, 17 (two packages) or 18 (one multifunction package)")
    ] = 18,
    compute_precision: Annotated[str, typer.Option(help="coreml: compute precision, fp16 or fp32")] = "fp16",
    coreml_state: Annotated[
        str, typer.Option(help="coreml: explicit (all state is I/O) or internal (KV as Core ML states; iOS 18)")
    ] = "explicit",
    random_init: Annotated[
        str | None,
        typer.Option(help="export random weights of this shape instead: a preset (tiny, 2b, ...) or a config .json"),
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the --random-init weights")] = 0,
    quant: Annotated[str, typer.Option(help="weight quantization: none, int8, int4 or a recipe .json")] = "none",
    group_size: Annotated[int | None, typer.Option(help="int4 group size (default: the recipe's, 32)")] = None,
    embedding_bits: Annotated[
        int | None, typer.Option(help="bits of the tied embedding/head, 8 or 4 (default: the recipe's)")
    ] = None,
    accuracy_level: Annotated[
        int,
        typer.Option(
            help="onnx MatMulNBits accuracy_level: 4 = int8 activations per block (default: onnxruntime's "
            "fast kernels; 8-bit weights have no other), 0 = fp32 activations (exact integers, slow for 8-bit)"
        ),
    ] = 4,
    prefill_int8: Annotated[
        bool,
        typer.Option(
            "--prefill-int8",
            help="onnx, quantized: the prefill program's block linears as int8 per output column "
            "(DynamicQuantizeMatMul, the decode integers requantized): faster prefill, a second copy of "
            "those weights; writes decode.onnx and prefill.onnx",
        ),
    ] = False,
    prefill_lengths: Annotated[
        str,
        typer.Option(
            help="executorch, coreml (iOS 18): more prefill step lengths beside the chunk, comma-separated (e.g. "
            "16,8,4,2), each a method sharing the weights, so a prompt's remainder runs in a few calls instead of "
            "decode steps",
        ),
    ] = "",
    stream_weights: Annotated[
        bool | None,
        typer.Option(
            "--stream-weights/--no-stream-weights",
            help="onnx: trace with fake weights and read (or make) each weight one at a time, so the fp32 model "
            "never exists whole [default: only when it would not fit in memory, e.g. 9b]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Export a checkpoint to an artifact folder: program files, tokenizer.model, manifest.json."""
    from rgmobile.export import ExportOptions
    from rgmobile.export import export as run_export

    options = ExportOptions(
        out=out_dir, format=fmt, checkpoint=checkpoint, prefill_chunk=prefill_chunk, prefill_logits=prefill_logits,
        one_program=one_program, tokenizer=tokenizer,
        external_data=external_data,  # type: ignore[arg-type]  # checked in ExportOptions
        ios=ios, compute_precision=compute_precision, coreml_state=coreml_state,
        random_init=random_init, seed=seed,
        quant=quant, group_size=group_size, embedding_bits=embedding_bits, accuracy_level=accuracy_level,
        stream_weights=stream_weights, prefill_int8=prefill_int8,
        prefill_lengths=int_list(prefill_lengths, "--prefill-lengths"),
    )  # fmt: skip
    with err.status(f"exporting to {fmt}..."):
        manifest = run_export(options)
    table = Table(title=f"{out_dir} ({manifest.format}, {manifest.precision})")
    table.add_column("file")
    table.add_column("size", justify="right")
    for f in manifest.files:
        table.add_row(f.path, _fmt_bytes(f.size))
    out.print(table)
    programs = ", ".join(
        f"{n} t={p.seq_len if p.min_seq_len is None else f'{p.min_seq_len}..{p.seq_len}'} ({p.file})"
        for n, p in manifest.programs.items()
    )
    out.print(f"programs: {programs}", highlight=False)
    stats = manifest.format_details.get("export_stats")
    if stats:
        out.print(
            f"export: {stats['wall_seconds']:.1f}s, peak RSS {_fmt_bytes(stats['peak_rss_bytes'])}", highlight=False
        )
