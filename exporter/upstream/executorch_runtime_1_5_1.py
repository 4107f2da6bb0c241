"""ExecuTorch 1.5.1's runtime, set up the way a phone runs it: what its Python bindings do not expose.

Two things, both about memory while a program runs (not what it computes):

* **XNNPACK's weight cache** (:func:`enable_weight_cache`). Off by default in the PyPI
  build. Without it every method packs its own copy of the weights it reads. Loading prefill
  and decode together, as ``generate`` does, then holds two packed copies: 21.4 GB anonymous
  memory at 2B fp32, against 11.0 GB with the cache, which packs each named weight once and
  hands it to both methods. The option is set through ExecuTorch's C++
  ``executorch::runtime::set_option("XnnpackBackend", ...)`` with ctypes, because the Python
  bindings have no call for it. The ``BackendOption`` layout below is 1.5.1's
  (``runtime/backend/options.h``); every call is checked by reading the option back.
* **mlocked pages** (undone by :func:`exporter.mapped_pages.release_pages`). The bindings map
  program and data files with ``MlockConfig::UseMlockIgnoreErrors``. In an ordinary process
  that lock fails for anything above the lock limit (8 MB here, 64 KB on Android) and the pages
  load when they are read. Running as root, the lock succeeds, and every mapped segment stays
  resident: the whole tied-table of the embedding lookup (2.6 GB at 2B fp32), though a step
  reads a few rows. The backend unlocks the mappings of the artifact's own files and tells the
  kernel it may drop their pages: clean file pages, which a later read loads again.

The weight cache applies only on the pinned version (:func:`exporter.upstream.is_pinned`); on
another one the runtime keeps its defaults. Guarded by tests/test_upstream.py (the symbols exist and the option
reads back) and tests/test_executorch.py (the backend turns the cache on, holds no locked pages
of its artifact, and still matches the eager model).
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path
from typing import Any

from exporter.upstream import is_pinned

log = logging.getLogger(__name__)

VERSION = "1.5.1"
BACKEND = b"XnnpackBackend"
WEIGHT_CACHE_KEY = b"weight_cache_enabled"
# executorch::runtime::{get,set}_option(char const*, Span<BackendOption>); Span is passed as
# (pointer, length) in two registers on x86-64 and arm64 (a 16-byte trivially copyable struct).
_SET = "_ZN10executorch7runtime10set_optionEPKcNS0_4SpanINS0_13BackendOptionEEE"
_GET = "_ZN10executorch7runtime10get_optionEPKcNS0_4SpanINS0_13BackendOptionEEE"
_BOOL = 0  # index of bool in std::variant<bool, int, std::array<char, 256>>


class _BackendOption(ctypes.Structure):
    """``struct BackendOption { char key[64]; std::variant<bool, int, std::array<char, 256>> value; }``."""

    _fields_ = [
        ("key", ctypes.c_char * 64),
        ("value", ctypes.c_ubyte * 256),
        ("index", ctypes.c_ubyte),
        ("_pad", ctypes.c_ubyte * 3),
    ]


@functools.cache
def _function(name: str) -> Any:
    """``name`` from libexecutorch.so as the Python bindings loaded it (the process-wide option
    registry), typed (a ctypes function is typed per object: one object per name)."""
    from executorch.extension.pybindings import portable_lib

    path = Path(str(portable_lib.__file__)).parent.parent.parent / "lib" / "libexecutorch.so"
    fn = ctypes.CDLL(str(path))[name]
    fn.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
    fn.restype = ctypes.c_uint32
    return fn


def _call(name: str, option: _BackendOption) -> int:
    return int(_function(name)(BACKEND, ctypes.addressof(option), 1))


def weight_cache_enabled() -> bool:
    """XNNPACK's weight cache setting as the runtime reports it."""
    option = _BackendOption(key=WEIGHT_CACHE_KEY)
    error = _call(_GET, option)
    if error or option.index != _BOOL:
        raise RuntimeError(f"ExecuTorch get_option({WEIGHT_CACHE_KEY!r}) failed: error {error}, type {option.index}")
    return bool(option.value[0])


def enable_weight_cache() -> bool:
    """Turn XNNPACK's weight cache on for methods loaded from now on; False (with a warning) on
    an ExecuTorch other than the pinned one or when the runtime refuses."""
    import executorch.version

    if not is_pinned("executorch", executorch.version.__version__, VERSION, "each method packs its own weights"):
        return False
    option = _BackendOption(key=WEIGHT_CACHE_KEY)
    option.index = _BOOL
    option.value[0] = 1
    try:
        error = _call(_SET, option)
    except (OSError, AttributeError) as exc:  # no libexecutorch.so (another platform) or no such symbol
        log.warning("cannot reach ExecuTorch's set_option (%s): each method packs its own weights", exc)
        return False
    if error or not weight_cache_enabled():
        log.warning("ExecuTorch refused XNNPACK's weight cache (error %d): each method packs its own weights", error)
        return False
    return True
