"""What an artifact ships of a quantized checkpoint, read back out of its files, and the comparison.

Each format reads its files back into one shape, :class:`Shipped`
(quantization/onnx_readback.py, executorch_readback.py, coreml_readback.py ``read_shipped``);
:func:`differences` compares it with the checkpoint's :data:`QuantizedWeights`: integers
exactly, scales exactly after the cast to the dtype the format stores them in, weights a
format keeps float against ``q * scale``, and the output head against the embedding it is
tied to. An empty list means the artifact holds exactly the checkpoint's quantization.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from quantization.qweights import QuantizedTensor, QuantizedWeights

EMBEDDING = "embed_tokens.weight"
SCALE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Shipped:
    """One artifact file's quantized weights in our layout (quantization/qweights.py).

    ``weights``: the weights held as integers, scales widened to float32 from the stored dtype.
    ``scale_dtypes``: name -> stored scale dtype (absent: float32). ``float_weights``: weights
    the recipe quantizes that the format keeps float (their values must be ``q * scale``).
    ``head``: the output head's integers when stored apart from the embedding; ``head_tied``:
    False when the format records that the head does not read the embedding's integers.
    """

    weights: QuantizedWeights = field(default_factory=dict)
    scale_dtypes: dict[str, str] = field(default_factory=dict)
    float_weights: dict[str, torch.Tensor] = field(default_factory=dict)
    head: QuantizedTensor | None = None
    head_scale_dtype: str = "float32"
    head_tied: bool = True

    def __len__(self) -> int:
        return len(self.weights) + len(self.float_weights)


def as_stored(scale: torch.Tensor, dtype: str) -> torch.Tensor:
    """``scale`` as a format storing it in ``dtype`` holds it, widened back to float32."""
    if dtype not in SCALE_DTYPES:
        raise ValueError(f"unknown scale dtype {dtype!r}; known: {sorted(SCALE_DTYPES)}")
    return scale.to(SCALE_DTYPES[dtype]).float()


def _tensor_difference(name: str, want: QuantizedTensor, got: QuantizedTensor, dtype: str) -> str | None:
    if want.scheme != got.scheme or want.block_diagonal != got.block_diagonal:
        return f"{name}: scheme {got.scheme.to_dict()} != {want.scheme.to_dict()}"
    if want.q.shape != got.q.shape or want.scale.shape != got.scale.shape:
        return f"{name}: shapes q {tuple(got.q.shape)} / scale {tuple(got.scale.shape)} != {tuple(want.q.shape)}"
    if not torch.equal(want.q, got.q):
        return f"{name}: {int((want.q != got.q).sum())} integers differ"
    expected = as_stored(want.scale, dtype)
    if not torch.equal(expected, got.scale.float()):
        return f"{name}: {int((expected != got.scale.float()).sum())} scales differ (stored as {dtype})"
    return None


def differences(given: QuantizedWeights, shipped: Shipped) -> list[str]:
    """One line per weight of ``given`` the artifact does not hold exactly, or holds but was not given."""
    held = set(shipped.weights) | set(shipped.float_weights)
    lines = [f"{n}: missing" for n in sorted(set(given) - held)]
    lines += [f"{n}: not in the checkpoint's quantization" for n in sorted(held - set(given))]
    for name in sorted(set(given) & set(shipped.weights)):
        line = _tensor_difference(name, given[name], shipped.weights[name], shipped.scale_dtypes.get(name, "float32"))
        if line:
            lines.append(line)
    for name in sorted(set(given) & set(shipped.float_weights)):
        if not torch.equal(shipped.float_weights[name].float(), given[name].dequantize()):
            lines.append(f"{name}: the float weight is not q * scale")
    if not shipped.head_tied:
        lines.append("head: does not read the embedding's integers")
    if shipped.head is not None and EMBEDDING in given:
        line = _tensor_difference("head", given[EMBEDDING], shipped.head, shipped.head_scale_dtype)
        if line:
            lines.append(f"{line} (the head must hold the embedding's integers)")
    return lines
