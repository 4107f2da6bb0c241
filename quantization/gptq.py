"""Calibrated int4/int8 rounding in the manner of GPTQ (Frantar et al. 2022, arXiv:2210.17323).

Round-to-nearest (qweights.quantize_weights) rounds every weight on its own. GPTQ rounds the
columns (inputs) of a linear one at a time and moves each rounding error onto the columns not
yet rounded, weighted by the inverse Hessian of the layer's squared output error
``||X W^T - X Ŵ^T||^2`` over calibration inputs X: H = 2 X^T X / n (paper, section 3-4,
Algorithm 1 with its Cholesky form of the inverse and lazy block updates).

What it produces is exactly the data round-to-nearest produces (:class:`QuantizedTensor`:
symmetric integers, one float32 scale per output row or per group of ``group_size``
consecutive inputs, same layout), so every format ships it unchanged. Scales:
per_group takes the scale of a group from the current (already error-updated) weights when
the first column of the group is reached, amax / (2^(b-1) - 1) as tensor.py; with
``act_order`` (columns in order of decreasing Hessian diagonal) the group scales are fixed
up front from the original weights instead, since a group's columns are no longer
consecutive in the rounding order. per_channel fixes the row scales up front.

Only the block linears (the recipe's ``linears``) are treated; the tied embedding/head and the
RG-LRU gates take round-to-nearest from :func:`quantize_weights`.

Calibration runs either sequentially (default): block by block, each block's inputs computed
by the already quantized earlier blocks (round-to-nearest embedding and gates included), and
within a block stage by stage (the linears reading the same input, e.g. q/k/v, then o;
gate/up, then down), each stage's inputs computed with the earlier stages quantized; or in one
pass over the fp32 model (``sequential=False``).

Shapes: b = batch (1), t = calibration tokens per batch, i = inputs of a linear, o = outputs.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from exporter.errors import RgMobileError
from exporter.model.griffin import Griffin, ResidualBlock, positions
from exporter.model.state import LayerState
from quantization.qweights import QuantizedTensor, QuantizedWeights, load_dequantized, quantize_weights
from quantization.recipe import Recipe, WeightScheme
from quantization.tensor import qrange

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GptqOptions:
    """How GPTQ rounds.

    Fields:
      damp: added to the Hessian diagonal, as a fraction of its mean (the paper's lambda, 1%).
      act_order: round columns in order of decreasing Hessian diagonal (group scales fixed from the
        original weights then).
      block_size: columns per lazy batch update (speed only; a multiple of the group size is used).
      sequential: calibrate block by block on the quantized predecessors (else one fp32 pass).
    """

    damp: float = 0.01
    act_order: bool = False
    block_size: int = 128
    sequential: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.damp < 10.0:
            raise RgMobileError(f"gptq: damping must be in (0, 10), got {self.damp}")
        if self.block_size < 1:
            raise RgMobileError(f"gptq: block size must be >= 1, got {self.block_size}")


# ---------------------------------------------------------------------------------------------
# the rounding of one weight


@torch.no_grad()
def gptq_quantize(
    w: torch.Tensor, hessian: torch.Tensor, scheme: WeightScheme, options: GptqOptions
) -> QuantizedTensor:
    """Integers and scales of w [o, i] minimising ``tr((W - Ŵ) H (W - Ŵ)^T)`` greedily (GPTQ).

    ``hessian`` [i, i]: 2 X^T X / n of the calibration inputs (any positive multiple works).
    """
    if w.ndim != 2 or tuple(hessian.shape) != (w.shape[1], w.shape[1]):
        raise RgMobileError(f"gptq: weight {tuple(w.shape)} and Hessian {tuple(hessian.shape)} do not fit")
    lo, hi = qrange(scheme.bits)
    rows, cols = w.shape
    per_group = scheme.granularity == "per_group"
    gs = scheme.group_size if per_group else cols
    assert gs is not None
    if cols % gs:
        raise RgMobileError(f"gptq: input width {cols} is not a multiple of group size {gs}")
    W = w.detach().double().clone()
    H = hessian.detach().double().clone()
    dead = torch.diagonal(H) == 0  # inputs never seen: no error to compensate through them
    H[dead, dead] = 1.0

    # scales fixed up front: per channel always; per group under act_order (static groups)
    scale = (W.reshape(rows, cols // gs, gs).abs().amax(dim=2) / hi).clamp(min=1e-12)  # [o, groups]
    dynamic = per_group and not options.act_order

    perm = torch.argsort(torch.diagonal(H), descending=True, stable=True) if options.act_order else None
    if perm is not None:
        W, H = W[:, perm], H[perm][:, perm]
    H += options.damp * float(torch.diagonal(H).mean()) * torch.eye(cols, dtype=H.dtype)
    try:
        L = torch.linalg.cholesky(H)
        U = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)  # Hinv = U^T U
    except torch.linalg.LinAlgError:
        raise RgMobileError("gptq: the calibration Hessian is not positive definite; raise the damping") from None

    order = perm if perm is not None else torch.arange(cols)
    group_of = (order // gs).tolist()
    Q = torch.zeros(rows, cols, dtype=torch.float64)
    block = max(options.block_size // gs, 1) * gs if dynamic else options.block_size
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        err1 = torch.zeros_like(W1)
        for j in range(i2 - i1):
            g = group_of[i1 + j]
            if dynamic and (i1 + j) % gs == 0:  # a group starts: its scale from the updated weights
                scale[:, g] = (W1[:, j : j + gs].abs().amax(dim=1) / hi).clamp(min=1e-12)
            s = scale[:, g]
            col = W1[:, j]
            q = torch.clamp(torch.round(col / s), lo, hi)
            Q[:, i1 + j] = q
            err = (col - q * s) / U1[j, j]
            W1[:, j:] -= err.unsqueeze(1) * U1[j, j:].unsqueeze(0)
            err1[:, j] = err
        W[:, i2:] -= err1 @ U[i1:i2, i2:]
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    stored_scale = scale.float() if per_group else scale.float().reshape(rows, 1)
    return QuantizedTensor(Q.to(torch.int8), stored_scale, scheme)


# ---------------------------------------------------------------------------------------------
# Hessians from calibration inputs


class _Capture:
    """Forward hooks that accumulate sum X^T X (float64) of the named linears' inputs."""

    def __init__(self, modules: dict[str, nn.Linear]) -> None:
        self.sums = {n: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for n, m in modules.items()}
        self.rows = dict.fromkeys(modules, 0)
        self._seen: dict[str, torch.Tensor] = {}
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in modules.items()]

    def _hook(self, name: str):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            self._seen[name] = args[0]

        return hook

    def flush(self) -> None:
        """Add the inputs seen since the last flush (one product per distinct input tensor)."""
        done: dict[int, tuple[torch.Tensor, int]] = {}
        for name, x in self._seen.items():
            if id(x) not in done:
                x2 = x.detach().reshape(-1, x.shape[-1]).double()  # [b*t, i]
                done[id(x)] = (x2.t() @ x2, x2.shape[0])
            xtx, n = done[id(x)]
            self.sums[name] += xtx
            self.rows[name] += n
        self._seen.clear()

    def hessians(self) -> dict[str, torch.Tensor]:
        return {n: 2.0 * s / max(self.rows[n], 1) for n, s in self.sums.items()}

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def _linears(module: nn.Module, prefix: str, names: set[str]) -> dict[str, nn.Linear]:
    """Full parameter name (``...weight``) -> nn.Linear, for the linears whose weight is in ``names``."""
    out = {}
    for n, m in module.named_modules():
        full = f"{prefix}{n}.weight"
        if isinstance(m, nn.Linear) and full in names:
            out[full] = m
    return out


