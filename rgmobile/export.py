"""The export stage: checkpoint in, artifact folder out (programs + tokenizer.model + manifest.json).

``export(options)`` loads the checkpoint, runs the target (exporter/targets/)
into a temporary folder beside ``options.out``, copies the tokenizer, writes
the manifest with every file's size and sha256, and only then renames the
folder into place: a failed or interrupted export leaves no half-written
artifact.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from exporter.artifact.manifest import Manifest, file_entries, read_manifest, write_manifest
from exporter.artifact.out_folder import check_out, check_replaceable
from exporter.errors import RgMobileError
from exporter.formats import get_format, quant_formats
from exporter.fsio import atomic_dir
from exporter.step.iospec import build_iospec
from exporter.targets import check_target, get_target
from quantization.recipe import Recipe, load_recipe

if TYPE_CHECKING:
    import torch

    from exporter.config import GriffinConfig
    from exporter.model.griffin import Griffin
    from exporter.resources import ResourceMonitor
    from exporter.targets import WeightsOf
    from quantization.qweights import GivenQuantization

log = logging.getLogger(__name__)

ExternalData = Literal["auto", "always", "never"]
# Targets that apply a --quant recipe (the others would silently export fp32): those whose entry
# (exporter/formats.py) has a recipe check.
QUANT_FORMATS: tuple[str, ...] = quant_formats()
TOKENIZER_FILE = "tokenizer.model"


@dataclass(frozen=True)
class ExportOptions:
    """What to export and where (Typer options of ``rgmobile export`` map 1:1 to these).

    Fields:
      out: the artifact folder to write (replaced if it already holds an artifact).
      format: export target, one of ``exporter.formats.FORMATS`` ("onnx", "executorch", "coreml").
      checkpoint: HF folder or official .pt; None = the bundled model.
      prefill_chunk: tokens per prefill step (the prefill program's t); 1 = decode only. 32 for
        every format: ExecuTorch prefills faster at 64, but a prompt's remainder after its last
        whole chunk runs as decode steps there, so short prompts wait longer (docs/performance.md).
      prefill_logits: "all" (every program returns logits for each of its positions) or
        "last" (the last position's only, logits [batch, 1, vocab]: the head runs once per
        prefill chunk instead of t times; ONNX and ExecuTorch). ``validate`` and ``quality``
        then score the prompt's other positions through the decode program. None (default):
        "last" for ONNX and ExecuTorch, "all" for Core ML; resolved in ``__post_init__``.
      one_program: ONNX: one graph (``step.onnx``) for every step length from 1 to
        ``prefill_chunk``; decode and prefill name the same file, so a runtime holds one
        session and one packed copy of the weights. False: one graph per step length
        (``decode.onnx``, ``prefill.onnx``). None (default): True for ONNX with a prefill
        program, else False; resolved in ``__post_init__``, so it is a bool afterwards.
      prefill_any_length: resolved, not set: whether the ONNX prefill program takes any t from 2 to
        ``prefill_chunk`` (its graph's token dimension symbolic; manifest ``min_seq_len`` 2), so a
        prompt's remainder after its last whole chunk is one call instead of decode steps. True for
        ONNX with a prefill program (``step.onnx``, or ``--prefill-int8``'s ``prefill.onnx``)
        unless ``one_program`` is False (``--graph-per-length``: fixed t per graph).
      tokenizer: SentencePiece model to ship, if not beside the checkpoint.
      external_data: keep weights outside the graph files: "auto" when a graph
        would pass the 2 GB protobuf limit, or "always" / "never" (ONNX).
      ios: Core ML minimum deployment target, 17 or 18 (18: one multifunction
        package for prefill + decode; 17: one package per program).
      compute_precision: Core ML compute precision, "fp16" or "fp32".
      coreml_state: Core ML state handling, "explicit" (all state is graph I/O)
        or "internal" (KV ring buffers as Core ML states; needs ios 18).
      random_init: a preset name ("tiny", "2b", ...) or a GriffinConfig .json: export random
        weights of that shape instead of a checkpoint (benchmarks; exporter/checkpoint/random_init.py).
        The artifact ships a placeholder byte-level tokenizer unless ``tokenizer`` is given.
      seed: seed of the random weights (``random_init`` only).
      quant: quantization recipe, "none", "int8", "int4" or a recipe .json
        (quantization/recipe.py); the manifest's ``precision`` becomes its name.
      group_size: int4 group size, overriding the recipe's (``Recipe.with_options``).
      embedding_bits: 8 or 4 for the tied embedding/head, overriding the recipe's.
      accuracy_level: onnxruntime MatMulNBits ``accuracy_level``. 4 (default) = int8
        activations quantized per block at run time, like ExecuTorch's 8da4w/8da8w:
        onnxruntime 1.32's fast CPU kernels; for 8-bit weights the only fast one (with 0,
        the int8 head of a 2B model is dequantized whole on every step: 2.9 s instead of
        31 ms per token, measured). 0 = unset: fp32 activations, the same maths as the
        eager reference (tests use it to check the integers); 1..3 = fp32/fp16/bf16.
      prefill_int8: ONNX, quantized: the prefill program's block linears as int8 per output column
        (``DynamicQuantizeMatMul``: the decode program's integers requantized, activations quantized
        per tensor at run time; quantization/onnx_prefill8.py). Prefill 3.4-3.7x faster (2B, chunk
        128, two cores, measured 2026-12-06), at the price of a second copy of the block linears
        (int8) beside the decode graph's, on disk and while the prefill session is open. Writes
        two graphs: ``decode.onnx`` (t = 1) and ``prefill.onnx`` (t = 2..chunk, or the chunk
        alone with ``--graph-per-length``).
      prefill_lengths: ExecuTorch and Core ML (iOS 18): more prefill step lengths beside the chunk,
        each a method (function) of its own in the same .pte (.mlpackage), ``prefill_<t>``, sharing
        one copy of the weights. Their programs are traced for one t each, so without them a
        prompt's remainder after its last whole chunk runs as decode steps; with, e.g., 16, 8, 4, 2
        beside a chunk of 32 it runs as at most five calls (the runtimes split a prompt greedily,
        longest first). Each in 2..``prefill_chunk`` - 1; stored longest first. Empty (default):
        the chunk and decode only. ONNX's prefill program already runs any t.
      stream_weights: ONNX: trace the step with fake weights and read or make each weight
        one at a time (exporter/targets/onnx_stream.py; a checkpoint through
        exporter/checkpoint/streamed.py), so the fp32 model never exists whole (9B: 34 GB).
        None (default): when the format is ONNX and the fp32 weights would not fit in the
        memory available (:func:`streams`, decided once the config is known).
    """

    out: Path
    format: str = "onnx"
    checkpoint: Path | None = None
    prefill_chunk: int = 32
    prefill_logits: str | None = None
    one_program: bool | None = None
    tokenizer: Path | None = None
    external_data: ExternalData = "auto"
    ios: int = 18
    compute_precision: str = "fp16"
    coreml_state: str = "explicit"
    random_init: str | None = None
    seed: int = 0
    quant: str = "none"
    group_size: int | None = None
    embedding_bits: int | None = None
    accuracy_level: int = 4
    stream_weights: bool | None = None
    prefill_int8: bool = False
    prefill_lengths: tuple[int, ...] = ()
    prefill_any_length: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        check_target(self.format)
        self._check_quant()
        if self.random_init is not None:
            from exporter.checkpoint.random_init import random_config

            random_config(self.random_init)  # validates the preset name or config file
            if self.checkpoint is not None:
                raise RgMobileError("pass either a checkpoint or --random-init, not both")
        if self.format == "coreml":
            from exporter.targets.coreml_convert import CoreMLSettings

            CoreMLSettings(self.ios, self.compute_precision, self.coreml_state)  # type: ignore[arg-type]  # validates
        if not isinstance(self.prefill_chunk, int) or not 1 <= self.prefill_chunk <= 4096:
            raise RgMobileError(f"--prefill-chunk must be an integer in 1..4096, got {self.prefill_chunk!r}")
        if self.prefill_logits is None:  # the default: the head once per chunk wherever a format can
            object.__setattr__(self, "prefill_logits", "all" if self.format == "coreml" else "last")
        if self.prefill_logits not in ("all", "last"):
            raise RgMobileError(f"--prefill-logits must be all or last, got {self.prefill_logits!r}")
        if self.prefill_logits == "last" and self.format == "coreml":
            raise RgMobileError(
                "--prefill-logits last is supported for onnx and executorch; "
                "Core ML packages return every position's logits"
            )
        self._check_prefill_int8()
        self._check_prefill_lengths()
        any_length = self.format == "onnx" and self.prefill_chunk >= 2 and self.one_program is not False
        object.__setattr__(self, "prefill_any_length", any_length)
        if self.one_program is None:  # the default: one graph wherever there is a choice
            one = self.format == "onnx" and self.prefill_chunk >= 2 and not self.prefill_int8
            object.__setattr__(self, "one_program", one)
        if self.one_program and self.format != "onnx":
            raise RgMobileError(f"--one-program is an onnx option; {self.format} exports one program per step length")
        if self.one_program and self.prefill_chunk < 2:
            raise RgMobileError("--one-program serves every step length up to --prefill-chunk, which must be >= 2")
        self._check_stream_weights()
        if self.external_data not in ("auto", "always", "never"):
            raise RgMobileError(f"--external-data must be auto, always or never, got {self.external_data!r}")
        check_out(Path(self.out))  # before any work: a refused --out must not cost a whole export

    @property
    def quant_recipe(self) -> Recipe:
        """The quantization recipe: ``quant`` loaded with the group size / embedding bits overrides."""
        return load_recipe(self.quant).with_options(self.group_size, self.embedding_bits)

    def _check_prefill_int8(self) -> None:
        if not self.prefill_int8:
            return
        if self.format != "onnx":
            raise RgMobileError(f"--prefill-int8 is an onnx option; --format {self.format} has no int8 prefill program")
        if self.quant_recipe.linears is None and self.checkpoint is None:  # a checkpoint may be quantized
            raise RgMobileError("--prefill-int8 requantizes the block linears' integers: pass --quant int4 or int8")
        if self.prefill_chunk < 2:
            raise RgMobileError("--prefill-int8 needs a prefill program: --prefill-chunk must be >= 2")
        if self.one_program:
            raise RgMobileError(
                "--prefill-int8 writes one graph per step length (the prefill graph holds other weights); "
                "drop --one-program"
            )

    def _check_prefill_lengths(self) -> None:
        lengths = self.prefill_lengths
        if not lengths:
            return
        if self.format == "onnx":
            raise RgMobileError(
                "--prefill-lengths is an executorch and coreml option; onnx's prefill program already runs "
                "any t from 2 to the chunk"
            )
        if self.format == "coreml" and self.ios < 18:
            raise RgMobileError(
                "--prefill-lengths on coreml needs --ios 18 (one multifunction package whose functions share the "
                "weights); iOS 17's one package per program would store the weights once per length"
            )
        if self.prefill_chunk < 3:
            chunk = self.prefill_chunk
            raise RgMobileError(f"--prefill-lengths lie in 2..chunk - 1; --prefill-chunk {chunk} leaves none")
        bad = [t for t in lengths if not isinstance(t, int) or not 2 <= t < self.prefill_chunk]
        if bad:
            raise RgMobileError(
                f"--prefill-lengths must be integers in 2..{self.prefill_chunk - 1} (below --prefill-chunk "
                f"{self.prefill_chunk}), got {', '.join(map(str, bad))}"
            )
        if len(set(lengths)) != len(lengths):
            raise RgMobileError(f"--prefill-lengths lists a length twice: {', '.join(map(str, lengths))}")
        object.__setattr__(self, "prefill_lengths", tuple(sorted(lengths, reverse=True)))

    def _check_stream_weights(self) -> None:
        if self.stream_weights and self.format != "onnx":
            raise RgMobileError(f"--stream-weights exports to onnx only; --format {self.format} loads the model whole")

    def _check_quant(self) -> None:
        if self.embedding_bits not in (None, 4, 8):
            raise RgMobileError(f"--embedding-bits must be 8 or 4, got {self.embedding_bits}")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise RgMobileError(f"--accuracy-level must be 0, 1, 2, 3 or 4, got {self.accuracy_level}")
        check_recipe_for_format(self.quant_recipe, self.format, self.ios, f"--quant {self.quant}")


def check_recipe_for_format(recipe: Recipe, fmt: str, ios: int, what: str) -> None:
    """Refuse, in one line, a recipe that format ``fmt`` cannot hold (``what`` names where it came from)."""
    if recipe.is_quantized and fmt not in QUANT_FORMATS:
        raise RgMobileError(f"{what} is not supported for --format {fmt} yet; quantized formats: {list(QUANT_FORMATS)}")
    if recipe.is_quantized:
        get_format(fmt).load("check_recipe")(recipe, ios)  # the format's own check (its entry)


def export(options: ExportOptions) -> Manifest:
    """Export ``options.checkpoint`` to ``options.out``; returns the manifest written.

    The wall time and peak RSS of the export go into ``format_details["export_stats"]``
    (:class:`exporter.resources.ResourceStats`).
    """
    from exporter.resources import ResourceMonitor

    with ResourceMonitor() as monitor:
        if options.random_init is not None:
            return _export_random(options, monitor)
        return _export_checkpoint(options, monitor)


def streams(options: ExportOptions, config: GriffinConfig) -> bool:
    """Whether this export streams its weights: as asked, or (unset) for ONNX when the fp32 model
    would not fit in the memory available."""
    if options.stream_weights is not None:
        return options.stream_weights
    if options.format != "onnx":
        return False
    from exporter.config import available_memory_bytes

    have = available_memory_bytes()
    return have is not None and config.memory_bytes(4) > have


def _export_checkpoint(options: ExportOptions, monitor: ResourceMonitor) -> Manifest:
    from exporter.checkpoint.loader import default_checkpoint, load_checkpoint
    from exporter.checkpoint.quantized import is_quantized_folder

    source = Path(options.checkpoint) if options.checkpoint is not None else default_checkpoint()
    # unset, a quantized checkpoint (small integers) is loaded; asked to stream one, open_streamed says why not
    quantized = source.is_dir() and is_quantized_folder(source)
    if options.format == "onnx" and (options.stream_weights or (options.stream_weights is None and not quantized)):
        from exporter.checkpoint.random_init import meta_model
        from exporter.checkpoint.streamed import open_streamed

        opened = open_streamed(source, tokenizer=options.tokenizer)  # headers only: cheap
        if streams(options, opened.config):
            label = str(Path(opened.source).resolve())

            def copy_tokenizer(dest: Path) -> None:
                shutil.copyfile(opened.tokenizer_path, dest)

            facts = {"checkpoint": label, "kind": opened.kind}
            return _write_artifact(
                options, monitor, meta_model(opened.config), label, facts, copy_tokenizer, weights_of=opened.read
            )
    ckpt = load_checkpoint(source, tokenizer=options.tokenizer)
    label = str(Path(ckpt.source).resolve())
    given = ckpt.quantization
    if given is not None:  # a quantized checkpoint: its integers are shipped as they are
        if options.quant_recipe.is_quantized:
            raise RgMobileError(
                f"{source}: the checkpoint is already quantized (recipe {given.recipe.name}); drop --quant "
                "(and --group-size / --embedding-bits): its own integers are exported"
            )
        check_recipe_for_format(given.recipe, options.format, options.ios, f"{source}: recipe {given.recipe.name}")

    def tokenizer(dest: Path) -> None:
        shutil.copyfile(ckpt.tokenizer_path, dest)

    source_facts = {"checkpoint": label, "kind": ckpt.kind}
    return _write_artifact(options, monitor, ckpt.model, label, source_facts, tokenizer, given)


def _export_random(options: ExportOptions, monitor: ResourceMonitor) -> Manifest:
    """``--random-init PRESET``: random weights of that shape, built one tensor at a time."""
    from exporter.checkpoint.loader import check_tokenizer
    from exporter.checkpoint.placeholder_tokenizer import write_placeholder_tokenizer
    from exporter.checkpoint.random_init import meta_model, random_config, random_model, random_tensor, source_label

    assert options.random_init is not None
    config = random_config(options.random_init)
    if options.tokenizer is not None:
        check_tokenizer(Path(options.tokenizer), config)
    label = source_label(options.random_init, options.seed)
    tensor = None
    if streams(options, config):  # the skeleton only; the ONNX target makes each weight from the seed
        model = meta_model(config)
        shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}

        def tensor(name: str) -> torch.Tensor:
            return random_tensor(config, options.seed, name, shapes[name])

    else:
        model = random_model(config, seed=options.seed)
    source = {"random_init": options.random_init, "seed": str(options.seed), "kind": "random"}

    def tokenizer(dest: Path) -> None:
        if options.tokenizer is not None:
            shutil.copyfile(options.tokenizer, dest)
        else:
            write_placeholder_tokenizer(dest, config)

    return _write_artifact(options, monitor, model, label, source, tokenizer, weights_of=tensor)


def _write_artifact(
    options: ExportOptions,
    monitor: ResourceMonitor,
    model: Griffin,
    label: str,
    source: dict[str, str],
    write_tokenizer: Callable[[Path], None],
    given: GivenQuantization | None = None,
    weights_of: WeightsOf | None = None,
) -> Manifest:
    """Run the target into a temporary folder, add tokenizer + manifest, rename into place
    (``weights_of``: each weight by name, when ``model`` is a skeleton without them)."""
    target = get_target(options.format)
    from exporter.artifact.identity import compute_identity
    from exporter.artifact.requirements import runtime_requirements

    # before the target runs: a target may retie or quantize in place
    weights = compute_identity(model, "fp32", weights_of)
    with atomic_dir(Path(options.out), check_replace=check_replaceable) as tmp:
        result = target(model, tmp, options, label, given, weights_of)
        write_tokenizer(tmp / TOKENIZER_FILE)
        if options.format == "onnx":  # onnxruntime-genai reads its own config and tokenizer.json
            from exporter.artifact.genai import write_genai_files

            write_genai_files(tmp, model.config, tmp / TOKENIZER_FILE, result.programs["decode"].file)
        manifest = Manifest(
            format=options.format,
            source=source,
            precision=result.precision,
            quantization=result.quantization,
            config=model.config,
            tokenizer_file=TOKENIZER_FILE,
            prefill_chunk=max(p.seq_len for p in result.programs.values()),
            io=build_iospec(model.config, last_logits=options.prefill_logits == "last"),
            programs=result.programs,
            files=file_entries(tmp),
            format_details={**result.details, "export_stats": monitor.stats().to_dict()},
            identity={**weights, "precision": result.precision},
            runtime_requirements=runtime_requirements(options.format, result.precision, result.details),
        )
        write_manifest(tmp, manifest)
        read_manifest(tmp)  # the artifact must read back before it is renamed into place
    log.info("exported %s (%s) to %s", label, options.format, options.out)
    return manifest
