"""The ``rgmobile`` command line: generate | info | export | validate | package | bench.

Only this module prints. A user error (:class:`RgMobileError`) becomes one line
on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from exporter.errors import RgMobileError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
out = Console()
err = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

CheckpointArg = Annotated[
    Path | None,
    typer.Argument(help="HF folder, official .pt, or exported artifact folder (default: the bundled model)"),
]


def user_errors(fn: F) -> F:
    """Turn RgMobileError into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RgMobileError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log progress to stderr")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@app.command()
@user_errors
def generate(
    checkpoint: CheckpointArg = None,
    prompt: Annotated[str, typer.Option(help="text to continue")] = "The",
    max_new_tokens: Annotated[int, typer.Option(help="tokens to generate")] = 64,
    temperature: Annotated[float, typer.Option(help="0 = greedy")] = 0.0,
    top_k: Annotated[int, typer.Option(help="0 = off")] = 0,
    top_p: Annotated[float, typer.Option(help="1.0 = off")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="sampling seed")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads")] = None,
) -> None:
    """Generate text from a checkpoint or an exported artifact, streaming it."""
    from runtime_py.generate import generate as run
    from runtime_py.open import open_path
    from runtime_py.sampling import SamplingConfig
    from runtime_py.tokenizer import Tokenizer

    sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    opened = open_path(checkpoint, threads=threads)
    tok = Tokenizer(opened.tokenizer_path)
    out.print(prompt, end="", highlight=False, markup=False)
    result = run(
        opened.backend,
        tok,
        prompt,
        max_new_tokens,
        sampling,
        on_text=lambda s: out.print(s, end="", highlight=False, markup=False),
    )
    out.print()
    err.print(
        f"[dim]{opened.backend.name}: {len(result.prompt_ids)} prompt tokens in {result.prefill_seconds:.2f}s, "
        f"{len(result.new_ids)} new tokens at {result.decode_tokens_per_second:.1f} tok/s"
        f"{', stopped on EOS' if result.stopped_on_eos else ''}[/]"
    )


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024  # type: ignore[assignment]
    return str(n)


@app.command()
@user_errors
def info(
    checkpoint: CheckpointArg = None,
    preset: Annotated[str | None, typer.Option(help="describe a preset instead (tiny, small, 2b, 9b)")] = None,
) -> None:
    """Config, parameter counts and state size (which does not depend on context length)."""
    from exporter.config import GriffinConfig
    from exporter.config import preset as get_preset

    config: GriffinConfig
    if preset is not None:
        config = get_preset(preset)
        source = f"preset {preset}"
    else:
        from exporter.checkpoint.loader import default_checkpoint, load_checkpoint

        ckpt = load_checkpoint(checkpoint if checkpoint is not None else default_checkpoint())
        config = ckpt.config
        source = str(ckpt.source)
    table = Table(title=f"RecurrentGemma / Griffin: {source}", show_header=False)
    for key, value in config.to_dict().items():
        if key == "block_types":
            value = f"{len(value)} layers: " + "".join("R" if b == "recurrent" else "A" for b in value)
        table.add_row(key, str(value))
    counts = config.parameter_counts()
    table.add_row("parameters", f"{counts['total']:,} (embedding/head {counts['embedding']:,}, tied)")
    for label, nbytes in (("fp32", 4), ("fp16", 2)):
        state = config.state_bytes(dtype_bytes=nbytes)
        table.add_row(
            f"state (batch 1, {label})",
            f"{_fmt_bytes(state['total'])} = KV ring {_fmt_bytes(state['kv'])} + conv {_fmt_bytes(state['conv'])} "
            f"+ RG-LRU {_fmt_bytes(state['rg_lru'])} (fp32); the same at every context length",
        )
    out.print(table)