def _check_batches(batches: Sequence[torch.Tensor], vocab: int) -> None:
    if not batches:
        raise RgMobileError("gptq: no calibration batches (pass a --calibration text)")
    for b in batches:
        if b.ndim != 2 or b.shape[0] != 1 or b.shape[1] < 1 or b.dtype != torch.int64:
            raise RgMobileError(f"gptq: calibration batches must be int64 token ids [1, t], got {tuple(b.shape)}")
        if int(b.min()) < 0 or int(b.max()) >= vocab:
            raise RgMobileError(f"gptq: calibration token ids outside the vocabulary [0, {vocab})")


# ---------------------------------------------------------------------------------------------
# the model


@torch.no_grad()
def gptq_weights(
    model: Griffin, recipe: Recipe, batches: list[torch.Tensor], options: GptqOptions | None = None
) -> QuantizedWeights:
    """:data:`QuantizedWeights` of ``model`` under ``recipe``, the block linears rounded by GPTQ.

    ``batches``: calibration token ids [1, t], each run from position 0. ``model`` is not changed.
    Everything else the recipe quantizes (embedding/head, RG-LRU gates) is round-to-nearest.
    """
    options = options or GptqOptions()
    _check_batches(batches, model.config.vocab_size)
    weights = quantize_weights(model, recipe)  # round-to-nearest for all; the linears are replaced below
    if recipe.linears is None:
        return weights
    scheme = recipe.linears
    linear_names = {n for n, qt in weights.items() if qt.scheme == scheme and not qt.block_diagonal}
    linear_names &= {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    job = _Job(model, weights, linear_names, scheme, batches, options)
    (_sequential if options.sequential else _one_pass)(job)
    return weights


@dataclass(frozen=True)
class _Job:
    """What both strategies work on: ``weights`` (filled in for ``names``) of ``model``."""

    model: Griffin
    weights: QuantizedWeights
    names: set[str]
    scheme: WeightScheme
    batches: list[torch.Tensor]
    options: GptqOptions


def _one_pass(job: _Job) -> None:
    """Hessians of every linear from the fp32 model in one pass, then each linear rounded."""
    model, weights, scheme, batches, options = job.model, job.weights, job.scheme, job.batches, job.options
    modules = _linears(model, "", job.names)
    capture = _Capture(modules)
    try:
        for ids in batches:
            model(ids, positions(0, ids.shape[1]), model.init_state(1))
            capture.flush()
    finally:
        capture.close()
    for name, h in capture.hessians().items():
        weights[name] = gptq_quantize(modules[name].weight, h, scheme, options)


def _stages(
    layer: ResidualBlock, x: torch.Tensor, pos: torch.Tensor, state: LayerState, linears: dict[str, nn.Linear]
) -> list[list[str]]:
    """The layer's linears grouped by the input they read, in the order they run."""
    seen: list[tuple[torch.Tensor, list[str]]] = []

    def hook_for(name: str):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            for t, group in seen:
                if t is args[0]:
                    group.append(name)
                    return
            seen.append((args[0], [name]))

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in linears.items()]
    try:
        layer(x, pos, state)
    finally:
        for h in handles:
            h.remove()
    return [group for _, group in seen]


