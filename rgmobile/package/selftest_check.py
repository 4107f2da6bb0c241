"""Run a ``selftest.json`` against any backend, exactly as docs/bundle.md describes.

The Kotlin and Swift engines reimplement this checker; it is kept deliberately plain:

1. Teacher-forced: per case, run ``prompt_ids`` (prefill chunks, then single steps), then feed
   ``reference_greedy_ids`` one token at a time. Step k's logits (position len(prompt) - 1 + k)
   are compared with ``reference_greedy_ids[k]`` (argmax agreement over all steps of all cases)
   and, at each check, with ``top_values`` at ``top_ids`` (max abs error) and with ``sum`` /
   ``sum_abs`` (abs error / vocab_size: a mean error per logit).
2. Free-running greedy: ``max_new_tokens`` greedy tokens from ``prompt_ids``, stopping before
   EOS; match = common prefix with ``reference_greedy_ids`` / its length (an empty reference
   matches 1.0 when the run also stops at once, else 0.0).
3. Tokenizer: ``encode(text)`` (no BOS) == ``ids`` and ``decode(ids)`` == ``decoded``.

Passes when worst error <= max_abs_logits, agreement >= top1_agreement, every case's match >=
greedy_match, and every tokenizer string matches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from runtime_py.backend import Backend
from runtime_py.generate import run_tokens


class TokenizerLike(Protocol):
    def encode(self, text: str, add_bos: bool = True) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@dataclass(frozen=True)
class SelftestResult:
    """What a self-test run found; ``passed`` is the verdict, the rest says why."""

    passed: bool
    worst_error: float  # largest check error (top values, mean sum errors)
    worst_error_where: str
    agreement: float  # teacher-forced argmax agreement over all steps of all cases
    worst_match: float  # smallest free-running greedy match of any case
    worst_match_case: str
    tokenizer_mismatches: int
    tokenizer_total: int
    tolerances: dict[str, float]
    matches: dict[str, float] = field(default_factory=dict)  # case name -> greedy match
    failures: tuple[str, ...] = ()

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"self-test {verdict}: worst error {self.worst_error:.3g} ({self.worst_error_where}), "
            f"agreement {self.agreement:.4f}, worst greedy match {self.worst_match:.3f} ({self.worst_match_case}), "
            f"tokenizer {self.tokenizer_total - self.tokenizer_mismatches}/{self.tokenizer_total}"
        )


def _step(backend: Backend, token: int, position: int, state: Any) -> tuple[np.ndarray, Any]:
    logits, state = backend.step(np.array([[token]], np.int64), np.array([[position]], np.int64), state)
    return logits[0, -1], state


def _check_errors(logits: np.ndarray, check: dict[str, Any], vocab: int) -> float:
    """Max of: abs error at the top ids, |sum| error / vocab, |sum_abs| error / vocab."""
    z = logits.astype(np.float64)
    top = np.abs(z[np.asarray(check["top_ids"], dtype=np.int64)] - np.asarray(check["top_values"], np.float64))
    mean_sum = abs(float(z.sum()) - float(check["sum"])) / vocab
    mean_abs = abs(float(np.abs(z).sum()) - float(check["sum_abs"])) / vocab
    worst = max(float(top.max()) if top.size else 0.0, mean_sum, mean_abs)
    return float("inf") if worst != worst else worst


def teacher_forced(backend: Backend, case: dict[str, Any], vocab: int) -> tuple[int, int, float, str]:
    """(agreeing steps, steps, worst check error, where) of one case."""
    prompt, ref = case["prompt_ids"], case["reference_greedy_ids"]
    checks = {c["step"]: c for c in case["checks"]}
    logits, state = run_tokens(backend, prompt, backend.init_state(1), all_logits=False)
    last = logits[-1]
    agree, worst, where = 0, 0.0, "no checks"
    for k in range(max(len(ref), 1 if 0 in checks else 0)):
        if k in checks:
            err = _check_errors(last, checks[k], vocab)
            if err >= worst:
                worst, where = err, f"case {case['name']}, step {k}"
        if k < len(ref):
            agree += int(np.argmax(last)) == ref[k]
            if k + 1 < len(ref) or k + 1 in checks:
                last, state = _step(backend, ref[k], len(prompt) + k, state)
    return agree, len(ref), worst, where


def free_running(backend: Backend, case: dict[str, Any], eos_id: int) -> float:
    """Greedy match of one case: common prefix with the reference / its length."""
    prompt, ref = case["prompt_ids"], case["reference_greedy_ids"]
    logits, state = run_tokens(backend, prompt, backend.init_state(1), all_logits=False)
    last = logits[-1]
    out: list[int] = []
    for i in range(case["max_new_tokens"]):
        token = int(np.argmax(last))
        if token == eos_id:
            break
        out.append(token)
        if i + 1 < case["max_new_tokens"]:
            last, state = _step(backend, token, len(prompt) + i, state)
    if not ref:
        return 1.0 if not out else 0.0
    common = next((i for i, (a, b) in enumerate(zip(out, ref)) if a != b), min(len(out), len(ref)))
    return common / len(ref)


def run_selftest(data: dict[str, Any], backend: Backend, tokenizer: TokenizerLike, eos_id: int) -> SelftestResult:
    """Run a checked selftest object (rgmobile.package.selftest.check_selftest) against ``backend``."""
    tol = {k: float(v) for k, v in data["tolerances"].items()}
    vocab = int(data["vocab_size"])
    agree = steps = 0
    worst, where = 0.0, "no checks"
    matches: dict[str, float] = {}
    for case in data["cases"]:
        a, n, err, at = teacher_forced(backend, case, vocab)
        agree, steps = agree + a, steps + n
        if err >= worst:
            worst, where = err, at
        matches[case["name"]] = free_running(backend, case, eos_id)
    mismatches = 0
    for v in data["tokenizer"]:
        ids = tokenizer.encode(v["text"], add_bos=False)
        if list(ids) != v["ids"] or tokenizer.decode(v["ids"]) != v["decoded"]:
            mismatches += 1
    agreement = agree / steps if steps else 1.0
    worst_case = min(matches, key=lambda k: matches[k])
    failures = []
    if not worst <= tol["max_abs_logits"]:
        failures.append(f"worst error {worst:.3g} > {tol['max_abs_logits']:.3g} ({where})")
    if agreement < tol["top1_agreement"]:
        failures.append(f"agreement {agreement:.4f} < {tol['top1_agreement']:.4f}")
    if matches[worst_case] < tol["greedy_match"]:
        failures.append(f"greedy match {matches[worst_case]:.3f} < {tol['greedy_match']:.3f} ({worst_case})")
    if mismatches:
        failures.append(f"tokenizer: {mismatches} of {len(data['tokenizer'])} strings differ")
    return SelftestResult(
        passed=not failures, worst_error=worst, worst_error_where=where, agreement=agreement,
        worst_match=matches[worst_case], worst_match_case=worst_case, tokenizer_mismatches=mismatches,
        tokenizer_total=len(data["tokenizer"]), tolerances=tol, matches=matches, failures=tuple(failures),
    )  # fmt: skip
