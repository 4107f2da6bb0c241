"""Decode tok/s of the Kotlin engine (android_demo/engine, on the desktop JVM) vs rgmobile's Python
runtime, on the same bundle, threads and prompt, in one run.

Both greedy-decode ``--tokens`` new tokens after the same prompt, after a warm-up generation, and
report decode tokens/s (new tokens - 1 over the decode loop's wall time, as both runtimes count it);
each runtime runs ``--repeats`` times alternately and the median is reported. The engine jar must
exist: ``mvn -B -q -f android_demo/engine/pom.xml package -DskipTests``.

Usage: python scripts/bench_android_engine.py BUNDLE_DIR [BUNDLE_DIR ...] [--threads 1] [--tokens 256]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JAR = ROOT / "android_demo" / "engine" / "target" / "engine.jar"
PROMPT = "The river ran past the old stone house and under the bridge"


# The JVM's default concurrent collector (G1) runs its own threads beside onnxruntime's; on a
# 2-core desktop that costs the engine up to a quarter of its 2-thread decode rate (measured),
# the serial collector does not. The runner's documented command uses the same flag.
JVM_FLAGS = ["-XX:+UseSerialGC"]


def kotlin_tok_s(bundle: Path, threads: int, tokens: int, jvm_flags: list[str]) -> tuple[float, list[int]]:
    cmd = ["java", *jvm_flags, "-jar", str(JAR), str(bundle), "--prompt", PROMPT, "--max-new-tokens", str(tokens),
           "--ids", "--threads", str(threads), "--warmup", "32"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    match = re.search(r"at ([0-9.]+) tok/s", proc.stderr)
    if match is None:
        raise RuntimeError(f"no tok/s in the engine's output: {proc.stderr}")
    return float(match.group(1)), json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jvm-flag", action="append", default=None,
                        help=f"a JVM option for the engine (repeatable; default {' '.join(JVM_FLAGS)})")  # fmt: skip
    args = parser.parse_args()
    jvm_flags = JVM_FLAGS if args.jvm_flag is None else args.jvm_flag
    if not JAR.is_file():
        sys.exit(f"{JAR} is missing; build it with: mvn -B -q -f android_demo/engine/pom.xml package -DskipTests")

    import onnxruntime

    from runtime_py.generate import generate
    from runtime_py.open import open_path
    from runtime_py.tokenizer import Tokenizer

    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()[0]
    print(f"threads {args.threads}, {args.tokens} new tokens, median of {args.repeats}; "
          f"Python onnxruntime {onnxruntime.__version__}; {java} {' '.join(jvm_flags)}")  # fmt: skip
    print(f"{'bundle':<28} {'Python tok/s':>13} {'Kotlin tok/s':>13} {'Kotlin/Python':>14}  same ids")
    for bundle in args.bundles:
        opened = open_path(bundle, threads=args.threads)
        tok = Tokenizer(opened.tokenizer_path)
        generate(opened.backend, tok, "The", 32)  # warm-up, as the jar's --warmup 32
        py, kt = [], []
        same = True
        for _ in range(args.repeats):
            r = generate(opened.backend, tok, PROMPT, args.tokens)
            py.append(r.decode_tokens_per_second)
            rate, ids = kotlin_tok_s(bundle, args.threads, args.tokens, jvm_flags)
            kt.append(rate)
            same = same and ids == r.new_ids
        p, k = statistics.median(py), statistics.median(kt)
        print(f"{bundle.name:<28} {p:>13.1f} {k:>13.1f} {k / p:>14.2f}  {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
