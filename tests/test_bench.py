"""Random-init export, synthesised states, and ``rgmobile bench`` (structure, not speed).

One tiny ONNX artifact is exported from random weights (``--random-init tiny``)
and benchmarked once per session with all three baselines; the tests read that
one result. Benchmarks are not timed tests: nothing here asserts a speed.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
from typer.testing import CliRunner

from exporter.artifact.manifest import read_manifest
from exporter.config import preset
from rgmobile.cli import app
from runtime_py.bench_schema import SCHEMA, validate_bench
from runtime_py.bench_state import backend_state, synth_state_arrays
from runtime_py.open import open_artifact_backend
from runtime_py.torch_backend import TorchBackend

runner = CliRunner()
SEED = 3
CHUNK = 4
POSITIONS = [0, 5, 40]  # fresh, inside the window (16), past a ring wrap
TTFT = 10  # two prefill chunks of CHUNK, then the remainder (2) as one prefill call


@pytest.fixture(scope="session")
def random_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "tiny-random"
    res = runner.invoke(
        app, ["export", "--random-init", "tiny", "--seed", str(SEED), "--prefill-chunk", str(CHUNK), "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert f"prefill t=2..{CHUNK} (step.onnx)" in res.output  # the remainder of a prompt runs through it too
    return out


@pytest.fixture(scope="session")
def bench_run(random_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path, str]:
    d = tmp_path_factory.mktemp("bench-out")
    out, png = d / "bench.json", d / "bench.png"
    res = runner.invoke(
        app,
        [
            "bench", str(random_artifact), "--positions", ",".join(map(str, POSITIONS)), "--steps", "3",
            "--warmup", "1", "--prefill-repeats", "1", "--threads", "1", "--baselines", "transformers,eager,gemma",
            "--bandwidth-mib", "16", "--gemm-m", "64", "--ttft-tokens", str(TTFT), "--out", str(out),
            "--plot", str(png), "--busy-core", "--together",
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text()), out, png, res.stdout


def _random_tiny():
    from exporter.checkpoint.random_init import random_model

    return random_model(preset("tiny"), seed=SEED)


# --- random init --------------------------------------------------------------------------


def test_random_init_manifest_and_placeholder_tokenizer(random_artifact: Path) -> None:
    m = read_manifest(random_artifact)  # verifies every file's size and sha256
    assert m.source == {"random_init": "tiny", "seed": str(SEED), "kind": "random"}
    assert m.config == preset("tiny") and m.source_checkpoint is None
    stats = m.format_details["export_stats"]
    assert stats["wall_seconds"] > 0 and stats["peak_rss_bytes"] > 0 and isinstance(stats["samples"], int)
    sp = spm.SentencePieceProcessor(model_file=str(random_artifact / m.tokenizer_file))
    assert sp.get_piece_size() == m.config.vocab_size
    assert (sp.pad_id(), sp.eos_id(), sp.bos_id()) == (0, 1, 2)


def test_random_model_is_deterministic_in_any_dtype() -> None:
    from exporter.checkpoint.random_init import random_model

    a, b = _random_tiny().state_dict(), _random_tiny().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = random_model(preset("tiny"), seed=SEED + 1).state_dict()
    assert not torch.equal(a["embed_tokens.weight"], other["embed_tokens.weight"])
    half = random_model(preset("tiny"), seed=SEED, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in half.parameters())
    emb = a["embed_tokens.weight"]
    assert abs(emb.std().item() - (1 / preset("tiny").width) ** 0.5) < 0.02


def test_placeholder_tokenizer_round_trips_text(tmp_path: Path) -> None:
    from exporter.checkpoint.placeholder_tokenizer import write_placeholder_tokenizer

    path = write_placeholder_tokenizer(tmp_path / "t.model", preset("small"))  # 4096 pieces: byte fallback
    sp = spm.SentencePieceProcessor(model_file=str(path))
    text = "Hello, wörld! 1+1 = 2"
    assert sp.get_piece_size() == 4096 and sp.decode(sp.encode(text)) == text


def test_random_init_from_a_config_file(tmp_path: Path) -> None:
    from exporter.checkpoint.random_init import random_config
    from exporter.errors import RgMobileError

    shape = preset("2b").with_(vocab_size=512, block_types=("recurrent", "attention"), name="2b-slice")
    (tmp_path / "slice.json").write_text(json.dumps(shape.to_dict()))
    assert random_config(str(tmp_path / "slice.json")) == shape and random_config("tiny") == preset("tiny")
    (tmp_path / "bad.json").write_text("[1, 2]")
    for name in (str(tmp_path / "missing.json"), str(tmp_path / "bad.json")):
        with pytest.raises(RgMobileError, match="--random-init"):
            random_config(name)


def test_random_init_user_errors(tiny_checkpoint: Path, tmp_path: Path) -> None:
    for args, needle in (
        (["export", "--random-init", "7b", "--out", str(tmp_path / "a")], "valid presets"),
        (["export", str(tiny_checkpoint), "--random-init", "tiny", "--out", str(tmp_path / "b")], "not both"),
    ):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and needle in res.stderr, res.output
        assert len(res.stderr.strip().splitlines()) == 1


# --- synthesised states -------------------------------------------------------------------


def test_synth_state_fills_only_reached_slots() -> None:
    c = preset("tiny")
    assert all(not a.any() for a in synth_state_arrays(c, 0).values())
    s5 = synth_state_arrays(c, 5)
    key = s5[f"past_key_values.{c.layers_of('attention')[0]}.key"]
    assert key[:, :, :5].all() and not key[:, :, 5:].any()
    conv = s5["past_key_values.0.conv_state"]
    assert conv.shape == (1, c.conv_width - 1, c.lru_width) and conv.all()
    conv2 = synth_state_arrays(c, 2)["past_key_values.0.conv_state"]
    assert not conv2[:, 0].any() and conv2[:, 1:].all()  # one row before position 0 stays zero
    assert synth_state_arrays(c, 40)[f"past_key_values.{c.layers_of('attention')[0]}.value"].all()
    again = synth_state_arrays(c, 40)
    assert all(np.array_equal(again[k], v) for k, v in synth_state_arrays(c, 40).items())


@pytest.mark.parametrize("position", [0, 5, 37])
def test_synth_state_decodes_the_same_in_eager_and_artifact(random_artifact: Path, position: int) -> None:
    """The eager model rebuilt from the seed *is* the artifact's model; from one synthesised state
    at p both must produce the same logits and the same next state (decode and a prefill chunk)."""
    eager = TorchBackend(_random_tiny())
    onnx = open_artifact_backend(random_artifact, read_manifest(random_artifact), threads=1)
    arrays = synth_state_arrays(preset("tiny"), position, seed=11)
    for t in (1, CHUNK):
        ids = np.arange(7, 7 + t, dtype=np.int64)[None, :]
        pos = np.arange(position, position + t, dtype=np.int64)[None, :]
        ref_logits, ref_state = eager.step(ids, pos, backend_state(eager, arrays))
        logits, state = onnx.step(ids, pos, backend_state(onnx, arrays))
        assert logits.shape[1] == 1  # the default export: the last position's logits
        np.testing.assert_allclose(logits, ref_logits[:, -1:], atol=2e-4, rtol=1e-4)
        ours, ref = onnx.state_arrays(state), eager.state_arrays(ref_state)
        for name in ref:
            np.testing.assert_allclose(ours[name], ref[name], atol=2e-4, rtol=1e-4, err_msg=name)


@pytest.mark.parametrize("position", [5, 12])
def test_transformers_baseline_gets_the_same_state(position: int) -> None:
    """The synthesised state written into transformers' module attributes and DynamicCache is the
    same state: with our weights it decodes like our model (inside the window, where they agree)."""
    from runtime_py.bench_subjects import TransformersRecurrentGemma
    from tests.oracles import hf_model

    model = _random_tiny()
    subject = TransformersRecurrentGemma(preset("tiny"), threads=1)
    subject.model = hf_model(model.config, model.state_dict())
    subject.set_position(position, seed=11)
    subject._restore()
    with torch.inference_mode():
        hf = subject.model(
            input_ids=torch.tensor([[9]]), position_ids=torch.tensor([[position]]), cache=subject.cache, use_cache=True
        ).logits.numpy()
    eager = TorchBackend(model)
    ref, _ = eager.step(
        np.array([[9]]), np.array([[position]]), backend_state(eager, synth_state_arrays(model.config, position, 11))
    )
    np.testing.assert_allclose(hf, ref, atol=2e-4, rtol=1e-4)


# --- bench --------------------------------------------------------------------------------


def test_bench_json_matches_schema(bench_run: tuple[dict, Path, Path, str], random_artifact: Path) -> None:
    data = bench_run[0]
    validate_bench(data)
    assert data["schema"] == SCHEMA and data["schema_version"] == 2
    s = data["settings"]
    assert s["positions"] == POSITIONS and s["threads"] == 1 and s["prefill_chunk"] == CHUNK
    assert s["ttft_tokens"] == TTFT
    assert data["bandwidth"]["threads"] == 1 and data["bandwidth"]["best_gb_s"] > 0
    subjects = {x["name"]: x for x in data["subjects"]}
    assert list(subjects) == [random_artifact.name, "transformers", "eager", "gemma"]
    assert [x["kind"] for x in data["subjects"]] == ["artifact", "baseline", "baseline", "baseline"]
    cpu = data["machine"]["cpu"]
    assert cpu["model"] and isinstance(cpu["isa"], list)
    for x in data["subjects"]:
        assert x["error"] is None
        for when in ("before", "after"):  # the load around each subject, for judging its figures
            assert set(x["load"][when]) == {"loadavg_1m", "busy_cores"}
        assert [r["position"] for r in x["positions"]] == POSITIONS
        assert x["peak_rss_bytes"] > 0 and x["weights_bytes"] > 0 and x["rss_before_load_bytes"] > 0
        for r in x["positions"]:
            d = r["decode"]
            assert d["steps"] == 3 and len(d["step_seconds"]) == 3
            assert d["p10_tokens_per_s"] <= d["tokens_per_s"] * 1.0001 <= d["p90_tokens_per_s"] * 1.0002
            assert r["prefill"] is not None and r["prefill"]["chunk"] == CHUNK
            assert 0 < r["roofline_fraction"] and r["roofline_tokens_per_s"] > 0
            assert r["resident_bytes"] == r["rss_bytes"] - x["rss_before_load_bytes"]
            assert r["resident_anon_bytes"] == r["anon_bytes"] - x["anon_before_load_bytes"]
            assert 0 < r["anon_bytes"] <= r["rss_bytes"]
            if r["resident_bytes"] > 0:  # held bytes + state in and out at the same bandwidth
                held = r["resident_bytes"] + 2 * r["state_bytes"]
                bw = data["bandwidth"]["best_gb_s"] * 1e9
                assert r["resident_roofline_fraction"] == pytest.approx(d["tokens_per_s"] * held / bw, rel=1e-3)
            else:
                assert r["resident_roofline_fraction"] is None
    art = subjects[random_artifact.name]
    assert art["format"] == "onnx" and art["backend"] == "onnxruntime" and art["precision"] == "fp32"
    assert art["program_loading"].startswith("one at a time") and subjects["eager"]["program_loading"] == "together"
    assert art["export_stats"]["peak_rss_bytes"] > 0
    assert art["quantization"] is None and subjects["eager"]["quantization"] is None  # fp32, baseline
    state = preset("tiny").state_bytes(1, 4)["total"]
    for r in art["positions"]:  # our state is constant; the roofline reads weights + state in and out
        assert r["state_bytes"] == state and r["bytes_per_token"] == art["weights_bytes"] + 2 * state
    gemma = [r["state_bytes"] for r in subjects["gemma"]["positions"]]
    assert gemma[0] == 0 and gemma[1] < gemma[2]  # its KV cache grows with context


def test_bench_subject_names_the_recipe_it_was_exported_with() -> None:
    from quantization.recipe import load_recipe
    from runtime_py.bench import recipe_summary

    recipe = load_recipe("int4").with_options(128, None).to_dict()
    got = recipe_summary({**recipe, "executorch": {"activations": "int8 per token"}})  # + a format's facts
    assert got == {k: recipe[k] for k in ("name", "linears", "embedding", "rglru_gates", "activations")}
    assert got["linears"] == {"bits": 4, "granularity": "per_group", "group_size": 128}
    assert recipe_summary(None) is None


def test_bench_decode_weight_bytes_count_the_graph_weights(random_artifact: Path) -> None:
    from runtime_py.bandwidth import decode_weight_bytes

    params = preset("tiny").parameter_counts()["total"] * 4
    nbytes, how = decode_weight_bytes(random_artifact, read_manifest(random_artifact))
    assert params * 0.95 <= nbytes <= params * 1.5 and "onnx" in how


def test_bench_decode_weight_bytes_of_a_pte_read_the_table_once(tmp_path: Path) -> None:
    """An fp32 ExecuTorch program stores the tied table once, in model.ptd: a decode step reads all of
    the program and its data file."""
    from rgmobile.export import ExportOptions, export
    from runtime_py.bandwidth import decode_weight_bytes

    out = tmp_path / "et"
    export(ExportOptions(out=out, format="executorch", random_init="tiny", prefill_chunk=1))
    m = read_manifest(out)
    nbytes, how = decode_weight_bytes(out, m)
    c = m.config
    assert nbytes == (out / "model.pte").stat().st_size + (out / "model.ptd").stat().st_size
    assert "stored once" in how
    params = c.parameter_counts()["total"] * 4
    assert params * 0.95 <= nbytes <= params * 1.5


def test_bench_goals_are_reported(bench_run: tuple[dict, Path, Path, str], random_artifact: Path) -> None:
    goals = {(g["goal"], g["subject"]): g for g in bench_run[0]["goals"]}
    name = random_artifact.name
    for goal in ("speedup_vs_transformers_fp32", "decode_flatness", "rss_flatness", "prefill_over_decode",
                 "export_peak_rss_bytes"):  # fmt: skip
        g = goals[(goal, name)]
        assert isinstance(g["value"], float) and isinstance(g["met"], bool)
    assert goals[("export_peak_rss_bytes", name)]["met"] is True  # a tiny export is far below 20 GB
    int4 = goals[("int4_roofline_fraction", None)]  # no int4 artifact in this run: not measured, not failed
    assert int4["met"] is None and int4["value"] is None


def test_bench_writes_png_and_prints_tables(bench_run: tuple[dict, Path, Path, str]) -> None:
    _, _, png, stdout = bench_run
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "goals" in stdout and "transformers" in stdout
    words = " ".join(stdout.split())  # the console wraps long lines
    assert "prefill / decode" in words and "this machine's ceiling" in words  # the artifact's ceiling, printed


def test_bench_user_errors_are_one_line(tmp_path: Path, random_artifact: Path) -> None:
    for args, needle in (
        (["bench", str(random_artifact), "--baselines", "llama"], "unknown baseline"),
        (["bench"], "need a shape"),
        (["bench", str(tmp_path / "missing")], "no manifest.json"),
        (["bench", "--shape", "tiny", "--positions", "8,0"], "increasing"),
        (["bench", "--shape", "tiny", "--positions", "a,b"], "comma-separated integers"),
        (["bench", "--shape", "tiny", "--gemm-m", "-1"], "--gemm-m must be an integer >= 0"),
        (["bench", "--shape", "tiny", "--ttft-tokens", "-5"], "--ttft-tokens must be an integer >= 0"),
    ):
        res = runner.invoke(app, [*args, "--out", str(tmp_path / "x.json")])
        assert res.exit_code == 2 and needle in res.stderr, (args, res.output)
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert not (tmp_path / "x.json").exists()


def test_bench_worker_reports_errors_instead_of_crashing() -> None:
    from runtime_py.bench import run_worker
    from runtime_py.bench_worker import WorkerSpec

    spec = WorkerSpec(
        subject="llama", threads=1, positions=(0,), steps=1, warmup=0, prefill_chunk=1, prefill_repeats=1,
        config=preset("tiny").to_dict(),
    )  # fmt: skip
    assert "unknown subject" in run_worker(spec)["error"]


# --- int8 GEMM peak, prefill GEMM fraction, time to first token ------------------------------


def test_bench_measures_the_int8_gemm_peak_and_the_prefill_share_of_it(
    bench_run: tuple[dict, Path, Path, str], random_artifact: Path
) -> None:
    from runtime_py.bench import head_ops, linear_ops_per_token

    data = bench_run[0]
    gemm = data["int8_gemm"]
    assert gemm["shape"] == {"m": 64, "k": 2560, "n": 7680} and gemm["ops"] == 2 * 64 * 2560 * 7680
    assert gemm["threads"] == 1 and len(gemm["samples_seconds"]) == gemm["repeats"] >= 1
    assert gemm["best_ops_per_s"] >= gemm["median_ops_per_s"] > 0
    from runtime_py import gemm_xnnpack

    kernels = gemm["kernels"]  # every int8 kernel timed; the peak is the fastest one's best run
    assert set(kernels) == {"MatMulInteger", "DynamicQuantizeMatMul", gemm_xnnpack.NAME}
    fastest = max(kernels, key=lambda op: kernels[op]["best_ops_per_s"])
    assert gemm["kernel"].startswith(fastest) and gemm["best_ops_per_s"] == kernels[fastest]["best_ops_per_s"]
    subjects = {x["name"]: x for x in data["subjects"]}
    art = subjects[random_artifact.name]
    cfg = preset("tiny")
    ops = art["gemm_ops"]  # the default export: the prefill program returns the last position's logits
    assert ops["head_every_position"] is False and ops["head_ops"] == head_ops(cfg) == 2 * cfg.vocab_size * cfg.width
    assert ops["body_ops_per_token"] == linear_ops_per_token(cfg, head_every_position=False)
    per_token = ops["body_ops_per_token"] + ops["head_ops"] / CHUNK  # the head once per chunk
    for r in art["positions"]:
        expect = r["prefill"]["tokens_per_s"] * per_token
        assert r["prefill_gemm_ops_per_s"] == pytest.approx(expect, rel=1e-9)
        assert r["prefill_gemm_fraction"] == pytest.approx(expect / gemm["best_ops_per_s"], rel=1e-3)  # 4 digits
        # the ratio prefill / decode can reach here: prefill at the GEMM peak over decode at the roofline
        roofline = data["bandwidth"]["best_gb_s"] * 1e9 / r["bytes_per_token"]
        ceiling = gemm["best_ops_per_s"] / per_token / roofline
        assert r["prefill_over_decode_ceiling"] == pytest.approx(ceiling, rel=1e-3)
    ratio = next(g for g in data["goals"] if g["goal"] == "prefill_over_decode" and g["subject"] == art["name"])
    summary = art["summary"]["prefill_over_decode_ceiling"]
    assert summary == pytest.approx(statistics.median(r["prefill_over_decode_ceiling"] for r in art["positions"]))
    assert (
        f"this machine's ceiling {summary:.3g}x" in ratio["note"]
        and f"{summary / 0.8:.3g}x with decode" in ratio["note"]
    )
    for name in ("transformers", "eager", "gemma"):  # baselines: no op count, no fraction
        assert subjects[name]["gemm_ops"] is None
        assert all(r["prefill_gemm_fraction"] is None for r in subjects[name]["positions"])
        assert all(r["prefill_over_decode_ceiling"] is None for r in subjects[name]["positions"])


def test_the_first_token_plan_follows_the_programs_lengths(random_artifact: Path, tmp_path: Path) -> None:
    """The TTFT prompt splits as generate splits it: whole chunks, then the remainder as one call when the
    prefill program runs its length (manifest min_seq_len), else decode steps."""
    from runtime_py.bench_worker import TtftPlan, WorkerSpec, _ttft_plan

    def plan(path: Path, tokens: int) -> TtftPlan:
        spec = WorkerSpec(subject="artifact", path=str(path), threads=1, positions=(0,), steps=1, warmup=0,
                          prefill_chunk=CHUNK, prefill_repeats=1, ttft_tokens=tokens)  # fmt: skip
        return _ttft_plan(spec)

    assert plan(random_artifact, 10) == TtftPlan(chunks=2, tail=(2,), steps=0)
    assert plan(random_artifact, 9) == TtftPlan(chunks=2, tail=(), steps=1)  # t = 1 is decode's
    assert plan(random_artifact, 3) == TtftPlan(chunks=0, tail=(3,), steps=0)
    fixed = Path(shutil.copytree(random_artifact, tmp_path / "fixed"))  # as exported before min_seq_len
    manifest = json.loads((fixed / "manifest.json").read_text())
    assert manifest["programs"]["prefill"].pop("min_seq_len") == 2
    (fixed / "manifest.json").write_text(json.dumps(manifest))
    assert plan(fixed, 10) == TtftPlan(chunks=2, tail=(), steps=2)
    # fixed lengths beside the chunk, as ExecuTorch's --prefill-lengths: the remainder in a few calls
    manifest["programs"]["prefill_2"] = {**manifest["programs"]["prefill"], "seq_len": 2}
    (fixed / "manifest.json").write_text(json.dumps(manifest))
    assert plan(fixed, 4 * CHUNK - 1) == TtftPlan(chunks=3, tail=(2,) * ((CHUNK - 1) // 2), steps=(CHUNK - 1) % 2)
    assert plan(fixed, 4 * CHUNK - 1).tail_tokens == 2 * ((CHUNK - 1) // 2)


def test_linear_ops_per_token_of_2b_match_its_published_parameter_count() -> None:
    """2B: 2.68B parameters, 0.66B of them the tied table; nearly all the rest are weight matmuls."""
    from runtime_py.bench import linear_ops_per_token

    cfg = preset("2b")
    counts = cfg.parameter_counts()
    embedding = cfg.vocab_size * cfg.width
    body = linear_ops_per_token(cfg, head_every_position=False) / 2  # multiply-accumulates
    assert 0.98 * (counts["total"] - embedding) <= body <= counts["total"] - embedding
    assert 1.99e9 <= body <= 2.03e9
    assert linear_ops_per_token(cfg, head_every_position=True) / 2 - body == embedding


def test_bench_times_the_first_token_of_a_long_prompt(
    bench_run: tuple[dict, Path, Path, str], random_artifact: Path
) -> None:
    data, _, _, stdout = bench_run
    subjects = {x["name"]: x for x in data["subjects"]}
    ttft = subjects[random_artifact.name]["ttft"]
    assert ttft["tokens"] == TTFT and ttft["prefill_chunk"] == CHUNK
    # as generate splits it: the default export's prefill program runs 2..CHUNK, so the remainder is one call
    assert ttft["prefill_steps"] == TTFT // CHUNK and ttft["tail_tokens"] == TTFT % CHUNK and ttft["decode_steps"] == 0
    assert ttft["prefill_seconds"] > 0 and ttft["decode_seconds"] == 0
    assert ttft["seconds"] == pytest.approx(ttft["prefill_seconds"] + ttft["decode_seconds"])
    assert all(subjects[b]["ttft"] is None for b in ("transformers", "eager", "gemma"))
    assert f"TTFT {random_artifact.name}" in stdout and "int8 GEMM" in stdout
    assert f"a {TTFT % CHUNK}-token tail in 1 call, 0 decode steps" in " ".join(stdout.split())
    goals = {(g["goal"], g["subject"]): g for g in data["goals"]}
    for goal in ("ttft_seconds", "prefill_gemm_fraction", "decode_rss_over_weights"):  # an fp32 artifact only
        assert goals[(goal, None)]["met"] is None and "no int4 artifact" in goals[(goal, None)]["note"]
    assert goals[("pte_size_over_fp32_weights", None)]["met"] is None


def _option_entry(
    bench_run: tuple[dict, Path, Path, str], artifact: Path, setting: str, key: str
) -> tuple[dict[str, dict], dict, str]:
    """(subjects by name, the artifact's ``key`` entry, stdout) of the bench run, which had ``setting`` on."""
    data, _, _, stdout = bench_run
    assert data["settings"][setting] is True
    subjects = {x["name"]: x for x in data["subjects"]}
    return subjects, subjects[artifact.name][key], stdout


def test_bench_busy_core_decodes_with_a_hog_spinning_and_not(
    bench_run: tuple[dict, Path, Path, str], random_artifact: Path
) -> None:
    subjects, entry, stdout = _option_entry(bench_run, random_artifact, "busy_core", "contention")
    assert entry["position"] == POSITIONS[0] and "busy loop" in entry["hog"]
    rows = entry["rows"]  # onnxruntime can stop spinning: all four variants, in order
    assert [(r["spin"], r["busy"]) for r in rows] == [(True, False), (True, True), (False, False), (False, True)]
    for r in rows:
        assert r["error"] is None
        assert r["p10_tokens_per_s"] <= r["tokens_per_s"] * 1.0001 <= r["p90_tokens_per_s"] * 1.0002
        if r["busy"] and r["busy_cores_before"] is not None:  # the hog held its core while sampled
            assert r["busy_cores_before"] >= 0.5
    rate = {(r["spin"], r["busy"]): r["tokens_per_s"] for r in rows}
    assert entry["busy_over_quiet"] == pytest.approx(rate[(True, True)] / rate[(True, False)])
    assert entry["busy_over_quiet_no_spin"] == pytest.approx(rate[(False, True)] / rate[(False, False)])
    assert entry["no_spin_over_spin_busy"] == pytest.approx(rate[(False, True)] / rate[(True, True)])
    assert all(subjects[b]["contention"] is None for b in ("transformers", "eager", "gemma"))
    assert f"busy core {random_artifact.name}: spinning" in stdout and "no spin" in stdout


def test_bench_together_loads_every_program_as_generate_does(
    bench_run: tuple[dict, Path, Path, str], random_artifact: Path
) -> None:
    subjects, t, stdout = _option_entry(bench_run, random_artifact, "together", "together")
    s = subjects[random_artifact.name]
    assert t["position"] == POSITIONS[0] and t["tokens_per_s"] > 0
    assert t["held_bytes"] == t["rss_bytes"] - t["rss_before_load_bytes"]
    assert t["held_over_weights"] == pytest.approx(t["held_bytes"] / s["weights_bytes"])
    assert t["anon_held_bytes"] is None or t["anon_held_bytes"] <= t["held_bytes"] + (64 << 20)
    assert all(subjects[b]["together"] is None for b in ("transformers", "eager", "gemma"))
    assert f"programs together {random_artifact.name}: held" in stdout


def test_together_measures_both_programs_loaded_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The together phase opens the artifact with every program (seq_len None), runs a prefill
    chunk and the decode steps on it."""
    from runtime_py import bench_worker
    from runtime_py.bench_worker import WorkerSpec

    calls: list[object] = []

    class Fake(bench_worker.BackendSubject):
        def __init__(self) -> None:
            self.config = preset("tiny")

        def set_position(self, position: int, seed: int) -> None:
            calls.append(("position", position))

        def prefill(self, tokens: np.ndarray) -> float:
            calls.append(("prefill", len(tokens)))
            return 1.0

        def decode(self, tokens: np.ndarray) -> list[float]:
            calls.append(("decode", len(tokens)))
            return [0.5] * len(tokens)

        def weights_bytes(self) -> tuple[int, str]:
            return 1000, "test"

    def fake_open(spec: WorkerSpec, seq_len: int | None) -> Fake:
        calls.append(("open", seq_len))
        return Fake()

    monkeypatch.setattr(bench_worker, "_open_artifact", fake_open)
    spec = WorkerSpec(subject="artifact", path="x", threads=1, positions=(7, 9), steps=3, warmup=1,
                      prefill_chunk=8, prefill_repeats=1, together=True)  # fmt: skip
    t = bench_worker._together(spec)
    assert calls[:3] == [("open", None), ("position", 7), ("prefill", 8)]
    assert calls[-1] == ("decode", 4) and t["tokens_per_s"] == pytest.approx(2.0)
    assert t["held_over_weights"] == pytest.approx(t["held_bytes"] / 1000)


def test_contention_without_spin_control_measures_two_variants_and_keeps_failures() -> None:
    from runtime_py.bench_contention import measure_contention
    from runtime_py.bench_worker import WorkerSpec

    spec = WorkerSpec(subject="artifact", path="x", threads=2, positions=(7, 9), steps=3, warmup=1,
                      prefill_chunk=8, prefill_repeats=1, ttft_tokens=100)  # fmt: skip
    seen: list[WorkerSpec] = []

    def run(s: WorkerSpec) -> dict:
        seen.append(s)
        if len(seen) == 2:
            return {"error": "boom"}
        return {"positions": [{"decode": {"tokens_per_s": 4.0, "p10_tokens_per_s": 3.0, "p90_tokens_per_s": 5.0}}]}

    entry = measure_contention(spec, False, run)
    assert [(r["spin"], r["busy"]) for r in entry["rows"]] == [(True, False), (True, True)]
    assert all(s.positions == (7,) and s.prefill_chunk == 1 and s.ttft_tokens == 0 and s.spin for s in seen)
    assert entry["rows"][1]["error"] == "boom" and entry["rows"][1]["tokens_per_s"] is None
    assert entry["busy_over_quiet"] is None and entry["no_spin_over_spin_busy"] is None


def test_every_failed_measurement_is_an_error_of_the_run() -> None:
    """A subject, its --together worker or a --busy-core variant that failed each make ``bench`` exit 1."""
    from runtime_py.bench import measurement_errors

    ok = {"name": "a", "error": None, "together": {"error": None}, "contention": {"rows": [{"error": None}]}}
    assert measurement_errors({"subjects": [ok, {**ok, "together": None, "contention": None}]}) == []
    bad_together = {**ok, "name": "b", "together": {"error": "killed"}}
    bad_row = {**ok, "name": "c", "contention": {"rows": [{"spin": False, "busy": True, "error": "boom"}]}}
    bad = {"name": "d", "error": "crashed"}
    assert measurement_errors({"subjects": [ok, bad_together, bad_row, bad]}) == [
        "b: programs together: killed",
        "c: decode with spin=False busy=True: boom",
        "d: crashed",
    ]


def test_no_spin_runs_onnx_the_same_and_refuses_other_runtimes(
    random_artifact: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    from exporter.errors import RgMobileError
    from runtime_py.onnx_backend import SPIN_CONFIG_KEY
    from runtime_py.open import open_path

    spinning, still = open_path(random_artifact, threads=2), open_path(random_artifact, threads=2, spin=False)
    for sess in still.backend.sessions.values():  # type: ignore[attr-defined]
        assert sess.get_session_options().get_session_config_entry(SPIN_CONFIG_KEY) == "0"
    ids, pos = np.array([[5, 6, 7, 8]]), np.arange(4)[None, :]
    a, _ = spinning.backend.step(ids, pos, spinning.backend.init_state())
    b, _ = still.backend.step(ids, pos, still.backend.init_state())
    np.testing.assert_array_equal(a, b)
    with pytest.raises(RgMobileError, match=r"--no-spin: a checkpoint \(PyTorch\).*only onnx artifacts"):
        open_path(tiny_checkpoint, spin=False)
    res = runner.invoke(app, ["generate", str(random_artifact), "--max-new-tokens", "3", "--no-spin", "--threads", "2"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["generate", str(tiny_checkpoint), "--max-new-tokens", "3", "--no-spin"])
    assert res.exit_code != 0 and "only onnx artifacts" in res.output
    # refused from the manifest alone, before the files are hashed (none are here)
    manifest = json.loads((random_artifact / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "format": "executorch"}))
    with pytest.raises(RgMobileError, match="--no-spin: executorch runs on a thread pool"):
        open_path(tmp_path, spin=False)


def _subject(**over: object) -> dict:
    s = {"name": "a", "kind": "artifact", "format": "onnx", "precision": "int4", "weights_bytes": 1000,
         "ttft": {"tokens": 2048, "seconds": 12.0}, "pte_bytes": None, "fp32_weights_bytes": 8000,
         "summary": {"decode_tokens_per_s": 10.0, "prefill_tokens_per_s": 50.0, "roofline_fraction": 0.81,
                     "decode_flatness": 0.01, "rss_flatness": 0.02, "prefill_gemm_fraction": 0.4,
                     "decode_rss_bytes": 1800, "decode_resident_bytes": 1200, "ttft_seconds": 12.0},
         "export_stats": None}  # fmt: skip
    s.update(over)
    return s


def test_bench_goals_of_an_int4_artifact_and_an_executorch_fp32_pte() -> None:
    from runtime_py.bench_goals import compute_goals

    et = _subject(name="et", format="executorch", precision="fp32", pte_bytes=9960, ttft=None)
    goals = {(g["goal"], g["subject"]): g for g in compute_goals([_subject(), et])}
    assert goals[("int4_roofline_fraction", "a")]["met"] is True  # 0.81 >= 0.80
    assert goals[("ttft_seconds", "a")]["value"] == 12.0 and goals[("ttft_seconds", "a")]["met"] is True
    assert goals[("prefill_gemm_fraction", "a")]["met"] is False  # 0.4 < 0.5
    rss = goals[("decode_rss_over_weights", "a")]
    assert rss["value"] == pytest.approx(1.2) and rss["met"] is False  # 1.2 > 1.15
    pte = goals[("pte_size_over_fp32_weights", "et")]
    assert pte["value"] == pytest.approx(1.245) and pte["met"] is False
    assert ("ttft_seconds", "et") not in goals  # fp32: held to no int4 goal
    slow = _subject(ttft={"tokens": 2048, "seconds": 45.0}, summary={**_subject()["summary"], "ttft_seconds": 45.0})
    assert {g["goal"]: g for g in compute_goals([slow])}["ttft_seconds"]["met"] is False


def test_bench_schema_reads_version_1_and_requires_the_version_2_fields(
    bench_run: tuple[dict, Path, Path, str],
) -> None:
    from exporter.errors import RgMobileError

    data = json.loads(json.dumps(bench_run[0]))
    v1 = json.loads(json.dumps(data))
    v1["schema_version"] = 1
    del v1["int8_gemm"], v1["settings"]["ttft_tokens"]
    for s in v1["subjects"]:
        del s["ttft"], s["gemm_ops"], s["rss_before_load_bytes"]
        for r in s["positions"]:
            del r["prefill_gemm_ops_per_s"], r["prefill_gemm_fraction"]
            del r["resident_bytes"], r["resident_roofline_fraction"]
    validate_bench(v1)  # an earlier file still reads
    del data["int8_gemm"]
    with pytest.raises(RgMobileError, match="int8_gemm"):
        validate_bench(data)
    data = json.loads(json.dumps(bench_run[0]))
    data["subjects"][0]["ttft"] = {"tokens": 10}
    with pytest.raises(RgMobileError, match="seconds"):
        validate_bench(data)
    data = json.loads(json.dumps(bench_run[0]))
    del data["subjects"][0]["quantization"]  # optional: files written before it still read
    validate_bench(data)
    data["subjects"][0]["quantization"] = {"linears": {"bits": 4}}
    with pytest.raises(RgMobileError, match="quantization is missing 'name'"):
        validate_bench(data)


def test_the_xnnpack_int8_gemm_computes_the_product() -> None:
    """The timed XNNPACK program is the int8 product of its input and weights (not an empty run)."""
    import torch

    from runtime_py.gemm_xnnpack import xnnpack_int8_gemm

    run = xnnpack_int8_gemm(8, 64, 32, threads=1, seed=3)
    got = run()[0].numpy()
    torch.manual_seed(3)
    weight = torch.nn.Linear(64, 32, bias=False).weight.detach().numpy()  # the weights it quantized
    a = np.random.default_rng(4).standard_normal((8, 64), dtype=np.float32)  # its input (seed + 1)
    want = a @ weight.T
    assert got.shape == (8, 32)
    assert np.abs(got - want).max() < 0.02 * np.abs(want).max()  # int8 weights and activations


def test_int8_gemm_peak_bad_arguments_are_one_clear_error() -> None:
    from exporter.errors import RgMobileError
    from runtime_py.gemm_peak import measure_int8_gemm

    with pytest.raises(RgMobileError, match="threads >= 1"):
        measure_int8_gemm(threads=0)
    peak = measure_int8_gemm(threads=1, m=8, k=64, n=32, repeats=2, warmup=1)
    assert peak.ops == 2 * 8 * 64 * 32 and len(peak.samples_seconds) == 2 and peak.best_ops_per_s > 0
    timed = dict(peak.kernels)
    from runtime_py.gemm_xnnpack import NAME

    assert list(timed) == ["MatMulInteger", "DynamicQuantizeMatMul", NAME] and all(len(x) == 2 for x in timed.values())
    assert min(peak.samples_seconds) == min(min(x) for x in timed.values())  # the fastest kernel's runs


def test_bench_worker_swaps_states_untimed_before_the_measured_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """RSS is read with the allocator at its plateau: three state swaps at the first position come first."""
    from runtime_py import bench_worker
    from runtime_py.bench_subjects import eager_subject
    from runtime_py.bench_worker import WorkerSpec, measure

    calls: list[tuple[str, int]] = []

    class Recording:
        def __init__(self, inner: object) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

        def set_position(self, position: int, seed: int) -> None:
            calls.append(("set", position))
            self.inner.set_position(position, seed)  # type: ignore[attr-defined]

        def decode(self, tokens: np.ndarray) -> list[float]:
            calls.append(("decode", len(tokens)))
            return self.inner.decode(tokens)  # type: ignore[attr-defined]

    spec = WorkerSpec(subject="eager", config=preset("tiny").to_dict(), threads=1, positions=(3, 20), steps=2,
                      warmup=1, prefill_chunk=1, prefill_repeats=1)  # fmt: skip
    monkeypatch.setattr(bench_worker, "build_subject", lambda s: Recording(eager_subject(preset("tiny"), 0, 1)))
    result = measure(spec)
    assert calls == [("set", 3), ("decode", 1)] * 3 + [("set", 3), ("decode", 3), ("set", 20), ("decode", 3)]
    assert [r["decode"]["steps"] for r in result["positions"]] == [2, 2]
