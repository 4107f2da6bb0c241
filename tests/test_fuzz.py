"""Fuzz every loader of untrusted input (scripts/fuzz.py): one RgMobileError or success, nothing else.

A bounded run for CI (hypothesis, fixed example counts, no deadline); ``python scripts/fuzz.py
--seconds N`` runs the same targets for longer and reports executions and crashes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import fuzz  # noqa: E402

TARGETS = {t.name: t for t in fuzz.targets()}
EXAMPLES = 100  # per target: 7 targets in about 20 s on one core


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_loader_never_crashes(name: str, tmp_path: Path) -> None:
    target = TARGETS[name]
    stats = fuzz.Stats()
    (tmp_path / "seed").mkdir()  # seed files (manifest, state) are written here when the strategy is built

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(target.strategy(tmp_path / "seed"))
    def run(payload: bytes) -> None:
        crash = fuzz.run_one(target, payload, tmp_path, stats)
        assert crash is None, f"{crash.error}\n{crash.trace}"

    run()
    assert stats.executions[name] >= EXAMPLES // 2  # the examples really ran


def test_fuzz_targets_accept_their_seeds(tmp_path: Path) -> None:
    """Every seed is a valid file: the fuzzer mutates real inputs, not only garbage."""
    seeds = {
        "config_json": fuzz.text_of(fuzz.seed_hf_config()),
        "manifest_json": fuzz.text_of(fuzz.seed_manifest(tmp_path)),
        "safetensors": fuzz.seed_safetensors(),
        "shard_index": fuzz.text_of({"weight_map": {"a.weight": "model-1.safetensors", "b": "model-1.safetensors"}}),
        "tokenizer": fuzz._tokenizer_seed(),
    }
    if "selftest_json" in TARGETS:
        seeds["selftest_json"] = fuzz.text_of(fuzz.seed_selftest())
    if "rgstate" in TARGETS:
        seeds["rgstate"] = fuzz.seed_rgstate(tmp_path)
    for name, payload in seeds.items():
        folder = tmp_path / name
        folder.mkdir()
        TARGETS[name].load(payload, folder)  # no exception at all
