"""GPTQ rounding: same data as round-to-nearest, lower layer output error, deterministic, clear errors."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from torch import nn

from exporter.errors import RgMobileError
from exporter.model.griffin import Griffin, positions
from quantization.gptq import GptqOptions, gptq_quantize, gptq_weights, output_error
from quantization.qweights import QuantizedWeights, load_dequantized, quantize_tensor, quantize_weights
from quantization.recipe import WeightScheme, load_recipe
from quantization.tensor import qrange
from rgmobile.quantize import calibration_batches
from tests.conftest import TINY_VOCAB, tiny_model

INT4 = WeightScheme(4, "per_group", 32)


def _batches(n: int = 3, t: int = 40, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.cat([torch.tensor([[2]]), torch.randint(3, TINY_VOCAB, (1, t - 1), generator=gen)], 1) for _ in range(n)
    ]


def _linear_inputs(model: Griffin, batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inputs [n, i] of every nn.Linear of the fp32 model over the batches (plain hooks, no GPTQ code)."""
    seen: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):

            def hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor, name: str = name) -> None:
                seen.setdefault(f"{name}.weight", []).append(args[0].reshape(-1, args[0].shape[-1]).clone())

            handles.append(m.register_forward_hook(hook))
    with torch.no_grad():
        for ids in batches:
            model(ids, positions(0, ids.shape[1]), model.init_state(1))
    for h in handles:
        h.remove()
    return {n: torch.cat(xs) for n, xs in seen.items()}


@pytest.mark.parametrize("sequential", [True, False])
def test_gptq_fits_the_scheme_of_round_to_nearest(sequential: bool) -> None:
    model = tiny_model()
    recipe = load_recipe("int4")
    before = {n: p.clone() for n, p in model.state_dict().items()}
    gptq = gptq_weights(model, recipe, _batches(), GptqOptions(sequential=sequential))
    rtn = quantize_weights(model, recipe)
    assert set(gptq) == set(rtn)
    linears = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    for name, qt in gptq.items():
        ref = rtn[name]
        lo, hi = qrange(qt.scheme.bits)
        assert qt.scheme == ref.scheme and qt.block_diagonal == ref.block_diagonal
        assert qt.q.dtype == torch.int8 and qt.q.shape == ref.q.shape and qt.scale.shape == ref.scale.shape
        assert int(qt.q.min()) >= lo and int(qt.q.max()) <= hi
        assert bool((qt.scale > 0).all()) and bool(torch.isfinite(qt.scale).all())
        if name not in linears:  # embedding/head and RG-LRU gates: round-to-nearest
            assert torch.equal(qt.q, ref.q) and torch.equal(qt.scale, ref.scale), name
    assert sum(not torch.equal(gptq[n].q, rtn[n].q) for n in linears) == len(linears)
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())  # the model is untouched
    load_dequantized(tiny_model(), gptq)  # loads into the model's own layout


@pytest.mark.parametrize("recipe_name", ["int4", "int8"])
def test_gptq_layer_output_error_not_larger_than_rtn(recipe_name: str) -> None:
    """What GPTQ minimises, per linear, on the fp32 inputs it calibrated on (one pass)."""
    model = tiny_model(seed=3)
    batches = _batches(4, 48, seed=1)
    recipe = load_recipe(recipe_name)
    gptq = gptq_weights(model, recipe, batches, GptqOptions(sequential=False))
    rtn = quantize_weights(model, recipe)
    params = dict(model.named_parameters())
    inputs = _linear_inputs(model, batches)
    assert len(inputs) == 4 * 6 + 2 * 7  # 4 recurrent blocks: 3 + 3 MLP; 2 attention: 4 + 3 MLP
    for name, x in inputs.items():
        w = params[name].detach()
        e_gptq = output_error(x, w, gptq[name].dequantize())
        e_rtn = output_error(x, w, rtn[name].dequantize())
        assert e_gptq <= e_rtn, f"{name}: GPTQ {e_gptq:.4g} > RTN {e_rtn:.4g}"


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_quantize_objective_with_correlated_inputs(act_order: bool) -> None:
    """tr(ΔW H ΔW^T) below round-to-nearest on strongly correlated inputs, with dead inputs too."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 16, generator=gen) @ torch.randn(16, 96, generator=gen)  # rank 16: correlated
    x[:, 5] = 0.0  # an input never seen
    x = x + 0.05 * torch.randn(512, 96, generator=gen) * (torch.arange(96) != 5)
    w = torch.randn(40, 96, generator=gen)
    h = 2 * x.double().t() @ x.double() / x.shape[0]
    for scheme in (INT4, WeightScheme(8)):
        qt = gptq_quantize(w, h, scheme, GptqOptions(act_order=act_order))
        rtn = quantize_tensor(w, scheme)
        assert output_error(x, w, qt.dequantize()) < 0.8 * output_error(x, w, rtn.dequantize())


def test_gptq_is_deterministic() -> None:
    model = tiny_model()
    a = gptq_weights(model, load_recipe("int4"), _batches())
    b = gptq_weights(model, load_recipe("int4"), _batches())
    _assert_same(a, b)
    c = gptq_weights(model, load_recipe("int4"), _batches(seed=5))
    assert any(not torch.equal(a[n].q, c[n].q) for n in a)  # the calibration text matters


def _assert_same(a: QuantizedWeights, b: QuantizedWeights) -> None:
    assert set(a) == set(b)
    for n in a:
        assert torch.equal(a[n].q, b[n].q) and torch.equal(a[n].scale, b[n].scale), n


def test_calibration_batches(tiny_tokenizer: Path) -> None:
    rng = random.Random(0)
    text = " ".join(rng.choice(["the", "cat", "sat", "on", "a", "mat."]) for _ in range(400))
    batches = calibration_batches(tiny_tokenizer, text, seq_len=33, max_tokens=100)
    assert len(batches) == 3  # 100 tokens -> three whole pieces of 32
    for b in batches:
        assert b.shape == (1, 33) and b.dtype == torch.int64 and int(b[0, 0]) == 2  # BOS
    gptq_weights(tiny_model(), load_recipe("int4"), batches)  # fit for the model


def test_bad_calibration_raises_one_clear_error(tiny_tokenizer: Path) -> None:
    for text in ("", "   \n"):
        with pytest.raises(RgMobileError, match="calibration: the text has 0 tokens"):
            calibration_batches(tiny_tokenizer, text, seq_len=64, max_tokens=1000)
    with pytest.raises(RgMobileError, match="fewer than one sequence of 63"):
        calibration_batches(tiny_tokenizer, "the cat sat.", seq_len=64, max_tokens=1000)
    with pytest.raises(RgMobileError, match="fewer than one sequence"):  # long text, too few tokens allowed
        calibration_batches(tiny_tokenizer, "the cat sat on the mat. " * 50, seq_len=64, max_tokens=10)
    model = tiny_model()
    with pytest.raises(RgMobileError, match="no calibration batches"):
        gptq_weights(model, load_recipe("int4"), [])
    with pytest.raises(RgMobileError, match="outside the vocabulary"):
        gptq_weights(model, load_recipe("int4"), [torch.tensor([[2, TINY_VOCAB]])])
    with pytest.raises(RgMobileError, match="damping"):
        GptqOptions(damp=0.0)