@app.command()
@user_errors
def export(
    checkpoint: CheckpointArg = None,
    fmt: Annotated[str, typer.Option("--format", help="export target: onnx")] = "onnx",
    out_dir: Annotated[Path, typer.Option("--out", help="artifact folder (an existing artifact is replaced)")] = Path(
        "artifact"
    ),
    prefill_chunk: Annotated[int, typer.Option(help="tokens per prefill step; 1 = decode program only")] = 32,
    tokenizer: Annotated[Path | None, typer.Option(help="tokenizer.model, if not beside the checkpoint")] = None,
    external_data: Annotated[
        str, typer.Option(help="weights outside the graph files: auto (graphs over 2 GB), always, never")
    ] = "auto",
) -> None:
    """Export a checkpoint to an artifact folder: program files, tokenizer.model, manifest.json."""
    from exporter.export import ExportOptions
    from exporter.export import export as run_export

    options = ExportOptions(
        out=out_dir, format=fmt, checkpoint=checkpoint, prefill_chunk=prefill_chunk, tokenizer=tokenizer,
        external_data=external_data,  # type: ignore[arg-type]  # checked in ExportOptions
    )  # fmt: skip
    with err.status(f"exporting to {fmt}..."):
        manifest = run_export(options)
    table = Table(title=f"{out_dir} ({manifest.format}, {manifest.precision})")
    table.add_column("file")
    table.add_column("size", justify="right")
    for f in manifest.files:
        table.add_row(f.path, _fmt_bytes(f.size))
    out.print(table)
    programs = ", ".join(f"{n} t={p.seq_len} ({p.file})" for n, p in manifest.programs.items())
    out.print(f"programs: {programs}", highlight=False)


def _fmt_metric(value: float) -> str:
    """3 significant digits; values just below 1 (cosine, agreement) as 1 - x so they stay readable."""
    if 0.999 < value < 1:
        return f"1 - {1 - value:.2g}"
    return f"{value:.3g}"


@app.command()
@user_errors
def validate(
    artifact: Annotated[Path, typer.Argument(help="exported artifact folder (has manifest.json)")],
    checkpoint: Annotated[
        Path | None, typer.Option(help="reference checkpoint (default: the manifest's source)")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="decode steps after the prompt (default: 3 x window)")] = None,
    prompt_tokens: Annotated[int | None, typer.Option(help="prompt length (default: 2 chunks + remainder)")] = None,
    greedy_tokens: Annotated[int, typer.Option(help="greedy continuation length compared")] = 64,
    seed: Annotated[int, typer.Option(help="seed of the sampled decode tokens")] = 0,
    threads: Annotated[int | None, typer.Option(help="CPU threads for the reference")] = None,
    report: Annotated[Path | None, typer.Option(help="write the JSON report here")] = None,
    plot: Annotated[Path | None, typer.Option(help="write a PNG of error vs position here")] = None,
) -> None:
    """Check an artifact against the PyTorch reference; exit 1 when a parity threshold is exceeded."""
    from runtime_py.thresholds import METRICS
    from runtime_py.validate import ValidateOptions
    from runtime_py.validate import validate as run_validate

    options = ValidateOptions(
        artifact=artifact, checkpoint=checkpoint, steps=steps, prompt_tokens=prompt_tokens,
        greedy_tokens=greedy_tokens, seed=seed, threads=threads, report=report, plot=plot,
    )  # fmt: skip
    with err.status("validating..."):
        result = run_validate(options)
    failed = {f.metric for f in result.failures}
    table = Table(title=f"{artifact} ({result.format} {result.precision}) vs {result.checkpoint}")
    for col in ("metric", "value", "threshold", ""):
        table.add_column(col)
    for metric, bound in METRICS.items():
        limit = result.thresholds.get(metric)
        shown = "-" if limit is None else f"{'<=' if bound == 'max' else '>='} {_fmt_metric(limit)}"
        mark = "[red]FAIL[/]" if metric in failed else "[green]ok[/]"
        table.add_row(metric, _fmt_metric(result.summary[metric]), shown, mark)
    out.print(table)
    out.print(
        f"{result.summary['positions']} positions ({result.prompt_tokens} prompt, {result.decode_steps} decode, "
        f"window {result.window}); greedy: {result.summary['greedy_common_prefix']}/{result.summary['greedy_tokens']}",
        highlight=False,
    )
    if result.failures:
        for f in result.failures:
            err.print(f"[bold red]validate failed:[/] {f.message()}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    out.print("[green]validate passed[/]")


def run() -> None:  # pragma: no cover - console entry for `python -m exporter.cli`
    app()
    sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    app()
