#!/usr/bin/env bash
# All setup, then the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check .
mypy exporter runtime_py quantization
python -m pytest -q -ra "$@"
