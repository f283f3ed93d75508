#!/usr/bin/env bash
# The test suite (CI runs exactly this): installs the test data if missing, then runs every
# crate's tests, doctests included.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace "$@"
