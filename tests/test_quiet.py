"""A newcomer's terminal: an export shows our progress and results, not upstream chatter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Lines upstream packages print on a plain ONNX export when nothing silences them.
UPSTREAM_NOISE = (
    "torchvision is not installed",
    "_registration.py",
    "_pytree.py",
    "has not been tested with coremltools",
)


def _export(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TORCH_LOGS"}
    cmd = [sys.executable, "-m", "rgmobile.cli", *extra, "export", "--random-init", "tiny", "--format", "onnx",
           "--prefill-chunk", "1", "--out", str(tmp_path / "a")]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_export_hides_upstream_noise_unless_verbose(tmp_path: Path) -> None:
    quiet = _export(tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert "decode.onnx" in quiet.stdout  # our results are shown
    assert not [n for n in UPSTREAM_NOISE if n in quiet.stdout + quiet.stderr], quiet.stderr
    loud = _export(tmp_path / "v", "--verbose")
    assert loud.returncode == 0, loud.stderr
    assert "torchvision is not installed" in loud.stderr  # the filter, not an upstream change, hid it
