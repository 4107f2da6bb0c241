"""validate's check that an artifact ships exactly the integers of the quantized checkpoint it is
validated against (``rgmobile quantize`` → ``export QDIR`` → ``validate --checkpoint QDIR``).

Each format reads its own files back (the ``readback`` of its entry in exporter/formats.py;
quantization/shipped.py compares).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from exporter.formats import get_format

if TYPE_CHECKING:
    from exporter.artifact.manifest import Manifest
    from exporter.model.griffin import Griffin
    from quantization.qweights import GivenQuantization

NAME = "quantized weights vs the checkpoint's integers"
_SHOWN = 3  # differences named in the detail line


def integers_check(artifact: Path, manifest: Manifest, given: GivenQuantization, model: Griffin) -> dict[str, str]:
    """The check record: passed when every file holds exactly ``given``'s integers and scales."""
    from quantization.shipped import differences

    # (artifact, manifest, model) -> [(file, quantization.shipped.Shipped)]
    unknown = f"{artifact}: no weight read-back for format {manifest.format!r}"
    reader = get_format(manifest.format, unknown, "valid").load("readback")
    lines, passed = [], True
    for file, shipped in reader(Path(artifact), manifest, model):
        diff = differences(given.weights, shipped)
        passed &= not diff
        if diff:
            more = f" (+{len(diff) - _SHOWN} more)" if len(diff) > _SHOWN else ""
            lines.append(f"{file}: {'; '.join(diff[:_SHOWN])}{more}")
        else:
            kept = f", {len(shipped.float_weights)} as float q*scale" if shipped.float_weights else ""
            lines.append(f"{file}: all {len(given.weights)} weights equal{kept}")
    return {"name": NAME, "status": "passed" if passed else "failed", "detail": "; ".join(lines)}
