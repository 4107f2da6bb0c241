"""torch.export of the explicit-state step (what every target builds on) and the IOSpec."""

from __future__ import annotations

import pytest
import torch

from exporter.errors import RgMobileError
from exporter.model.griffin import positions
from exporter.model.state import flatten_state, state_shapes
from exporter.step.iospec import IOSpec, build_iospec
from exporter.step.step import StepModule, export_step
from tests.conftest import tiny_config, tiny_model


@pytest.mark.parametrize("seq", [1, 8])
@torch.no_grad()
def test_torch_export_step_matches_eager_across_the_window(seq: int) -> None:
    model = tiny_model()
    program = export_step(model, seq).module()
    eager = StepModule(model)
    w = model.config.window
    ids = torch.randint(0, model.config.vocab_size, (1, 4 * w))
    state = flatten_state(model.init_state(1))
    for start in range(0, 3 * w + seq, seq):  # wraps the ring buffer several times
        chunk = ids[:, start : start + seq]
        a = program(chunk, positions(start, seq), *state)
        b = eager(chunk, positions(start, seq), *state)
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, atol=1e-6, rtol=0)
        state = list(b[1:])


def test_iospec_names_order_and_pairs() -> None:
    cfg = tiny_config()
    spec = build_iospec(cfg)
    assert spec.input_names[:2] == ["input_ids", "position_ids"]
    assert spec.output_names[0] == "logits"
    want = [f"past_key_values.{i}.{f}" for i, f, _ in state_shapes(cfg)]
    assert spec.input_names[2:] == want
    assert spec.state_pairs() == [(n, n.replace("past_key_values.", "present.")) for n in want]
    attn = [s for s in spec.state_inputs if s.field == "key"][0]
    assert attn.shape == ("batch", cfg.num_kv_heads, cfg.window, cfg.head_dim)
    lru = [s for s in spec.state_inputs if s.field == "recurrent_state"][0]
    assert lru.dtype == "float32" and lru.init == "zeros"
    assert IOSpec.from_dict(spec.to_dict()) == spec


def test_iospec_rejects_a_broken_pair() -> None:
    d = build_iospec(tiny_config()).to_dict()
    d["inputs"][2]["pair"] = "present.999.key"
    with pytest.raises(RgMobileError, match="not paired"):
        IOSpec.from_dict(d)
