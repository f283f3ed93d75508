#!/usr/bin/env bash
# The ensemble over the network against the in-process ensemble. Runs `blindfold ensemble`
# (HOLDERS holders on an iid split, mean aggregation, N images), which writes every image's
# class and the holders' models exactly as it evaluated them; then serves those models as
# HOLDERS `blindfold serve` processes behind one `blindfold coordinate` on loopback, and
# classifies the same N images through the coordinator twice:
#   1. all holders up: every image's class must equal the in-process ensemble's;
#   2. the last holder killed once KILL_AFTER images are done: the client must report it left
#      out of every later reply, and every reply must still decrypt to a class.
# Exits non-zero if any of it fails.
#
#   scripts/ensemble_net.sh [--dataset mnist --data-dir ../shared/data/mnist]
#
# HOLDERS (5), N (200), KILL_AFTER (100). Extra arguments go to every command that reads data.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -q -p blindfold-cli
BIN=target/release/blindfold
HOLDERS=${HOLDERS:-5} N=${N:-200} KILL_AFTER=${KILL_AFTER:-100}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== in-process ensemble: $HOLDERS holders, iid split, mean, $N images"
"$BIN" ensemble --holders "$HOLDERS" --split iid --aggregation mean --n-test "$N" \
  --export-holders "$WORK/holders" --predictions "$WORK/inproc.csv" "$@" 2>"$WORK/ensemble.log" | tail -n 4

# start NAME ARGS...: a server whose stdout/stderr go to $WORK/NAME.{out,log}; sets ADDR and
# LAST_PID.
start() {
  local name=$1
  shift
  "$BIN" "$@" --listen 127.0.0.1:0 --insecure-plaintext >"$WORK/$name.out" 2>"$WORK/$name.log" &
  PIDS+=("$!")
  LAST_PID=$!
  for _ in $(seq 1 600); do
    if grep -q "^listening on" "$WORK/$name.out"; then
      ADDR=$(sed -n 's/^listening on //p' "$WORK/$name.out")
      return 0
    fi
    kill -0 "$LAST_PID" 2>/dev/null || { cat "$WORK/$name.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "$name did not start" >&2
  exit 1
}

ADDRS=()
HOLDER_PIDS=()
for h in $(seq 0 $((HOLDERS - 1))); do
  start "holder$h" serve --model "$WORK/holders/iid-holder$h.safetensors"
  ADDRS+=("http://$ADDR")
  HOLDER_PIDS+=("$LAST_PID")
done
LIST=$(IFS=,; echo "${ADDRS[*]}")
start coordinator coordinate --holders "$LIST"
COORD=$ADDR
echo "$HOLDERS holders and a coordinator on http://$COORD"

echo "== through the coordinator, all holders up"
"$BIN" client --server "http://$COORD" infer --n-test "$N" --predictions "$WORK/net.csv" "$@" | grep -E "accuracy|round trip"

echo "== again, holder $((HOLDERS - 1)) killed after $KILL_AFTER images"
LASTH=$((HOLDERS - 1))
LAST_ADDR=${ADDRS[$LASTH]#http://}
"$BIN" client --server "http://$COORD" infer --n-test "$N" --predictions "$WORK/drop.csv" "$@" >"$WORK/drop.out" &
CLIENT=$!
while kill -0 "$CLIENT" 2>/dev/null; do
  done_n=$(curl -s "http://$LAST_ADDR/metrics" | awk '/rpc="Evaluate",code="Ok"/ { n += $2 } END { print n + 0 }')
  if [ "$done_n" -ge $((N + KILL_AFTER)) ]; then
    { kill -9 "${HOLDER_PIDS[$LASTH]}" && wait "${HOLDER_PIDS[$LASTH]}"; } 2>/dev/null || true
    echo "killed holder $LASTH (kill -9) after it answered $((done_n - N)) images of this run"
    break
  fi
  sleep 0.1
done
wait "$CLIENT"
grep -E "accuracy|ensemble" "$WORK/drop.out"

python3 - "$WORK/inproc.csv" "$WORK/net.csv" "$WORK/drop.csv" "$LASTH" <<'EOF'
import csv, sys
inproc, net, drop = ([r for r in csv.DictReader(open(p))] for p in sys.argv[1:4])
last = sys.argv[4]
same = sum(a["mean_encrypted"] == b["class"] for a, b in zip(inproc, net))
twin = sum(a["mean_plain"] == b["class"] for a, b in zip(inproc, net))
print(f"network vs in-process ensemble: {same} of {len(net)} images the same class "
      f"({twin} the same as the plaintext twin)")
assert len(net) == len(inproc) and same == len(net), "the network ensemble differs from the in-process one"
assert all(r["left_out"] == "" for r in net), "a holder was left out with all of them up"
dropped = [int(r["image"]) for r in drop if r["left_out"]]
assert dropped, "the stopped holder was never reported"
assert all(r["left_out"] == last for r in drop if r["left_out"]), "another holder than the stopped one left out"
assert dropped == list(range(dropped[0], len(drop))), "the stopped holder came back"
kept = sum(a["class"] == b["class"] for a, b in zip(net, drop) if b["left_out"])
print(f"holder {last} stopped: reported left out of images {dropped[0]}..{dropped[-1]} ({len(dropped)} replies); "
      f"{kept} of them kept the five-holder class")
EOF
echo "all checks passed"
