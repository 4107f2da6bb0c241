"""``selftest.json``: the golden cases a bundle carries (docs/bundle.md, "selftest.json").

``build_selftest`` runs the PyTorch reference (and, where Python can run it, the artifact) on a
few fixed prompts and writes what a runtime must reproduce: greedy continuations, reference
logits at chosen steps, and tokenizer golden vectors from sentencepiece. ``read_selftest``
checks the schema (a newer ``schema_version`` is refused). The checker that runs the file
against a backend is rgmobile/package/selftest_check.py.

Cases (the bundled model's window is 64):
  wraps-window   an English prompt longer than the window, so the KV ring wraps during prefill
  non-ascii      accents, CJK and emoji: the tokenizer falls back to bytes
  short          a short English prompt
Each generates ``max_new_tokens`` = 2 x window, so decoding crosses the window too.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from exporter.artifact.tokenizer_strings import tokenizer_strings
from exporter.errors import RgMobileError
from runtime_py.backend import Backend
from runtime_py.generate import generate, run_tokens
from runtime_py.tokenizer import Tokenizer

log = logging.getLogger(__name__)

SELFTEST_NAME = "selftest.json"
SELFTEST_FORMAT = "rgmobile-selftest"
SCHEMA_VERSION = 1
TOP_K = 8
TOLERANCE_KEYS = ("max_abs_logits", "top1_agreement", "greedy_match")
MIN_TOKENIZER_STRINGS = 200

LONG_TEXT = (
    "The river ran past the old stone house and under the bridge, where the children sat in the evening "
    "light and watched the boats go by. Their mother called them home for supper, but they stayed a little "
    "longer, talking about the big tree on the hill and the dog that lived beside it. "
)
NON_ASCII_TEXT = "Café déjà vu, naïve façade: 東京の夜 🌙✨ — “quoted” 😀 ñandú, Zürich, 漢字 and 한국어."
SHORT_TEXT = "Once upon a time"


def tokenizer_vectors(tokenizer: Tokenizer, strings: list[str] | None = None) -> list[dict[str, Any]]:
    """``{"text", "ids" (sentencepiece, no BOS), "decoded"}`` for every string."""
    vectors = []
    for text in strings if strings is not None else tokenizer_strings():
        ids = tokenizer.encode(text, add_bos=False)
        vectors.append({"text": text, "ids": ids, "decoded": tokenizer.decode(ids)})
    return vectors


def case_prompts(tokenizer: Tokenizer, window: int) -> list[tuple[str, str]]:
    """(name, prompt text) of the cases; the first prompt is longer than ``window`` tokens."""
    long_text = LONG_TEXT
    while len(tokenizer.encode(long_text)) <= window + 8:
        long_text += LONG_TEXT
    return [("wraps-window", long_text.rstrip()), ("non-ascii", NON_ASCII_TEXT), ("short", SHORT_TEXT)]


def check_steps(prompt_len: int, generated: int, window: int) -> list[int]:
    """Steps whose reference logits are stored: the first, one at the window, one past it, the last."""
    last = max(generated - 1, 0)
    at_window = max(window - (prompt_len - 1), 0)  # step whose position is ``window``
    return sorted({s for s in (0, at_window, at_window + window // 2, last) if s <= last})


def logit_check(logits: np.ndarray, step: int, position: int, top_k: int = TOP_K) -> dict[str, Any]:
    """One ``checks`` entry from a logits vector [v]."""
    z = logits.astype(np.float64)
    order = np.argsort(-z, kind="stable")[:top_k]  # descending; ties: lowest id first
    return {
        "step": step,
        "position": position,
        "top_ids": [int(i) for i in order],
        "top_values": [float(z[i]) for i in order],
        "sum": float(z.sum()),
        "sum_abs": float(np.abs(z).sum()),
    }


def greedy_ids(backend: Backend, tokenizer: Tokenizer, prompt: str, max_new_tokens: int) -> list[int]:
    """The greedy continuation (stops before EOS) of ``prompt`` by the shared generation loop."""
    return list(generate(backend, tokenizer, prompt, max_new_tokens).new_ids)


def build_selftest(
    *,
    reference: Backend,
    artifact: Backend | None,
    tokenizer: Tokenizer,
    artifact_format: str,
    precision: str,
    tolerances: dict[str, float],
    max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """The selftest.json object (schema 1). ``artifact`` None: the format cannot run here."""
    config = reference.config
    window = config.window
    new_tokens = max_new_tokens if max_new_tokens is not None else 2 * window
    cases = []
    for name, text in case_prompts(tokenizer, window):
        prompt_ids = tokenizer.encode(text, add_bos=True)
        ref = greedy_ids(reference, tokenizer, text, new_tokens)
        art = greedy_ids(artifact, tokenizer, text, new_tokens) if artifact is not None else None
        # teacher-forced reference logits: position p chooses the token at p + 1
        forced = prompt_ids + ref[:-1] if ref else prompt_ids
        logits, _ = run_tokens(reference, forced, reference.init_state(1))  # [len(forced), v]
        checks = []
        for step in check_steps(len(prompt_ids), len(ref), window):
            position = len(prompt_ids) - 1 + step
            checks.append(logit_check(logits[position], step, position))
        log.info("selftest case %s: %d prompt tokens, %d generated", name, len(prompt_ids), len(ref))
        cases.append({
            "name": name, "prompt": text, "prompt_ids": prompt_ids, "max_new_tokens": new_tokens,
            "reference_greedy_ids": ref, "artifact_greedy_ids": art, "checks": checks,
        })  # fmt: skip
    return {
        "format": SELFTEST_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "artifact_format": artifact_format,
        "precision": precision,
        "window": window,
        "vocab_size": config.vocab_size,
        "top_k": TOP_K,
        "tolerances": {k: float(tolerances[k]) for k in TOLERANCE_KEYS},
        "cases": cases,
        "tokenizer": tokenizer_vectors(tokenizer),
    }


def _int_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in value)


def _num_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)


def check_selftest(data: Any, where: str = SELFTEST_NAME) -> dict[str, Any]:
    """Check the schema of a parsed selftest.json; any problem is an :class:`RgMobileError`."""

    def bad(what: str) -> RgMobileError:
        return RgMobileError(f"{where}: {what}; re-run `rgmobile package`")

    if not isinstance(data, dict) or data.get("format") != SELFTEST_FORMAT:
        raise bad(f"not an rgmobile self-test (format must be {SELFTEST_FORMAT!r})")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise bad("missing or invalid schema_version")
    if version > SCHEMA_VERSION:
        raise RgMobileError(
            f"{where}: schema_version {version} is newer than this rgmobile reads ({SCHEMA_VERSION}); upgrade rgmobile"
        )
    for key in ("window", "vocab_size", "top_k"):
        if not isinstance(data.get(key), int) or data[key] < 1:
            raise bad(f"{key!r} must be a positive integer")
    tol = data.get("tolerances")
    if not isinstance(tol, dict) or not all(isinstance(tol.get(k), int | float) for k in TOLERANCE_KEYS):
        raise bad(f"'tolerances' needs numbers {list(TOLERANCE_KEYS)}")
    cases = data.get("cases")
    if not isinstance(cases, list) or not cases:
        raise bad("'cases' must be a non-empty list")
    for case in cases:
        if not isinstance(case, dict) or not isinstance(case.get("name"), str):
            raise bad("every case needs a 'name'")
        name = case["name"]
        if not _int_list(case.get("prompt_ids")) or not case["prompt_ids"]:
            raise bad(f"case {name!r}: 'prompt_ids' must be a non-empty list of integers")
        if not isinstance(case.get("max_new_tokens"), int) or not _int_list(case.get("reference_greedy_ids")):
            raise bad(f"case {name!r}: needs 'max_new_tokens' and integer 'reference_greedy_ids'")
        if case.get("artifact_greedy_ids") is not None and not _int_list(case["artifact_greedy_ids"]):
            raise bad(f"case {name!r}: 'artifact_greedy_ids' must be null or a list of integers")
        checks = case.get("checks")
        if not isinstance(checks, list):
            raise bad(f"case {name!r}: 'checks' must be a list")
        for c in checks:
            ok = isinstance(c, dict) and all(isinstance(c.get(k), int) for k in ("step", "position"))
            ok = ok and _int_list(c.get("top_ids")) and _num_list(c.get("top_values"))
            ok = ok and len(c["top_ids"]) == len(c["top_values"]) and _num_list([c.get("sum"), c.get("sum_abs")])
            if not ok:
                raise bad(f"case {name!r}: a check needs step, position, top_ids, top_values, sum, sum_abs")
            position = len(case["prompt_ids"]) - 1 + c["step"]
            if c["step"] > len(case["reference_greedy_ids"]) or c["position"] != position:
                raise bad(f"case {name!r}: check at step {c['step']} has an inconsistent position")
    vectors = data.get("tokenizer")
    if not isinstance(vectors, list):
        raise bad("'tokenizer' must be a list")
    for v in vectors:
        if not (isinstance(v, dict) and isinstance(v.get("text"), str) and _int_list(v.get("ids"))
                and isinstance(v.get("decoded"), str)):  # fmt: skip
            raise bad("every tokenizer vector needs 'text', integer 'ids' and 'decoded'")
    return data


def read_selftest(path: Path) -> dict[str, Any]:
    """Parse and check a selftest.json file."""
    path = Path(path)
    if not path.is_file():
        raise RgMobileError(f"{path}: not found; a bundle needs {SELFTEST_NAME} (re-run `rgmobile package`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RgMobileError(f"{path}: not valid JSON ({exc})") from None
    return check_selftest(data, where=str(path))
