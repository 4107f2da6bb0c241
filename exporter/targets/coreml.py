"""Core ML target: ``rgmobile export --format coreml [--ios 17|18] [--compute-precision fp16|fp32]``.

Programs (manifest ``programs``): ``decode`` (t = 1) and ``prefill`` (t = prefill chunk).

* iOS 18: ONE multifunction ``model.mlpackage`` with functions ``decode``
  (the default) and ``prefill``; ``coremltools.utils.save_multifunction``
  deduplicates identical constants, so the two functions share their weights.
* iOS 17 (no multifunction models): two packages, ``decode.mlpackage`` and
  ``prefill.mlpackage``, each with its own copy of the weights. Enumerated
  shapes would not help: the RG-LRU scan and conv taps are unrolled over a
  static t (exporter/step/step.py), so a program only runs the t it was traced
  with; and coremltools takes no input shapes for a torch.export program.

The whole state is explicit graph I/O by default (the IOSpec); ``--coreml-state
internal`` keeps the KV ring buffers as Core ML states instead
(exporter/targets/coreml_stateful.py). Core ML feature names cannot contain
dots: ``format_details["features"]`` maps every IOSpec name to its feature (or
state) name, kind and Core ML dtype. The models are batch 1.

Memory: the torch weights are needed only to convert. Every program is converted
first (quantized programs wait as unloaded packages on disk, with their quantization
plan), then the torch weights are released (exporter/model/release.py; a target owns
its model) before quantization and ``save_multifunction`` load the saved weights
again. ``format_details["memory_stages"]`` records the RSS of each stage
(exporter/targets/coreml_memory.py).

Quantized: from a quantized checkpoint (``given``), its own integers and scales are
shipped as constexpr ops (quantization/coreml_given.py, manifest
``quantization.coreml.given``); otherwise coremltools quantizes by the recipe
(quantization/coreml.py). Both run at the same stage, after the release.

Each model carries Xcode-readable metadata: author, description, version,
a description of every input/output/state, and ``rgmobile.*`` user-defined
metadata (config, window, vocab, special tokens, programs, feature map, source).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter import __version__
from exporter.artifact.manifest import Program
from exporter.errors import RgMobileError
from exporter.model.release import release_weights
from exporter.step.iospec import IOSpec, build_iospec
from exporter.targets import TargetResult, program_lengths
from exporter.targets.coreml_convert import (
    SPEC_VERSION,
    CoreMLSettings,
    build_program,
    convert_program,
    describe_features,
    feature_map,
    read_package_spec,
    rename_spec,
    set_metadata,
    write_package_spec,
)
from exporter.targets.coreml_memory import StageMemory
from exporter.targets.coreml_precision import FP32_DESCRIPTION
from exporter.targets.metadata import common_metadata
from exporter.upstream.coremltools_9_0 import lean_coremltools

if TYPE_CHECKING:
    from exporter.model.griffin import Griffin
    from exporter.targets import TargetOptions, WeightsOf
    from quantization.coreml import QuantPlan
    from quantization.coreml_given import GivenPlan
    from quantization.qweights import GivenQuantization
    from quantization.recipe import Recipe

log = logging.getLogger(__name__)

MULTIFUNCTION_FILE = "model.mlpackage"
DEFAULT_FUNCTION = "decode"


def settings_of(options: TargetOptions) -> CoreMLSettings:
    return CoreMLSettings(
        ios=options.ios,
        compute_precision=options.compute_precision,  # type: ignore[arg-type]  # checked in CoreMLSettings
        state=options.coreml_state,  # type: ignore[arg-type]
    )


def export(
    model: Griffin,
    out_dir: Path,
    options: TargetOptions,
    source: str,
    given: GivenQuantization | None = None,
    weights: WeightsOf | None = None,
) -> TargetResult:
    """Write the Core ML package(s) for ``model`` (loaded from ``source``) into ``out_dir``."""
    if weights is not None:
        raise RgMobileError("--stream-weights exports to onnx only; coreml needs the model's weights in memory")
    import coremltools as ct

    settings = settings_of(options)
    io = build_iospec(model.config)
    fmap = feature_map(io, settings.state)
    lens = program_lengths(options.prefill_chunk, options.prefill_lengths)
    staging = out_dir / ".staging"
    seconds: dict[str, float] = {}
    recipe = given.recipe if given is not None else options.quant_recipe
    quant_facts: dict[str, object] = {}
    mem = StageMemory()
    # 1. Convert every program while the torch weights exist. Unquantized programs are
    # renamed and saved right away; quantized ones wait, converted but not loaded: an
    # unloaded MLModel of coremltools' saved package (its MIL program dropped) and the
    # quantization plan, made from the const names and the model's names and shapes.
    pending: dict[str, tuple[Any, QuantPlan | GivenPlan]] = {}
    for name, seq in lens.items():
        t0 = time.perf_counter()
        log.info("coreml: %s (t=%d), %s, %s compute, %s state", name, seq, settings.deployment_target,
                 settings.compute_precision, settings.state)  # fmt: skip
        program = build_program(model, seq, settings.state)
        mem.mark(f"{name}: torch.export")
        mlmodel = convert_program(program, settings, mem)
        del program  # coremltools holds what it needs; the torch weights stay with ``model``
        mem.mark(f"{name}: ct.convert")
        if recipe.is_quantized:  # before save_multifunction, so both functions share the same quantized consts
            plan = _plan(mlmodel, model, recipe, settings.ios, given)
            mlmodel._mil_program = None  # the fp16/fp32 weights stay in the package on disk only
            pending[name] = (mlmodel, plan)
        else:
            _save_program(mlmodel, _program_path(out_dir, staging, name, settings), io, fmap)
            _drop_temp_package(mlmodel)
        del mlmodel  # the next program starts from the model's weights alone
        mem.mark(f"{name}: plan quantization" if recipe.is_quantized else f"{name}: save")
        seconds[name] = round(time.perf_counter() - t0, 1)
    meta = user_metadata(model, options, settings, source, lens, fmap)
    # 2. Nothing below needs the torch weights (only model.config): free them before the
    # quantization and the multifunction merge, which load the saved weights again.
    freed = release_weights(model)
    mem.mark("release torch weights")
    log.info("coreml: released %.2f GB of torch weights", freed / 1e9)
    # 3. Quantize each saved program from disk, then rename and save it.
    for name in lens:
        if name not in pending:
            continue
        t0 = time.perf_counter()
        mlmodel, plan = pending.pop(name)
        quantized = _apply(mlmodel, plan)
        quant_facts = plan.facts
        _drop_temp_package(mlmodel)  # the unquantized weights, on disk until exit otherwise
        del mlmodel
        mem.mark(f"{name}: quantize")
        _save_program(quantized, _program_path(out_dir, staging, name, settings), io, fmap)
        _drop_temp_package(quantized)
        del quantized
        mem.mark(f"{name}: save")
        seconds[name] = round(seconds[name] + time.perf_counter() - t0, 1)
    if settings.multifunction:
        desc = ct.utils.MultiFunctionDescriptor()
        for name in lens:
            desc.add_function(str(staging / f"{name}.mlpackage"), src_function_name="main", target_function_name=name)
        desc.default_function_name = DEFAULT_FUNCTION
        with lean_coremltools():  # the cross-function const comparison, chunked
            ct.utils.save_multifunction(desc, str(out_dir / MULTIFUNCTION_FILE))
        shutil.rmtree(staging)
        mem.mark("save_multifunction")
        _finish(out_dir / MULTIFUNCTION_FILE, model, settings, lens, fmap, meta, " + ".join(sorted(lens)))
        programs = {name: Program(MULTIFUNCTION_FILE, seq, entry=name) for name, seq in lens.items()}
    else:
        for name, seq in lens.items():
            _finish(out_dir / f"{name}.mlpackage", model, settings, {name: seq}, fmap, meta, name)
        programs = {name: Program(f"{name}.mlpackage", seq) for name, seq in lens.items()}
    mem.close()
    log.info("coreml: conversion seconds %s", seconds)
    return TargetResult(
        programs=programs,
        precision=recipe.name if recipe.is_quantized else settings.compute_precision,
        quantization={**recipe.to_dict(), "coreml": quant_facts} if recipe.is_quantized else None,
        details={
            "deployment_target": settings.deployment_target,
            "specification_version": SPEC_VERSION[settings.ios],
            "compute_precision": settings.compute_precision,
            "fp32_ops": FP32_DESCRIPTION if settings.compute_precision == "fp16" else "all",
            "state": settings.state,
            "layout": "multifunction" if settings.multifunction else "one package per program",
            "batch": 1,
            "features": fmap,
            "exporter": f"torch.export + coremltools {ct.__version__}",
            "rewrites": "exporter/targets/coreml_rewrites.py",
            "conversion_seconds": seconds,
            "memory_stages": mem.stages,
        },
    )


def _plan(
    mlmodel: Any, model: Griffin, recipe: Recipe, ios: int, given: GivenQuantization | None
) -> QuantPlan | GivenPlan:
    """How one converted program is quantized: the checkpoint's given integers, or coremltools' quantizer."""
    if given is not None:
        from quantization.coreml_given import plan_given

        return plan_given(mlmodel, model, given, ios)
    from quantization.coreml import plan_quantization

    return plan_quantization(mlmodel, model, recipe, ios)


def _apply(mlmodel: Any, plan: QuantPlan | GivenPlan) -> Any:
    """The quantized MLModel of a saved program, by the kind of ``plan``."""
    from quantization.coreml_given import GivenPlan, apply_given

    if isinstance(plan, GivenPlan):
        return apply_given(mlmodel, plan)
    from quantization.coreml import apply_plan

    return apply_plan(mlmodel, plan)


def _program_path(out_dir: Path, staging: Path, name: str, settings: CoreMLSettings) -> Path:
    """Where program ``name`` is saved: staging (merged by save_multifunction later) or the artifact."""
    path = (staging if settings.multifunction else out_dir) / f"{name}.mlpackage"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _save_program(mlmodel: Any, path: Path, io: IOSpec, fmap: dict[str, dict[str, str]]) -> None:
    """Rename the features of a converted (or quantized) program and save it to ``path``."""
    import coremltools as ct

    spec = mlmodel.get_spec()
    rename_spec(spec, io, fmap)
    renamed = ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir, skip_model_load=True)
    renamed.save(str(path))
    _drop_temp_package(renamed)


def _drop_temp_package(mlmodel: Any) -> None:
    """Delete the temporary .mlpackage coremltools made for ``mlmodel`` (else removed only at exit).

    ``mlmodel`` must not be used afterwards.
    """
    if getattr(mlmodel, "is_temp_package", False) and getattr(mlmodel, "package_path", None):
        shutil.rmtree(mlmodel.package_path, ignore_errors=True)


def user_metadata(
    model: Griffin,
    options: TargetOptions,
    settings: CoreMLSettings,
    source: str,
    lens: dict[str, int],
    fmap: dict[str, dict[str, str]],
) -> dict[str, str]:
    """The ``rgmobile.*`` user-defined metadata (strings) shown in Xcode's model view."""
    return {
        **common_metadata(model, options, source),
        "rgmobile.programs": json.dumps(lens),
        "rgmobile.state": settings.state,
        "rgmobile.compute_precision": settings.compute_precision,
        "rgmobile.features": json.dumps({k: v["name"] for k, v in fmap.items()}),
    }


def _finish(
    package: Path,
    model: Griffin,
    settings: CoreMLSettings,
    lens: dict[str, int],
    fmap: dict[str, dict[str, str]],
    meta: dict[str, str],
    what: str,
) -> None:
    """Descriptions and metadata, written into the package's spec in place."""
    spec = read_package_spec(package)
    io = build_iospec(model.config)
    window = model.config.window
    if spec.description.functions:
        for function in spec.description.functions:
            describe_features(function, io, fmap, window)
    else:
        describe_features(spec.description, io, fmap, window)
    steps = ", ".join(f"{n}: {t} token(s) per call" for n, t in lens.items())
    state = (
        "KV ring buffers are Core ML states; conv/RG-LRU states are inputs/outputs"
        if settings.state == "internal"
        else "the whole recurrent state is passed in and returned (feed present_* back as past_key_values_*)"
    )
    text = (
        f"RecurrentGemma/Griffin step ({what}; {steps}), {model.config.num_layers} layers, "
        f"window {window}, vocab {model.config.vocab_size}; {state}."
    )
    set_metadata(spec, text, __version__, meta)
    write_package_spec(package, spec)
