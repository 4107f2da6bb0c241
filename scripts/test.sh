#!/usr/bin/env bash
# All setup, then the whole test suite (what CI runs): Python (ruff, mypy, pytest), and through
# pytest the Kotlin engine (Maven, JUnit) and the Swift engine (swift test in a Debian trixie folder).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_swift.sh >/dev/null   # Swift 6 + onnxruntime for the iOS engine (cached after the first run)
command -v mvn >/dev/null && command -v java >/dev/null || {
  apt-get update -qq && apt-get install -y -qq maven default-jdk-headless >/dev/null
}
. .venv/bin/activate
ruff check .
ruff format --check .
mypy exporter runtime_py quantization rgmobile
# Two worker processes (pytest-xdist), each taking whole files, so a module's fixtures are built once;
# the artifacts several files share are built once per run (tests/shared.py). Most of the suite's
# time is single-threaded (ExecuTorch lowering, tracing), so the two halves run side by side.
# The slowest tests are named at the end: CI has 90 minutes.
python -m pytest -q -ra -n "${RGMOBILE_TEST_WORKERS:-2}" --dist loadfile --durations=25 "$@"
