"""The patches of pinned upstream internals (exporter/upstream/) still fit their upstream.

An upgrade of ExecuTorch or coremltools fails here first, naming the module to revisit:
the installed version must be the pinned one, every patched attribute must exist, and
the patches must apply inside their context and be gone after it. On another version a
patch warns and leaves the upstream as it is. What each patch computes is checked
against the original in tests/test_executorch.py and tests/test_coreml.py.
"""

from __future__ import annotations

import importlib
import logging

import numpy as np
import pytest

from exporter.upstream import base_version, coremltools_9_0, executorch_1_5_1, executorch_runtime_1_5_1


def test_installed_versions_are_the_pinned_ones() -> None:
    import coremltools
    import executorch.version

    assert base_version(executorch.version.__version__) == executorch_1_5_1.VERSION
    assert base_version(coremltools.__version__) == coremltools_9_0.VERSION
    assert base_version("1.5.1+cpu") == "1.5.1" and base_version("9.0") == "9.0"


def test_executorch_patched_attributes_exist() -> None:
    assert executorch_1_5_1.missing_attributes() == []


def test_executorch_patches_apply_and_restore() -> None:
    import copy

    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend
    from executorch.exir.backend.canonical_partitioners import duplicate_constant_node_pass

    before = dict(vars(XnnpackBackend))
    preprocess = XnnpackBackend.preprocess
    with executorch_1_5_1.lean_xnnpack_preprocess():
        assert XnnpackBackend.preprocess is not preprocess
        assert "copy_exported_program_for_preprocess" in vars(XnnpackBackend)  # on the class itself, not inherited
        assert duplicate_constant_node_pass.copy is executorch_1_5_1._ShareTensors
    assert dict(vars(XnnpackBackend)) == before
    assert duplicate_constant_node_pass.copy is copy


def test_executorch_patches_skip_another_version(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    monkeypatch.setattr(executorch_1_5_1, "VERSION", "0.0.0")
    before = dict(vars(XnnpackBackend))
    with caplog.at_level(logging.WARNING), executorch_1_5_1.lean_xnnpack_preprocess():
        assert dict(vars(XnnpackBackend)) == before
    assert "not the pinned 0.0.0" in caplog.text


def test_executorch_weight_cache_option_is_set_and_reads_back() -> None:
    """The C++ option calls resolve in the bindings' libexecutorch and the option reads back (the
    layout of ``BackendOption`` is 1.5.1's: a wrong one reads garbage or fails here)."""
    rt = executorch_runtime_1_5_1
    assert rt.VERSION == executorch_1_5_1.VERSION
    assert rt.enable_weight_cache() is True
    assert rt.weight_cache_enabled() is True


def test_executorch_weight_cache_skips_another_version(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(executorch_runtime_1_5_1, "VERSION", "0.0.0")
    with caplog.at_level(logging.WARNING):
        assert executorch_runtime_1_5_1.enable_weight_cache() is False
    assert "not the pinned 0.0.0" in caplog.text


def test_executorch_weight_cache_without_the_library_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def missing(name: str) -> None:
        raise OSError("libexecutorch.so: cannot open shared object file")

    monkeypatch.setattr(executorch_runtime_1_5_1, "_function", missing)
    with caplog.at_level(logging.WARNING):
        assert executorch_runtime_1_5_1.enable_weight_cache() is False
    assert "cannot reach ExecuTorch's set_option" in caplog.text


def test_coremltools_patched_attributes_exist() -> None:
    from coremltools.converters.mil.backend.mil import helper
    from coremltools.converters.mil.mil.passes.defs.quantization import FP16ComputePrecision

    dedup = importlib.import_module("coremltools.converters.mil.mil.passes.defs.cleanup.const_deduplication")
    assert callable(helper._get_offset_by_writing_data)
    assert isinstance(FP16ComputePrecision.__dict__["fp16_overflow"], staticmethod)
    assert dedup.np is np


def test_coremltools_patches_skip_another_version(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from coremltools.converters.mil.backend.mil import helper

    original = helper._get_offset_by_writing_data
    monkeypatch.setattr(coremltools_9_0, "VERSION", "0.0")
    with caplog.at_level(logging.WARNING), coremltools_9_0.lean_coremltools():
        assert helper._get_offset_by_writing_data is original
    assert "not the pinned 0.0" in caplog.text


def test_coremltools_pass_pipeline_leaves_out_the_failing_pass_with_states() -> None:
    name = "common::canonicalize_inplace_pattern"
    assert name in coremltools_9_0.pass_pipeline(internal_state=False).passes
    assert name not in coremltools_9_0.pass_pipeline(internal_state=True).passes
    assert name in coremltools_9_0.pass_pipeline(internal_state=False).passes  # a fresh pipeline each call
