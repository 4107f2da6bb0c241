"""The ``rgmobile`` command line: generate | info | quantize | export | validate | package | bench.

Only the command line prints. A user error (:class:`RgMobileError`) becomes one line
on stderr and exit code 2, never a traceback (rgmobile/cli_errors.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from exporter.errors import RgMobileError
from rgmobile.bench_table import print_bench
from rgmobile.bundle_table import print_bundle
from rgmobile.cli_common import CheckpointArg, FloatCheckpointArg, int_list, out
from rgmobile.cli_errors import OneLineUsageErrors, err, user_errors
from rgmobile.cli_export import export
from rgmobile.cli_format import fmt_bytes as _fmt_bytes
from rgmobile.cli_format import fmt_metric as _fmt_metric
from rgmobile.info_table import print_info
from rgmobile.quality_table import print_quality

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help=__doc__, cls=OneLineUsageErrors, pretty_exceptions_enable=False
)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log progress to stderr")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not verbose:
        from exporter.quiet import quiet_upstream

        quiet_upstream()


@app.command()
@user_errors
def generate(
    checkpoint: CheckpointArg = None,
    prompt: Annotated[
        str | None, typer.Option(help="text to continue (default 'The'; with --resume, text to add, default none)")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="tokens to generate")] = 64,
    temperature: Annotated[float, typer.Option(help="0 = greedy")] = 0.0,
    top_k: Annotated[int, typer.Option(help="0 = off")] = 0,
    top_p: Annotated[float, typer.Option(help="1.0 = off")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="sampling seed")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads")] = None,
    spin: Annotated[
        bool, typer.Option(help="let onnxruntime's idle threads spin-wait (--no-spin: faster when a core is busy)")
    ] = True,
    save_state: Annotated[
        Path | None, typer.Option(help="write the state after the run to this .rgstate file (docs/bundle.md)")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="continue from a .rgstate file saved by --save-state (same model)")
    ] = None,
) -> None:
    """Generate text from a checkpoint or an exported artifact, streaming it."""
    from runtime_py.generate import generate as run
    from runtime_py.open import open_path
    from runtime_py.sampling import SamplingConfig
    from runtime_py.tokenizer import Tokenizer

    sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    if prompt is None:
        prompt = "" if resume is not None else "The"
    opened = open_path(checkpoint, threads=threads, spin=spin)
    tok = Tokenizer(opened.tokenizer_path)
    out.print(prompt, end="", highlight=False, markup=False)
    result = run(
        opened.backend,
        tok,
        prompt,
        max_new_tokens,
        sampling,
        on_text=lambda s: out.print(s, end="", highlight=False, markup=False),
        save_state=save_state,
        resume=resume,
    )
    out.print()
    resumed = f" (resumed {result.resumed_tokens})" if resume is not None else ""
    saved = f"; state saved to {save_state} ({_fmt_bytes(result.state_bytes)})" if save_state is not None else ""
    err.print(
        f"[dim]{opened.backend.name}: {len(result.prompt_ids)} prompt tokens{resumed} in "
        f"{result.prefill_seconds:.2f}s, {len(result.new_ids)} new tokens at "
        f"{result.decode_tokens_per_second:.1f} tok/s{', stopped on EOS' if result.stopped_on_eos else ''}{saved}[/]",
        highlight=False,
    )


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
    given = None
    if preset is not None:
        config = get_preset(preset)
        source = f"preset {preset}"
    else:
        from exporter.checkpoint.loader import default_checkpoint, load_checkpoint

        ckpt = load_checkpoint(checkpoint if checkpoint is not None else default_checkpoint())
        config = ckpt.config
        source = str(ckpt.source)
        given = ckpt.quantization
    print_info(config, source, given, checkpoint, out)


app.command()(user_errors(export))


@app.command()
@user_errors
def quantize(
    checkpoint: FloatCheckpointArg = None,
    recipe: Annotated[str, typer.Option(help="int8, int4 or a recipe .json")] = "int4",
    out_dir: Annotated[
        Path, typer.Option("--out", help="quantized checkpoint folder (an earlier one is replaced)")
    ] = Path("quantized"),
    group_size: Annotated[int | None, typer.Option(help="int4 group size (default: the recipe's, 32)")] = None,
    embedding_bits: Annotated[
        int | None, typer.Option(help="bits of the tied embedding/head, 8 or 4 (default: the recipe's)")
    ] = None,
    method: Annotated[str, typer.Option(help="rtn (round to nearest) or gptq (calibrated)")] = "rtn",
    calibration: Annotated[
        Path | None, typer.Option(help="gptq calibration text (default: first half of heldout.txt)")
    ] = None,
    calibration_tokens: Annotated[int, typer.Option(help="gptq calibration tokens at most")] = 4096,
    eval_text: Annotated[
        Path | None, typer.Option(help="text the quality report scores (default: heldout.txt of the model)")
    ] = None,
    eval_tokens: Annotated[int, typer.Option(help="text tokens the quality report scores")] = 4096,
) -> None:
    """Quantize a checkpoint once into a checkpoint folder every command takes (docs/quantized-checkpoint.md)."""
    from rgmobile.quantize import QuantizeOptions, quantize_checkpoint

    options = QuantizeOptions(
        out=out_dir, checkpoint=checkpoint, recipe=recipe, group_size=group_size, embedding_bits=embedding_bits,
        method=method, calibration=calibration, calibration_tokens=calibration_tokens, eval_text=eval_text,
        eval_tokens=eval_tokens,
    )  # fmt: skip
    with err.status(f"quantizing ({recipe}, {method})..."):
        result = quantize_checkpoint(options)
    r = result.report
    m, size, w, text = r["metrics"], r["size"], r["weights_sqnr_db"], r["text"]
    title = f"{out_dir}: {r['recipe']['name']} ({r['method']}), {text['tokens']} tokens of {text['source']}"
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value")
    rows = [
        ("size", f"{_fmt_bytes(size['checkpoint_bytes'])} = {size['ratio']:.3f} x fp32 "
         f"({_fmt_bytes(size['fp32_bytes'])})"),
        ("perplexity", f"{m['ppl_artifact']:.3f} vs fp32 {m['ppl_reference']:.3f} ({m['ppl_increase_pct']:+.2f}%)"),
        ("KL(fp32 || quantized)", f"mean {m['kl_mean']:.2e}, max {m['kl_max']:.2e} nats"),
        ("top-1 agreement", _fmt_metric(m["top1_agreement_text"])),
        ("logits SQNR", f"{m['sqnr_db']:.1f} dB"),
        ("weights SQNR", f"{w['all_db']:.1f} dB (worst {w['min_db']:.1f} dB: {w['min_param']})"),
        ("calibration", text["calibration_overlap"]),
        ("time", f"quantize {r['seconds']['quantize']:.2f}s, report {r['seconds']['report']:.1f}s"),
    ]  # fmt: skip
    for label, value in rows:
        table.add_row(label, value)
    out.print(table)
    out.print(f"wrote {result.out} (report: {result.out / 'quality_report.json'})", highlight=False)


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
    quality: Annotated[
        bool | None,
        typer.Option("--quality/--no-quality", help="quality report on held-out text (default: quantized only)"),
    ] = None,
    text: Annotated[
        Path | None, typer.Option(help="held-out text for the quality report (default: heldout.txt of the model)")
    ] = None,
    quality_tokens: Annotated[int, typer.Option(help="text tokens scored by the quality report")] = 4096,
) -> None:
    """Check an artifact against the PyTorch reference; exit 1 when a parity threshold is exceeded.

    Exit 3 ("incomplete", or "emulated-pass"): nothing failed, but a check could not run on this
    machine (a Core ML artifact off macOS: its program was emulated, Core ML predictions not run).
    """
    from runtime_py.thresholds import METRICS
    from runtime_py.validate import ValidateOptions
    from runtime_py.validate import validate as run_validate

    options = ValidateOptions(
        artifact=artifact, checkpoint=checkpoint, steps=steps, prompt_tokens=prompt_tokens,
        greedy_tokens=greedy_tokens, seed=seed, threads=threads, report=report, plot=plot,
        quality=quality, text=text, quality_tokens=quality_tokens,
    )  # fmt: skip
    with err.status("validating..."):
        result = run_validate(options)
    failed = {f.metric for f in result.failures}
    subject = "" if result.compared == "artifact" else f", compared: {result.compared}"
    table = Table(title=f"{artifact} ({result.format} {result.precision}{subject}) vs {result.checkpoint}")
    for col in ("metric", "value", "threshold", ""):
        table.add_column(col)
    for metric, bound in METRICS.items():
        limit = result.thresholds.get(metric)
        shown = "-" if limit is None else f"{'<=' if bound == 'max' else '>='} {_fmt_metric(limit)}"
        mark = "[red]FAIL[/]" if metric in failed else "[green]ok[/]"
        table.add_row(metric, _fmt_metric(result.summary[metric]), shown, mark)
    out.print(table)
    out.print(
        f"logits compared at {result.summary['positions']} positions ({result.prompt_tokens} prompt, "
        f"{result.decode_steps} decode tokens, "
        f"window {result.window}); greedy: {result.summary['greedy_common_prefix']}/{result.summary['greedy_tokens']}",
        highlight=False,
    )
    if result.quality:
        print_quality(result.quality, failed, out)
    if result.checks:
        marks = {"passed": "[green]passed[/]", "failed": "[red]FAILED[/]", "not run": "[yellow]not run[/]"}
        checks = Table(title="checks")
        for col in ("check", "status", "detail"):
            checks.add_column(col)
        for c in result.checks:
            checks.add_row(c["name"], marks.get(c["status"], c["status"]), c["detail"])
        out.print(checks)
    if result.status == "failed":
        for f in result.failures:
            err.print(f"[bold red]validate failed:[/] {f.message()}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    if result.status in ("incomplete", "emulated-pass"):  # exit 3 either way: the device did not run it
        for c in result.checks:
            if c["status"] == "not run":
                err.print(f"[yellow]{c['name']}: not run[/] ({c['detail']})", highlight=False, soft_wrap=True)
        what = "emulated pass" if result.status == "emulated-pass" else "incomplete"
        out.print(f"[yellow]validate {what}[/]: the checks above that ran passed; the rest need another machine")
        raise typer.Exit(3)
    out.print("[green]validate passed[/]")


@app.command()
@user_errors
def package(
    path: Annotated[Path, typer.Argument(help="artifact folder to package (with --check: a bundle folder)")],
    target: Annotated[str | None, typer.Option(help="android (onnx, executorch) or ios (coreml, onnx)")] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="bundle folder (an existing bundle is replaced)")
    ] = None,
    name: Annotated[str | None, typer.Option(help="bundle name (default: the --out folder name)")] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="reference checkpoint (default: the manifest's source)")
    ] = None,
    check: Annotated[bool, typer.Option("--check", help="re-verify the bundle PATH instead of packaging")] = False,
    selftest: Annotated[bool, typer.Option("--selftest", help="with --check: also run selftest.json here")] = False,
    threads: Annotated[int | None, typer.Option(help="CPU threads")] = None,
) -> None:
    """Package a validated artifact into a phone bundle (docs/bundle.md); --check re-verifies a bundle."""
    from rgmobile.package.bundle import PackageOptions, check_bundle, selftest_bundle
    from rgmobile.package.bundle import package as run_package

    if check:
        summary = check_bundle(path)
        print_bundle(path, summary.manifest, out)
        cases = summary.selftest["cases"]
        out.print(f"selftest.json: {len(cases)} cases, {len(summary.selftest['tokenizer'])} tokenizer strings; "
                  "manifest and every sha256 verified", highlight=False)  # fmt: skip
        if selftest:
            with err.status("running the self-test..."):
                result = selftest_bundle(path, threads=threads)
            out.print(("[green]" if result.passed else "[red]") + result.summary() + "[/]", highlight=False)
            if not result.passed:
                for line in result.failures:
                    err.print(f"[bold red]self-test:[/] {line}", highlight=False, soft_wrap=True)
                raise typer.Exit(1)
        return
    if target is None or out_dir is None:
        raise RgMobileError("package needs --target android|ios and --out BUNDLE_DIR (or --check BUNDLE_DIR)")
    options = PackageOptions(
        artifact=path, target=target, out=out_dir, name=name, checkpoint=checkpoint, threads=threads
    )
    with err.status(f"validating and packaging {path} for {target}..."):
        packaged = run_package(options)
    print_bundle(out_dir, packaged.manifest, out)
    if packaged.validation_status == "incomplete":
        out.print("[yellow]validation INCOMPLETE[/] (not a pass): packaged, and the bundle records status "
                  "'incomplete'. Not run here:", highlight=False)  # fmt: skip
        for line in packaged.incomplete_checks:
            out.print(f"  - {line}", highlight=False, markup=False)
    else:
        out.print("[green]validation passed[/]; bundle written to " + str(out_dir), highlight=False)


@app.command()
@user_errors
def bench(
    artifacts: Annotated[list[Path] | None, typer.Argument(help="exported artifact folders to measure")] = None,
    positions: Annotated[str, typer.Option(help="context positions, comma-separated")] = "0,2048,8192,32768",
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all cores)")] = None,
    steps: Annotated[int, typer.Option(help="timed decode steps per position")] = 32,
    warmup: Annotated[int, typer.Option(help="untimed decode steps before them (and prefill runs, at least one)")] = 4,
    prefill_chunk: Annotated[
        int | None, typer.Option(help="baselines' prefill chunk (default: the artifacts' chunk, or 32)")
    ] = None,
    prefill_repeats: Annotated[int, typer.Option(help="timed prefill steps per position")] = 3,
    baselines: Annotated[
        str, typer.Option(help="comma-separated: transformers, eager, gemma; 'none' for no baseline")
    ] = "transformers,eager",
    shape: Annotated[str | None, typer.Option(help="baseline shape preset (default: the first artifact's)")] = None,
    seed: Annotated[int, typer.Option(help="seed of baseline weights, states and tokens")] = 0,
    bandwidth_mib: Annotated[int, typer.Option(help="array size for the bandwidth measurement (MiB)")] = 512,
    timeout: Annotated[float | None, typer.Option(help="seconds allowed per artifact/baseline")] = None,
    gemm_m: Annotated[
        int, typer.Option(help="rows of the int8 GEMM peak's [M, 2560] x [2560, 7680] product; 0 skips it")
    ] = 512,
    ttft_tokens: Annotated[
        int, typer.Option(help="prompt length of each artifact's time to first token; 0 skips it")
    ] = 2048,
    busy_core: Annotated[
        bool, typer.Option(help="also decode each artifact with another process keeping a core busy")
    ] = False,
    together: Annotated[
        bool, typer.Option(help="also load each artifact's programs at once, as generate does, and record its memory")
    ] = False,
    out_json: Annotated[Path, typer.Option("--out", help="JSON result")] = Path("bench.json"),
    plot: Annotated[Path | None, typer.Option(help="PNG of tokens/s and RSS against position")] = None,
) -> None:
    """Decode/prefill speed, memory and bandwidth roofline of artifacts and baselines; exit 1 if one failed."""
    from runtime_py.bench import BenchOptions, measurement_errors, run_bench

    names = tuple(b.strip() for b in baselines.split(",") if b.strip() and b.strip() != "none")
    options = BenchOptions(
        artifacts=tuple(artifacts or ()), out=out_json, positions=int_list(positions, "--positions"),
        threads=threads, steps=steps, warmup=warmup, prefill_chunk=prefill_chunk, prefill_repeats=prefill_repeats,
        baselines=names, shape=shape, seed=seed, bandwidth_mib=bandwidth_mib, plot=plot, timeout=timeout,
        gemm_m=gemm_m, ttft_tokens=ttft_tokens, busy_core=busy_core, together=together,
    )  # fmt: skip
    with err.status("benchmarking (one process per artifact and baseline)..."):
        data = run_bench(options)
    print_bench(data, out)
    failed = measurement_errors(data)
    for line in failed:
        err.print(f"[bold red]failed:[/] {line}", highlight=False, soft_wrap=True)
    out.print(f"wrote {out_json}" + (f" and {plot}" if plot else ""), highlight=False)
    if failed:
        raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    app()
