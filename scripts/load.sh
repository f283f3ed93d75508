#!/usr/bin/env bash
# Load on one model-holder replica over loopback: starts `blindfold serve` (plaintext gRPC on
# a free port; add TLS yourself for a TLS run), then `blindfold client … load` with concurrent
# clients, each with its own keys, and reads the server's resident memory after the first and
# the last thousand requests. Figures go to stdout and target/load.json.
#
#   scripts/load.sh [--clients 8] [--images 250] [--dataset mnist --data-dir ../shared/data/mnist]
#
# MODEL=path picks the model (default: tenseal-cnn1 on Fashion-MNIST, trained once into
# models/ if missing). Extra arguments go to `blindfold client … load`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -q -p blindfold-cli
BIN=target/release/blindfold
MODEL=${MODEL:-models/fashion-mnist-tenseal-cnn1-load.safetensors}
if [ ! -f "$MODEL" ]; then
  "$BIN" train --arch tenseal-cnn1 --epochs 5 --out "$MODEL"
fi
LOG=$(mktemp)
"$BIN" serve --insecure-plaintext --listen 127.0.0.1:0 --model "$MODEL" >"$LOG" 2>/dev/null &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -f "$LOG"' EXIT
for _ in $(seq 1 300); do
  grep -q "listening on" "$LOG" && break
  kill -0 $PID 2>/dev/null || { echo "the server did not start" >&2; exit 1; }
  sleep 0.1
done
ADDR=$(sed -n 's/^listening on //p' "$LOG")
"$BIN" client --server "http://$ADDR" load --server-pid "$PID" --json target/load.json "$@"
