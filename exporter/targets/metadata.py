"""The ``rgmobile.*`` metadata every target stores inside its program files (strings)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from exporter import __version__

if TYPE_CHECKING:
    from exporter.model.griffin import Griffin
    from exporter.targets import TargetOptions


def common_metadata(model: Griffin, options: TargetOptions, source: str) -> dict[str, str]:
    """Window, vocab, special ids, chunk, source and the full config, as ONNX/Core ML string props."""
    c = model.config
    return {
        "rgmobile.version": __version__,
        "rgmobile.prefill_chunk": str(options.prefill_chunk),
        "rgmobile.window": str(c.window),
        "rgmobile.vocab_size": str(c.vocab_size),
        "rgmobile.bos_id": str(c.bos_id),
        "rgmobile.eos_id": str(c.eos_id),
        "rgmobile.pad_id": str(c.pad_id),
        "rgmobile.source_checkpoint": source,
        "rgmobile.config": json.dumps(c.to_dict(), sort_keys=True),
    }
