"""ExecuTorch target and backend: one .pte with prefill methods (the chunk and ``--prefill-lengths``) and
a decode method, explicit state.

Lowering takes 1-2 minutes per .pte on a 2-core machine, so the tiny
artifact is built once per session (through the CLI) and every test reads it;
the bundled model's .pte is built only by the one test that needs it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import mapping_kb, tiny_config, tiny_model
from torch import nn
from typer.testing import CliRunner

from exporter.artifact.manifest import read_manifest
from exporter.checkpoint.loader import BUNDLED_DIR, load_checkpoint
from exporter.errors import RgMobileError
from rgmobile.cli import app
from runtime_py.backend import Backend, plan_chunks
from runtime_py.executorch_backend import ExecuTorchBackend, open_artifact
from runtime_py.generate import run_tokens
from runtime_py.thresholds import thresholds_for
from runtime_py.torch_backend import TorchBackend

CHUNK = 8  # prefill chunk of the test artifact (window 16: prompts cross it)
LENGTHS = (CHUNK, 4, 2, 1)  # its methods' t: the chunk, --prefill-lengths 4,2, decode
WINDOW = 16
LIMITS = thresholds_for("executorch", "fp32")

pytestmark = pytest.mark.filterwarnings("ignore")


def _lower(module: nn.Module, example: tuple[torch.Tensor, ...], xnnpack: bool) -> list[torch.Tensor]:
    """Lower ``module`` to a .pte in memory and run it once on ``example``."""
    from executorch.runtime import Runtime

    from exporter.targets.executorch import lower

    ep = torch.export.export(module.eval(), example)
    buffer = lower({"forward": ep}, {}, xnnpack=xnnpack).to_executorch().buffer
    return list(Runtime.get().load_program(buffer).load_method("forward").execute(list(example)))


@pytest.fixture(scope="session")
def et_artifact(tiny_et_artifact: Path) -> Path:
    """The tiny checkpoint exported with ``rgmobile export --format executorch`` (conftest: built once)."""
    return tiny_et_artifact


@pytest.fixture(scope="session")
def et_backend(et_artifact: Path) -> ExecuTorchBackend:
    return open_artifact(et_artifact, read_manifest(et_artifact))


@pytest.fixture(scope="session")
def reference(tiny_checkpoint: Path) -> TorchBackend:
    return TorchBackend(load_checkpoint(tiny_checkpoint).model)


@pytest.mark.slow
def test_layout_methods_and_constant_methods(et_artifact: Path) -> None:
    from executorch.runtime import Runtime

    m = read_manifest(et_artifact)
    assert m.format == "executorch" and m.precision == "fp32" and m.prefill_chunk == CHUNK
    assert {n: (p.file, p.seq_len, p.entry) for n, p in m.programs.items()} == {
        "prefill": ("model.pte", CHUNK, "prefill"),
        "prefill_4": ("model.pte", 4, "prefill_4"),
        "prefill_2": ("model.pte", 2, "prefill_2"),
        "decode": ("model.pte", 1, "decode"),
    }
    assert m.seq_lens() == LENGTHS
    assert sorted(f.path for f in m.files) == ["model.ptd", "model.pte", "tokenizer.model"]
    program = Runtime.get().load_program(str(et_artifact / "model.pte"), data_path=str(et_artifact / "model.ptd"))
    meta = {name: program.load_method(name).execute([])[0] for name in m.format_details["constant_methods"]}
    assert meta["get_vocab_size"] == m.config.vocab_size and meta["get_window"] == WINDOW
    assert meta["get_bos_id"] == 2 and meta["get_eos_ids"] == 1  # a list constant returns its items as outputs
    assert meta["get_prefill_chunk"] == CHUNK == meta["get_max_seq_len"] and meta["use_kv_cache"] is True
    # positional I/O: the manifest's IOSpec order, with the state at batch 1
    decode = program.metadata("decode")
    assert decode.num_inputs() == len(m.io.inputs) and decode.num_outputs() == len(m.io.outputs)
    key = next(i for i, s in enumerate(m.io.inputs) if s.name == "past_key_values.2.key")
    assert tuple(decode.input_tensor_meta(key).sizes()) == (1, 1, WINDOW, m.config.head_dim)


@pytest.mark.slow
def test_the_methods_share_one_copy_of_the_weights(et_artifact: Path, tiny_checkpoint: Path) -> None:
    """The four methods read the same weights, and the tied table is stored once: the portable lookup
    and XNNPACK's head share it in model.ptd (see the target doc)."""
    m = read_manifest(et_artifact)
    assert m.data_file == m.format_details["data_file"] == "model.ptd" and "model.ptd" in {f.path for f in m.files}
    params = load_checkpoint(tiny_checkpoint).model.state_dict()
    weight_bytes = sum(t.numel() * t.element_size() for t in params.values())
    table = params["embed_tokens.weight"]
    head_bytes = table.numel() * table.element_size()
    sizes = m.format_details["pte_bytes"]
    assert sizes["xnnpack_weights"] == 0 and sizes["data_file"] == (et_artifact / "model.ptd").stat().st_size
    stored = sizes["portable_constants"] + sizes["data_file"]
    # the table twice would add head_bytes; the rest is RoPE's folded tables and alignment
    assert weight_bytes <= stored < weight_bytes + head_bytes // 2, (sizes, weight_bytes, head_bytes)


