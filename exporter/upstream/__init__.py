"""Patches of pinned upstream internals: one module per upstream, named by its version.

* :mod:`exporter.upstream.executorch_1_5_1`: ExecuTorch's XNNPACK lowering without its
  whole-weight copies.
* :mod:`exporter.upstream.coremltools_9_0`: coremltools' numpy checks and weight writer
  without whole-tensor temporaries, and a pass that fails on consecutive state updates.

Each module says what it patches, why, and which test guards it
(tests/test_upstream.py checks that the installed versions are the pinned ones and that
every patched attribute still exists). A patch applies only on its pinned version: on
another one it logs a warning and the upstream runs unpatched (correct, with more memory).
Upgrading an upstream is then one module to revisit.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def base_version(version: str) -> str:
    """``version`` without its local part: "1.5.1+cpu" -> "1.5.1"."""
    return version.split("+", 1)[0]


def is_pinned(package: str, installed: str, pinned: str, unpatched: str) -> bool:
    """True when ``installed`` is ``pinned``; else warn that ``package`` runs ``unpatched`` (a phrase)."""
    if base_version(installed) == pinned:
        return True
    log.warning("%s %s is not the pinned %s that exporter/upstream patches; %s", package, installed, pinned, unpatched)
    return False
