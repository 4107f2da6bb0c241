"""External data of ONNX initializers, read by offset.

The exporter's temporary graphs and the quantizer's spill file keep their weights as external
data with *absolute* locations, which ``onnx``'s own loader refuses; this is the one place that
reads ``location``/``offset``/``length``.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from exporter.errors import RgMobileError


@dataclass(frozen=True)
class ExternalSpan:
    """Where an initializer's bytes are: ``length`` None means to the end of the file."""

    location: str
    offset: int
    length: int | None


def external_span(init: onnx.TensorProto) -> ExternalSpan | None:
    """The span of an external initializer; None for one stored in the graph."""
    if init.data_location != onnx.TensorProto.EXTERNAL:
        return None
    info = {e.key: e.value for e in init.external_data}
    if "location" not in info:
        raise RgMobileError(f"onnx initializer {init.name}: external data without a location")
    length = int(info["length"]) if "length" in info else None
    return ExternalSpan(info["location"], int(info.get("offset", 0)), length)


def external_bytes(span: ExternalSpan) -> bytes:
    """The bytes of ``span``, read from its file."""
    with open(span.location, "rb") as f:
        f.seek(span.offset)
        data = f.read() if span.length is None else f.read(span.length)
    if span.length is not None and len(data) != span.length:
        raise RgMobileError(f"{span.location}: {len(data)} bytes at offset {span.offset}, expected {span.length}")
    return data