def test_backend_shares_packed_weights_and_locks_no_pages(et_backend: ExecuTorchBackend, et_artifact: Path) -> None:
    """The backend turns XNNPACK's weight cache on (prefill and decode pack the weights once) and
    leaves no page of its files locked: the loader's mlock, which succeeds for a small file or as
    root, is undone (exporter/upstream/executorch_runtime_1_5_1.py)."""
    from exporter.upstream.executorch_runtime_1_5_1 import weight_cache_enabled

    assert et_backend.seq_lens() == LENGTHS and weight_cache_enabled()
    files = [et_artifact / "model.pte", et_artifact / "model.ptd"]
    mapped, locked = (sum(mapping_kb(f, field) for f in files) for field in ("Size", "Locked"))
    assert mapped > 0 and locked == 0, (mapped, locked)


def test_a_missing_data_file_is_one_clear_error(et_artifact: Path, tmp_path: Path) -> None:
    import shutil

    for name in ("manifest.json", "model.pte", "tokenizer.model"):  # model.ptd left behind
        shutil.copy(et_artifact / name, tmp_path / name)
    with pytest.raises(RgMobileError, match="model.ptd: the program's data file is missing"):
        open_artifact(tmp_path, read_manifest(tmp_path, verify=False))


@pytest.mark.slow
def test_validate_passes_over_three_windows(et_artifact: Path, tmp_path: Path) -> None:
    """``rgmobile validate``: prefill chunks + a 3-token remainder (the t=2 method, then t=1) + 3 x window
    decode steps, logits and states."""
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["validate", str(et_artifact), "--report", str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    s = report["summary"]
    assert report["decode_steps"] == 3 * WINDOW and s["positions"] >= 3 * WINDOW + 2 * CHUNK
    assert {step["t"] for step in report["steps"]} == {CHUNK, 2, 1}
    assert s["max_abs_logits"] <= LIMITS["max_abs_logits"] and s["max_state_abs"] <= LIMITS["max_state_abs"]
    assert s["greedy_match"] == 1.0


@pytest.mark.slow
def test_prompt_longer_than_a_chunk_equals_token_by_token(et_backend: ExecuTorchBackend) -> None:
    """2 chunks + 7 tokens run as [8, 8, 4, 2, 1] (every method, no padding) and match 23 decode steps."""
    assert et_backend.seq_lens() == LENGTHS
    ids = [2, *np.random.default_rng(0).integers(3, 300, size=2 * CHUNK + 6).tolist()]
    calls: list[int] = []
    step = et_backend.step

    def spy(x: np.ndarray, p: np.ndarray, s: object) -> tuple[np.ndarray, object]:
        calls.append(int(x.shape[1]))
        return step(x, p, s)

    et_backend.step = spy  # type: ignore[method-assign]
    try:
        chunked, s_chunked = run_tokens(et_backend, ids, et_backend.init_state())
    finally:
        del et_backend.step
    assert calls == [CHUNK, CHUNK, 4, 2, 1] == plan_chunks(len(ids), et_backend.seq_lens())
    state = et_backend.init_state()
    rows = []
    for i, token in enumerate(ids):
        logits, state = et_backend.step(np.array([[token]], np.int64), np.array([[i]], np.int64), state)
        rows.append(logits[0, 0])
    single = np.stack(rows)
    assert chunked.shape == single.shape == (len(ids), 300)
    # prefill and decode are different XNNPACK graphs (different op order), not bit-identical
    assert np.abs(chunked - single).max() <= LIMITS["max_abs_logits"]
    a, b = et_backend.state_arrays(s_chunked), et_backend.state_arrays(state)
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= LIMITS["max_state_abs"]


def test_every_method_across_three_windows_matches_official(
    et_backend: ExecuTorchBackend, tiny_checkpoint: Path
) -> None:
    """The methods t = 8, 4, 2, 1 in turn, from position 0 past three windows (every ring offset a method
    starts at differs), against the official ``recurrentgemma`` model over the whole sequence."""
    from exporter.model.griffin import positions
    from tests.oracles import official_model

    model = load_checkpoint(tiny_checkpoint).model
    n = 3 * WINDOW + 5
    ids = np.random.default_rng(2).integers(0, 300, size=n)
    with torch.no_grad():
        want, _ = official_model(model.config, model.state_dict())(torch.tensor(ids[None]), positions(0, n))
    state, pos, lengths, got = et_backend.init_state(), 0, [], []
    while pos < n:
        t = next(s for s in LENGTHS[len(lengths) % len(LENGTHS) :] + (1,) if s <= n - pos)
        logits, state = et_backend.step(ids[None, pos : pos + t], np.arange(pos, pos + t)[None], state)
        got.append(logits[0])
        pos += t
        lengths.append(t)
    assert set(lengths) == set(LENGTHS)
    assert float(np.abs(np.concatenate(got) - want[0].double().numpy()).max()) <= LIMITS["max_abs_logits"]


@pytest.mark.slow
def test_decode_through_three_windows_matches_eager(et_backend: ExecuTorchBackend, reference: TorchBackend) -> None:
    """Regression for the int64 remainder trap: t=1 steps from position 0 to past 3 x window.

    The ring slot arithmetic (layers.ring_positions) takes ``%`` of start - 1 + w - s;
    with a negative operand the ExecuTorch runtime would pick wrong slots at the
    first step and whenever the ring wraps, and the logits would drift from eager.
    """
    rng = np.random.default_rng(1)
    sa, sr = et_backend.init_state(), reference.init_state()
    worst = 0.0
    for pos in range(3 * WINDOW + 3):
        x, p = np.array([[int(rng.integers(0, 300))]]), np.array([[pos]])
        la, sa = et_backend.step(x, p, sa)
        lr, sr = reference.step(x, p, sr)
        worst = max(worst, float(np.abs(la - lr).max()))
    assert worst <= LIMITS["max_abs_logits"]
    a, r = et_backend.state_arrays(sa), reference.state_arrays(sr)
    assert max(float(np.abs(a[k] - r[k]).max()) for k in r) <= LIMITS["max_state_abs"]


@pytest.mark.slow
def test_state_is_a_value(et_backend: ExecuTorchBackend) -> None:
    s0 = et_backend.init_state()
    l1, s1 = et_backend.step(np.array([[2]]), np.array([[0]]), s0)
    et_backend.step(np.array([[7]]), np.array([[1]]), s1)  # later steps must not overwrite s1
    et_backend.step(np.array([[9]]), np.array([[1]]), s1)
    again, _ = et_backend.step(np.array([[2]]), np.array([[0]]), s0)
    assert np.array_equal(l1, again)
    l2, _ = et_backend.step(np.array([[7]]), np.array([[1]]), s1)
    l2b, _ = et_backend.step(np.array([[7]]), np.array([[1]]), s1)
    assert np.array_equal(l2, l2b)
    with pytest.raises(RgMobileError, match="tokens per step"):
        et_backend.step(np.zeros((1, 3), np.int64), np.arange(3)[None], s0)
    with pytest.raises(RgMobileError, match="batch 1"):
        et_backend.init_state(2)


@pytest.mark.slow
def test_generate_cli_on_the_pte(et_artifact: Path) -> None:
    result = CliRunner().invoke(app, ["generate", str(et_artifact), "--prompt", "the cat", "--max-new-tokens", "6"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("the cat")


def test_runtime_remainder_of_negative_int64_has_c_semantics() -> None:
    """Documents a trap: ExecuTorch's int64 remainder truncates like C's ``%``.

    Eager ``torch.remainder(-5, 16)`` is 11 (sign of the divisor); the runtime gives -5
    (``torch.fmod``). Our ring-buffer arithmetic therefore keeps ``%`` operands
    non-negative. If this test fails, the runtime was fixed: the slot arithmetic may be simplified.
    """

    class Rem(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.remainder(x, 16)

    x = torch.tensor([-33, -17, -5, -1, 0, 5, 16, 21], dtype=torch.int64)
    (got,) = _lower(Rem(), (x,), xnnpack=False)
    assert torch.equal(got[x >= 0], torch.remainder(x, 16)[x >= 0])
    assert torch.equal(got, torch.fmod(x, 16))  # C semantics, not eager's
    assert not torch.equal(got, torch.remainder(x, 16))


def test_xnnpack_tanh_gelu_is_computed_as_erf_gelu() -> None:
    """Why the target decomposes GELU: XNNPACK runs ``gelu(approximate="tanh")`` as the erf GELU.

    That alone puts XNNPACK ~4.7e-4 off eager (the "~1e-4 relative" once taken for rounding).
    """

    class Gelu(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.gelu(x, approximate="tanh")

    x = torch.linspace(-6, 6, 2401).reshape(1, -1)
    (got,) = _lower(Gelu(), (x,), xnnpack=True)
    assert (got - nn.functional.gelu(x)).abs().max() < 1e-5
    assert (got - nn.functional.gelu(x, approximate="tanh")).abs().max() > 4e-4


def test_lean_lowering_writes_the_same_pte_as_executorch(tmp_path: Path) -> None:
    """``lower`` shares the weights between ExecuTorch's per-partition copies, the tied table's
    duplicate and the methods' named data, and can spill XNNPACK's blobs to disk (memory,
    exporter/targets/executorch.py): the bytes of the .pte are those of the plain
    ``to_edge_transform_and_lower``, and every hook is restored."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend
    from executorch.exir import to_edge_transform_and_lower
    from executorch.exir.backend.canonical_partitioners import duplicate_constant_node_pass

    from exporter.targets.executorch import lower, pte_breakdown

    class Tied(nn.Module):  # two methods over the same weights, a table used by a lookup and a head
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Embedding(64, 32)
            self.mlp = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 32))

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return nn.functional.linear(self.mlp(self.table(ids)), self.table.weight)

    torch.manual_seed(0)
    module = Tied().eval()
    hooks = dict(vars(XnnpackBackend))

    def programs() -> dict[str, torch.export.ExportedProgram]:
        return {f"t{t}": torch.export.export(module, (torch.arange(t)[None],)) for t in (1, 4)}

    lean = lower(programs(), {}).to_executorch().buffer
    plain = to_edge_transform_and_lower(programs(), partitioner=[XnnpackPartitioner()]).to_executorch().buffer
    assert lean == plain
    assert dict(vars(XnnpackBackend)) == hooks
    assert duplicate_constant_node_pass.copy is copy

    # Spilled: every XNNPACK blob goes to a file while lowering; the written .pte is the same.
    spill = tmp_path / "spill"
    spill.mkdir()
    edge = lower(programs(), {}, spill_dir=spill, spill_min_bytes=1)
    files = sorted(spill.iterdir())
    assert len(files) == 5  # two linear weights, their biases and the tied head, once for both methods
    spilled = edge.to_executorch()
    with (tmp_path / "spilled.pte").open("wb") as f:
        spilled.write_to_file(f)
    assert (tmp_path / "spilled.pte").read_bytes() == plain
    assert duplicate_constant_node_pass.copy is copy
    # Tagged for a data file (fp32 exports): the blobs spill the same way, none stays in memory.
    from exporter.targets.executorch import tag_weights_external

    tagged = tmp_path / "spill-tagged"
    tagged.mkdir()
    progs = programs()
    tag_weights_external(progs)
    store = lower(progs, {}, spill_dir=tagged, spill_min_bytes=1)._named_data_store.get_named_data_store_output()
    assert len(list(tagged.iterdir())) == 5 and not store.pte_data and store.external_data
    assert all(not isinstance(b, bytes) for b in store.buffers)  # every blob a file, not bytes
    path = tmp_path / "tied.pte"
    path.write_bytes(lean)
    sizes = pte_breakdown(path)
    assert sizes["xnnpack_weights"] >= 4 * (32 * 48 + 48 * 32 + 64 * 32) and sizes["portable_constants"] >= 4 * 64 * 32


@pytest.mark.slow
def test_pte_breakdown_reads_the_header_like_the_full_parse(et_artifact: Path) -> None:
    from executorch.exir._serialize._program import _get_extended_header, deserialize_pte_binary

    from exporter.targets.executorch import pte_breakdown

    path, data = et_artifact / "model.pte", et_artifact / "model.ptd"
    assert _get_extended_header(path.read_bytes()[:64]) is not None  # the segment-reading path
    pte = deserialize_pte_binary(path.read_bytes())
    assert pte_breakdown(path, data) == {
        "file": path.stat().st_size,
        "xnnpack_weights": sum(len(b) for b in pte.named_data.buffers) if pte.named_data is not None else 0,
        "portable_constants": sum(len(b.storage) for b in pte.program.constant_buffer),
        "delegate_graphs": sum(len(d.data) for d in pte.program.backend_delegate_data),
        "data_file": data.stat().st_size,
    }


@pytest.mark.slow
def test_decode_has_no_gelu_and_a_delegated_head(et_artifact: Path) -> None:
    d = read_manifest(et_artifact).format_details["decode_delegation"]
    ops = set(d["delegated"]) | set(d["portable"])
    assert not any("gelu" in op for op in ops)
    assert "aten_linear_default" in d["delegated"] and "aten_mm_default" not in d["portable"]
    assert "aten_embedding_default" in d["portable"]  # XNNPACK has no gather: the lookup stays portable


@pytest.mark.slow
def test_decode_keeps_norms_in_xnnpack_and_touches_the_ring_once(et_artifact: Path) -> None:
    """The costs xnnpack_friendly/fold_constants remove stay removed (tiny model: 2 attention layers)."""
    d = read_manifest(et_artifact).format_details["decode_delegation"]
    assert "aten_mean_dim" in d["delegated"] and "aten_mean_dim" not in d["portable"]
    assert d["portable"].get("aten_scatter_src") == 4  # K and V rows written, no where over the ring
    assert "aten_expand_copy_default" not in d["portable"] or d["portable"]["aten_expand_copy_default"] <= 2
    for folded in ("aten_arange_start_step", "aten_log1p_default", "aten_pow_scalar", "aten_reciprocal_default"):
        assert folded not in d["portable"], folded


@pytest.mark.slow
def test_prefill_writes_its_rows_without_gathering_the_ring(et_artifact: Path) -> None:
    """The chunk program writes its t rows into each ring with a scatter: no portable gather of
    the whole ring through an index of its size (a third of a 2B prefill chunk when it did)."""
    details = read_manifest(et_artifact).format_details
    assert details["methods"]["prefill"]["seq_len"] <= WINDOW  # the fixture's chunk fits the ring
    d = details["prefill_delegation"]
    assert "aten_gather_default" not in d["portable"]
    assert d["portable"].get("aten_scatter_src") == 4  # K and V rows of the two attention layers


@pytest.mark.slow
def test_prefill_scan_takes_its_rows_by_one_split(et_artifact: Path) -> None:
    """The unrolled RG-LRU scan splits a and u once each (layers.linear_scan): no portable select per
    row, which cost 2 x t ops a recurrent layer (2,304 in a 2B chunk of 64)."""
    details = read_manifest(et_artifact).format_details
    d, decode = details["prefill_delegation"], details["decode_delegation"]
    selects = d["portable"].get("aten_select_copy_int", 0)
    assert selects == decode["portable"].get("aten_select_copy_int", 0)  # as many as decode's (t = 1): none per row
    assert d["portable"].get("aten_split_with_sizes_copy_default") == 8  # a and u of 4 recurrent layers


# decode; chunks from the start, within the ring, wrapping round its end, filling it whole,
# and longer than it (the base class's gather: a slot would be written twice)
@pytest.mark.parametrize("t, start", [(1, 0), (1, 5), (1, 37), (5, 3), (8, 0), (8, 30), (16, 9), (20, 7)])
def test_xnnpack_friendly_forms_match_the_default_step(t: int, start: int) -> None:
    """The forms traced for ExecuTorch compute the default step: ring state bit-identical."""
    from exporter.model.griffin import positions
    from exporter.model.layers import LocalAttention
    from exporter.model.state import AttentionLayerState, flatten_state
    from exporter.targets.executorch import ExecuTorchStep
    from exporter.targets.executorch_layers import XnnpackLocalAttention, xnnpack_friendly

    model = tiny_model(tiny_config(window=WINDOW))
    step = ExecuTorchStep(model)
    gen = torch.Generator().manual_seed(t + start)
    state = [torch.randn(s.shape, generator=gen) for s in flatten_state(model.init_state(1))]
    ids = torch.randint(0, model.config.vocab_size, (1, t), generator=gen)
    with torch.no_grad():
        want = step(ids, positions(start, t), *state)
        with xnnpack_friendly(step):
            assert any(isinstance(m, XnnpackLocalAttention) for m in model.modules())
            got = step(ids, positions(start, t), *state)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)
    # restored on exit: the eager model (every other target's reference) is unchanged
    assert not any(type(m).__module__.startswith("exporter.targets") for m in model.modules())

    attention = next(m for m in model.modules() if isinstance(m, LocalAttention))
    x = torch.randn(1, t, model.config.width, generator=gen)
    ring_shape = (1, model.config.num_kv_heads, WINDOW, model.config.head_dim)
    kv = AttentionLayerState(*(torch.randn(ring_shape, generator=gen) for _ in range(2)))
    with torch.no_grad():
        want_y, want_kv = attention(x, positions(start, t), kv)
        attention.__class__ = XnnpackLocalAttention
        got_y, got_kv = attention(x, positions(start, t), kv)
        attention.__class__ = LocalAttention
    torch.testing.assert_close(got_y, want_y, rtol=0, atol=1e-5)
    assert torch.equal(got_kv.key, want_kv.key) and torch.equal(got_kv.value, want_kv.value)  # a copy, exactly


@pytest.mark.slow
@pytest.mark.skipif(
    not (BUNDLED_DIR / "config.json").is_file(),
    reason="the bundled model (exporter/bundled/brown-small) is not trained/installed yet",
)
def test_bundled_model_greedy_128_matches_checkpoint(tmp_path: Path) -> None:
    from exporter.checkpoint.loader import default_checkpoint
    from rgmobile.export import ExportOptions, export
    from runtime_py.generate import generate
    from runtime_py.sampling import SamplingConfig
    from runtime_py.tokenizer import Tokenizer
    from runtime_py.validate import ValidateOptions, validate

    prompt = (
        "The old man walked down the road to the river, and when he came to the bridge he stopped and "
        "looked at the water for a long time. Then he turned back toward the town, where the lights of the "
        "houses were coming on one by one, and the people were sitting down to supper. He thought of his wife, "
        "who had died in the winter, and of his son, who"
    )
    tok = Tokenizer(default_checkpoint() / "tokenizer.model")
    n = len(tok.encode(prompt, add_bos=True))
    assert n > 64 and n % 32, n  # the prompt runs prefill chunks (the default 32) and decode steps
    out = tmp_path / "brown-et"
    export(ExportOptions(out=out, format="executorch", checkpoint=default_checkpoint()))
    assert read_manifest(out).prefill_chunk == 32
    ckpt = load_checkpoint(default_checkpoint())
    pte, ref = open_artifact(out, read_manifest(out)), TorchBackend(ckpt.model)
    greedy = SamplingConfig(temperature=0.0)
    a = generate(pte, tok, prompt, 160, greedy)
    b = generate(ref, tok, prompt, 160, greedy)
    assert a.new_ids == b.new_ids and a.text == b.text
    ids = tok.encode(prompt, add_bos=True)
    assert _greedy_ids(pte, ids, 160) == _greedy_ids(ref, ids, 160)  # 160 tokens even past an EOS
    report = validate(ValidateOptions(artifact=out, report=tmp_path / "report.json"))
    assert report.passed, [f.message() for f in report.failures]


def _greedy_ids(backend: Backend, ids: list[int], n: int) -> list[int]:
    """``n`` greedy tokens after ``ids`` (no EOS stop), prompt run in the backend's chunks."""
    logits, state = run_tokens(backend, ids, backend.init_state())
    last, out = logits[-1], []
    for pos in range(len(ids), len(ids) + n):
        out.append(int(np.argmax(last)))
        step_logits, state = backend.step(np.array([[out[-1]]], np.int64), np.array([[pos]], np.int64), state)
        last = step_logits[0, -1]
    return out


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"format": "onnx"}, "already runs any t"),
        ({"format": "coreml", "prefill_logits": "all", "ios": 17}, "needs --ios 18"),
        ({"prefill_lengths": (8,)}, r"integers in 2\.\.7 .*got 8"),
        ({"prefill_lengths": (4, 1)}, "got 1"),
        ({"prefill_lengths": (4, 4)}, "a length twice"),
        ({"prefill_chunk": 2}, "--prefill-chunk 2 leaves none"),
    ],
)
def test_prefill_lengths_refuses_what_it_cannot_do(tmp_path: Path, changes: dict, match: str) -> None:
    from rgmobile.export import ExportOptions

    options = {"format": "executorch", "prefill_chunk": CHUNK, "prefill_lengths": (4, 2), **changes}
    with pytest.raises(RgMobileError, match=match):
        ExportOptions(out=tmp_path / "a", **options)


def test_prefill_lengths_become_methods_longest_first(tmp_path: Path) -> None:
    from exporter.targets import program_lengths
    from rgmobile.export import ExportOptions

    options = ExportOptions(out=tmp_path / "a", format="executorch", prefill_lengths=(2, 16, 4))
    assert options.prefill_lengths == (16, 4, 2)
    lens = program_lengths(32, options.prefill_lengths)
    assert list(lens.items()) == [("decode", 1), ("prefill", 32), ("prefill_16", 16), ("prefill_4", 4),
                                  ("prefill_2", 2)]  # fmt: skip
    assert program_lengths(1) == {"decode": 1}
    result = CliRunner().invoke(app, ["export", "--format", "executorch", "--prefill-lengths", "4,x",
                                      "--out", str(tmp_path / "b")])  # fmt: skip
    assert result.exit_code != 0 and "--prefill-lengths must be comma-separated integers" in result.output


def test_bench_times_a_remainder_through_the_extra_methods(et_artifact: Path) -> None:
    """The bench's first-token prompt of 2 chunks + 6 tokens runs the remainder as the t = 4 and t = 2
    methods, loaded with the chunk's in the prefill phase (not the chunk's method alone)."""
    from runtime_py.bench_worker import WorkerSpec, measure

    spec = WorkerSpec(subject="artifact", path=str(et_artifact), threads=1, positions=(0,), steps=1, warmup=0,
                      prefill_chunk=CHUNK, prefill_repeats=1, ttft_tokens=2 * CHUNK + 6)  # fmt: skip
    ttft = measure(spec)["ttft"]
    assert (ttft["prefill_steps"], ttft["tail_calls"], ttft["tail_tokens"], ttft["decode_steps"]) == (2, [4, 2], 6, 0)
    assert ttft["prefill_seconds"] > 0 and ttft["decode_seconds"] == 0