def _sequential(job: _Job) -> None:
    """Block by block, stage by stage, each stage's inputs from the already quantized model."""
    model, weights, names, scheme, batches, options = (
        job.model, job.weights, job.names, job.scheme, job.batches, job.options
    )  # fmt: skip
    work = copy.deepcopy(model).eval()
    load_dequantized(work, weights)  # round-to-nearest everywhere; the linears are redone in order
    original = dict(model.named_parameters())
    states = work.init_state(1)
    pos = [positions(0, ids.shape[1]) for ids in batches]
    xs = [work.embed_tokens(ids) * work.embed_scale for ids in batches]  # [1, t, d] per batch
    for i, layer in enumerate(work.layers):
        assert isinstance(layer, ResidualBlock)
        linears = _linears(layer, f"layers.{i}.", names)
        params = dict(layer.named_parameters())
        for stage in _stages(layer, xs[0], pos[0], states[i], linears):
            capture = _Capture({n: linears[n] for n in stage})
            try:
                for x, p in zip(xs, pos, strict=True):
                    layer(x, p, states[i])
                    capture.flush()
            finally:
                capture.close()
            for name, h in capture.hessians().items():
                qt = gptq_quantize(original[name], h, scheme, options)
                weights[name] = qt
                params[name.removeprefix(f"layers.{i}.")].copy_(qt.dequantize())
        xs = [layer(x, p, states[i])[0] for x, p in zip(xs, pos, strict=True)]
        log.info("gptq: block %d/%d quantized", i + 1, len(work.layers))


def output_error(x: torch.Tensor, w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """||X W^T - X Ŵ^T|| (Frobenius) for inputs x [..., i]: what GPTQ minimises per linear."""
    x2 = x.reshape(-1, x.shape[-1]).double()
    return float(torch.linalg.norm(x2 @ (w.double() - w_hat.double()).t()))
