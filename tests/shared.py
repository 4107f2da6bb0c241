"""Session artifacts built once per test run, also when pytest-xdist runs the tests in several
worker processes (scripts/test.sh runs two, one per file at a time).

Without xdist a session fixture is built once by the one process. With it, every worker would build
its own copy of a fixture that tests in several files use (the ExecuTorch export of the tiny model,
the phone bundles: minutes each), so such a fixture is built under a file lock in a folder that
all workers of the run share, and the workers that come later use what the first one wrote.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock


def shared_root(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder for ``name`` that every worker of this run sees (a fresh temp folder without xdist)."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return tmp_path_factory.mktemp(name)
    root = tmp_path_factory.getbasetemp().parent / "shared" / name  # the run's folder above the workers'
    root.mkdir(parents=True, exist_ok=True)
    return root


def built_once(out: Path, build: Callable[[Path], object]) -> Path:
    """``out`` after ``build(out)`` ran once for this run: under a lock beside it, skipped when a
    finished mark says another worker built it. A build that fails leaves no mark (and no half
    folder), so the next worker that needs it builds it again and fails the same way."""
    mark = out.with_name(out.name + ".built")
    with FileLock(str(out.with_name(out.name + ".lock"))):
        if not mark.exists():
            shutil.rmtree(out, ignore_errors=True)
            try:
                build(out)
            except BaseException:
                shutil.rmtree(out, ignore_errors=True)
                raise
            mark.touch()
    return out
