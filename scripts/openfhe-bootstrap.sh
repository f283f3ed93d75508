#!/usr/bin/env bash
# OpenFHE's CKKS bootstrapping, measured for comparison with blindfold's: sets up (once) a
# virtual environment with OpenFHE's Python package from PyPI, then runs
# scripts/openfhe_bootstrap.py in it with this script's arguments (see its --help).
#
#   scripts/openfhe-bootstrap.sh --insecure --log-n 12          # quick test, seconds
#   scripts/openfhe-bootstrap.sh --json target/openfhe-16.json  # N = 2^16: ~22 GB, minutes
#
# The package: openfhe 1.6.1.0.22.4 (OpenFHE v1.6.1), the build for Ubuntu 22.04. Its wheel is
# tagged py3-none-any but holds an extension built for CPython 3.10 only
# (openfhe.cpython-310-x86_64-linux-gnu.so), so pip installs it into any Python >= 3.10 and
# only 3.10 can import it. The 24.04 builds (x.y.z.w.24.4) need CPython >= 3.12 and glibc 2.38 /
# GLIBCXX_3.4.32, newer than Debian 12's. So this needs a CPython 3.10: $OPENFHE_PYTHON, else
# python3.10 on PATH, else pyenv's (the machine image has 3.10.13 under ~/.pyenv; Debian 12
# packages no 3.10).
#
# Environment: OPENFHE_VENV (default target/openfhe-venv), OPENFHE_PYTHON (a python3.10),
# OPENFHE_VERSION (default 1.6.1.0.22.4).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${OPENFHE_VENV:-target/openfhe-venv}
VERSION=${OPENFHE_VERSION:-1.6.1.0.22.4}

is_310() {
  [ -x "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' >/dev/null 2>&1
}

# The first CPython 3.10 among $OPENFHE_PYTHON, python3.10 on PATH (a pyenv shim there may
# point at no 3.10), and pyenv's installed versions.
find_python310() {
  local root=${PYENV_ROOT:-$HOME/.pyenv} p
  for p in "${OPENFHE_PYTHON:-}" "$(command -v python3.10 || true)" "$root"/versions/3.10.*/bin/python3.10; do
    if [ -n "$p" ] && is_310 "$p"; then
      echo "$p"
      return 0
    fi
  done
  return 0
}

installed() {
  "$VENV/bin/python" - "$VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(version("openfhe") != sys.argv[1])
EOF
}

if ! is_310 "$VENV/bin/python"; then
  PY=$(find_python310)
  if [ -z "$PY" ] || ! is_310 "$PY"; then
    echo "openfhe-bootstrap.sh: no CPython 3.10 found (set OPENFHE_PYTHON, put python3.10 on PATH," >&2
    echo "or install it with pyenv); OpenFHE's wheel for this system (openfhe $VERSION) runs only on 3.10" >&2
    exit 1
  fi
  if [ -e "$VENV" ] && [ ! -f "$VENV/pyvenv.cfg" ]; then
    echo "openfhe-bootstrap.sh: $VENV exists and is no virtual environment; not replacing it" >&2
    exit 1
  fi
  echo "openfhe-bootstrap.sh: creating $VENV with $PY" >&2
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
fi
if ! installed; then
  echo "openfhe-bootstrap.sh: installing openfhe==$VERSION from PyPI into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "openfhe==$VERSION"
fi
exec "$VENV/bin/python" scripts/openfhe_bootstrap.py "$@"
