"""Recipes as data and the tensor maths under every format's quantization."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from exporter.errors import RgMobileError
from exporter.model.griffin import positions
from quantization.recipe import Recipe, WeightScheme, load_recipe
from quantization.reference import fake_quantized, weight_classes
from quantization.tensor import dequantize, fake_quantize, quantize, sqnr_db
from tests.conftest import tiny_model


def test_builtin_recipes_load() -> None:
    int8, int4, none = load_recipe("int8"), load_recipe("int4"), load_recipe("none")
    assert int8.linears == WeightScheme(8) and int8.embedding == WeightScheme(8)
    assert int4.linears == WeightScheme(4, "per_group", 32) and int4.embedding == WeightScheme(8)
    assert not none.is_quantized and int4.is_quantized
    assert Recipe.from_dict(int4.to_dict()) == int4
    assert int4.with_options(group_size=64).linears == WeightScheme(4, "per_group", 64)
    assert int4.with_options(embedding_bits=4).embedding == WeightScheme(4, "per_group", 32)
    # a manifest's recipe description says what the overrides made of it
    assert int4.with_options(group_size=32) == int4 and int4.with_options() == int4
    assert int4.with_options(group_size=128).description.endswith("[overridden: linears int4 in groups of 128]")
    both = int4.with_options(group_size=64, embedding_bits=4).description
    assert both.endswith("[overridden: linears int4 in groups of 64; embedding int4 in groups of 64]")
    assert int8.with_options(embedding_bits=4).description.endswith("[overridden: embedding int4 in groups of 32]")


def test_recipe_errors(tmp_path: Path) -> None:
    with pytest.raises(RgMobileError, match="valid"):
        load_recipe("int3")
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps({"name": "x", "linears": {"bits": 5}}))
    with pytest.raises(RgMobileError, match="bits"):
        load_recipe(str(bad))
    with pytest.raises(RgMobileError, match="group size"):
        WeightScheme(4, "per_group", 12)


@pytest.mark.parametrize(("scheme", "min_db"), [(WeightScheme(8), 38.0), (WeightScheme(4, "per_group", 32), 17.0)])
def test_quantize_roundtrip(scheme: WeightScheme, min_db: float) -> None:
    w = torch.randn(48, 128, generator=torch.Generator().manual_seed(0))
    q, scale = quantize(w, scheme)
    lo, hi = (-8, 7) if scheme.bits == 4 else (-128, 127)
    assert q.dtype == torch.int8 and int(q.min()) >= lo and int(q.max()) <= hi
    back = dequantize(q, scale, scheme)
    # the error of each weight is at most half a step of its own scale
    step = scale if scheme.granularity == "per_channel" else scale.repeat_interleave(32, dim=1)
    assert torch.all((back - w).abs() <= step / 2 + 1e-6)
    assert sqnr_db(w, back) > min_db


@torch.no_grad()
def test_fake_quantized_model_touches_the_right_weights() -> None:
    model = tiny_model()
    q = fake_quantized(model, load_recipe("int4"))
    classes = weight_classes(model)
    assert len(classes["rglru_gates"]) == 2 * len(model.config.layers_of("recurrent"))
    before, after = dict(model.named_parameters()), dict(q.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    expected = set(classes["linears"]) | set(classes["embedding"]) | set(classes["rglru_gates"])
    assert changed == expected  # conv, norms, biases and recurrent_param stay float
    ids = torch.randint(0, model.config.vocab_size, (1, 40))
    a, _ = model(ids, positions(0, 40), model.init_state())
    b, _ = q(ids, positions(0, 40), q.init_state())
    assert (a - b).abs().max() > 0
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.95  # random tiny model, int4
    q8 = fake_quantized(model, load_recipe("int8"))
    c, _ = q8(ids, positions(0, 40), q8.init_state())
    assert torch.nn.functional.cosine_similarity(a.flatten(), c.flatten(), dim=0) > 0.999
    assert fake_quantize(before["embed_tokens.weight"], WeightScheme(8)).shape == before["embed_tokens.weight"].shape
