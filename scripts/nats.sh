#!/usr/bin/env bash
# Scale-out on NATS JetStream, with faults. Starts its own nats-server (JetStream, store in a
# temporary directory, a free loopback port) and two model-holder replicas (`serve --nats`),
# then:
#   1. a load of CLIENTS x IMAGES requests through NATS, and `kill -9` of the first replica once
#      it has answered KILL_AFTER of them: every request must be answered, once (by request
#      id), with the plaintext model's class for its image (`client … load --check-model`);
#   2. a client that keeps its keys (`blindfold keygen`) classifies a few images, nats-server
#      is restarted, and the same client comes back: the surviving replica must have
#      reconnected and the key store must still hold its keys (not uploaded again).
# Exits non-zero if any of it fails. The load report goes to target/nats-load.json.
#
#   scripts/nats.sh [--dataset mnist --data-dir ../shared/data/mnist]
#
# MODEL=path picks the model (default: tenseal-cnn1 on Fashion-MNIST, trained once into
# models/ if missing); CLIENTS (8), IMAGES (125), KILL_AFTER (300). Extra arguments go to
# both clients.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -q -p blindfold-cli
BIN=target/release/blindfold
MODEL=${MODEL:-models/fashion-mnist-tenseal-cnn1-load.safetensors}
CLIENTS=${CLIENTS:-8} IMAGES=${IMAGES:-125} KILL_AFTER=${KILL_AFTER:-300}
if [ ! -f "$MODEL" ]; then
  "$BIN" train --arch tenseal-cnn1 --epochs 5 --out "$MODEL"
fi
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL="nats://127.0.0.1:$PORT"
cat >"$WORK/nats.conf" <<EOF
listen: 127.0.0.1:$PORT
max_payload: 8MB
jetstream { store_dir: "$WORK/jetstream" }
EOF

start_nats() {
  nats-server -c "$WORK/nats.conf" >>"$WORK/nats.log" 2>&1 &
  NATS=$!
  PIDS+=("$NATS")
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nats-server did not start; its log:" >&2
  cat "$WORK/nats.log" >&2
  exit 1
}

# start_replica N: a replica whose stdout/stderr go to $WORK/rN.{out,log}; sets REPLICA_PID.
start_replica() {
  "$BIN" serve --model "$MODEL" --nats "$URL" --ack-wait-ms 5000 --listen 127.0.0.1:0 --insecure-plaintext \
    >"$WORK/r$1.out" 2>"$WORK/r$1.log" &
  REPLICA_PID=$!
  PIDS+=("$REPLICA_PID")
  for _ in $(seq 1 600); do
    grep -q "taking work from" "$WORK/r$1.log" && return 0
    kill -0 "$REPLICA_PID" 2>/dev/null || { cat "$WORK/r$1.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "replica $1 did not start" >&2
  exit 1
}

# answered N: requests replica N has answered (from its /metrics).
answered() {
  local addr
  addr=$(sed -n 's/^listening on //p' "$WORK/r$1.out")
  curl -s "http://$addr/metrics" | awk '/rpc="NatsEvaluate"/ { n += $2 } END { print n + 0 }'
}

start_nats
start_replica 1
FIRST=$REPLICA_PID
start_replica 2
SECOND=$REPLICA_PID
echo "nats-server on $URL; replicas $FIRST and $SECOND"

echo "== $((CLIENTS * IMAGES)) requests through NATS; kill -9 of replica 1 after $KILL_AFTER of them"
"$BIN" client --nats "$URL" load --clients "$CLIENTS" --images "$IMAGES" --check-model "$MODEL" \
  --json target/nats-load.json "$@" &
LOAD=$!
PIDS+=("$LOAD")
while kill -0 "$LOAD" 2>/dev/null; do
  total=$(( $(answered 1) + $(answered 2) ))
  if [ "$total" -ge "$KILL_AFTER" ]; then
    echo "killing replica 1 (kill -9) after $total replies ($(answered 1) of them its own)"
    { kill -9 "$FIRST" && wait "$FIRST"; } 2>/dev/null || true
    break
  fi
  sleep 0.2
done
wait "$LOAD"
echo "replica 2 answered $(answered 2) requests in all"
ADDR2=$(sed -n 's/^listening on //p' "$WORK/r2.out")
echo "work queue depth now (replica 2's /metrics): $(curl -s "http://$ADDR2/metrics" | awk '/^blindfold_queue_depth / { print $2 }')"

echo "== restart of nats-server: the replica reconnects, the keys are still there"
"$BIN" keygen --model "$MODEL" --out-dir "$WORK/keys" >/dev/null
"$BIN" client --nats "$URL" infer --keys "$WORK/keys" --n-test 10 "$@" --json "$WORK/before.json" >/dev/null
kill "$NATS"
wait "$NATS" 2>/dev/null || true
start_nats
echo "nats-server restarted"
for _ in $(seq 1 50); do
  "$BIN" client --nats "$URL" infer --keys "$WORK/keys" --n-test 10 "$@" --json "$WORK/after.json" \
    >"$WORK/after.out" 2>&1 && break
  sleep 1
done
cat "$WORK/after.out"
python3 - "$WORK/before.json" "$WORK/after.json" <<'EOF'
import json, sys
before, after = (json.load(open(p)) for p in sys.argv[1:])
assert not before["keys_already_held"], "the keys were in the store before the first upload"
assert after["keys_already_held"], "the key store lost the keys in the restart"
assert after["duplicate_replies"] == 0
print(f"after the restart: {after['n']} images classified by the reconnected replica, keys not uploaded again, "
      f"accuracy {100 * after['encrypted_accuracy']:.0f}%")
EOF
echo "all checks passed"
