#!/usr/bin/env bash
# The Python package: builds the wheel into a virtual environment (target/pyenv) from this
# checkout with `pip install ./python` (maturin, PyO3; needs only Rust and Python 3.9+), then
# runs its tests (pytest). CI runs exactly this. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
VENV=${BLINDFOLD_VENV:-target/pyenv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
"$VENV/bin/pip" install -q numpy pytest
CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2} "$VENV/bin/pip" install -q ./python
"$VENV/bin/python" -m pytest -q python/tests "$@"
