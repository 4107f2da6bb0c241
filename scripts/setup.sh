#!/usr/bin/env bash
# Create .venv and install rgmobile with everything its tests need. Idempotent.
# torch is pinned to 2.13.0 and installed first, so that nothing else picks another build.
# PyPI's build is a few GB with its CUDA libraries (it runs on the CPU); pip keeps it in its
# cache, so a second setup on the same machine does not download it again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
  echo "rgmobile needs Python 3.11 (found $("$PY" --version 2>&1))" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
STAMP=.venv/.rgmobile-installed
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  python -m pip install -q --disable-pip-version-check -U pip
  python -m pip install -q --disable-pip-version-check "torch==2.13.0"
  python -m pip install -q --disable-pip-version-check -e ".[test]"
  touch "$STAMP"
fi
