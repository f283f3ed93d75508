#!/usr/bin/env bash
# The main job: trains tenseal-cnn1 on Fashion-MNIST on first use (cached in models/), then
# classifies test images under CKKS encryption and compares with the plaintext model.
# Extra arguments go to `blindfold demo` (try --help, --dataset mnist --data-dir ../shared/data/mnist).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo run --release -q -p blindfold-cli -- demo "$@"
