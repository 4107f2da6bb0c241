"""The one table of IOSpec dtypes: each name ("int64", "float32", "float16") in every form
a target or runtime needs (numpy, torch, ExecuTorch, onnxruntime, Core ML).

Only numpy is imported here: runtimes read specs without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from exporter.errors import RgMobileError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DType:
    """One IOSpec dtype.

    Fields:
      name: the IOSpec and manifest string, also the numpy and torch dtype name.
      executorch: the ExecuTorch ``ScalarType`` code (runtime/core/portable_type/scalar_type.h).
      onnxruntime: onnxruntime's type string of a graph input or output.
      coreml: the Core ML feature dtype (Core ML features have no int64: token ids are int32).
    """

    name: str
    executorch: int
    onnxruntime: str
    coreml: str

    @property
    def numpy(self) -> np.dtype:
        return np.dtype(self.name)

    @property
    def torch(self) -> torch.dtype:
        import torch

        dtype: torch.dtype = getattr(torch, self.name)
        return dtype

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize


DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        DType("int64", executorch=4, onnxruntime="tensor(int64)", coreml="int32"),
        DType("float32", executorch=6, onnxruntime="tensor(float)", coreml="float32"),
        DType("float16", executorch=5, onnxruntime="tensor(float16)", coreml="float16"),
    )
}

# Core ML feature dtype -> numpy: what the Core ML runtimes feed and read.
COREML_NUMPY: dict[str, np.dtype] = {d.coreml: np.dtype(d.coreml) for d in DTYPES.values()}


def dtype(name: str) -> DType:
    """The table row of IOSpec dtype ``name``; an unknown name fails with the valid ones."""
    try:
        return DTYPES[name]
    except KeyError:
        raise RgMobileError(f"unsupported dtype {name!r}; valid: {sorted(DTYPES)}") from None
