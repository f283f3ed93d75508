#!/usr/bin/env bash
# The architecture × activation table of BENCHMARKS.md: for every dataset, activation and
# built-in architecture, train in plaintext (full test set accuracy from the last epoch), then
# classify test images under encryption (accuracy, agreement with the plaintext model, server
# latency p50, key bytes). Results already in OUT are reused, so an interrupted run resumes.
#
#   scripts/table.sh [OUT]            (default OUT: target/table)
#
# Environment (all optional): DATASETS="mnist fashion-mnist", ACTIVATIONS="square relu-poly2
# relu-poly3 relu-poly4", ARCHS="tenseal-cnn1 cryptonets cnn2 lenet5", EPOCHS_<arch> (e.g.
# EPOCHS_lenet5=4; arch dashes become underscores), NTEST_<arch> (encrypted test images),
# MNIST_DIR (default ../shared/data/mnist). Writes OUT/table.md and OUT/table.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
command -v jq >/dev/null || { apt-get install -y -qq jq >/dev/null || sudo apt-get install -y -qq jq >/dev/null; }
OUT=${1:-target/table}
mkdir -p "$OUT"
cargo build --release -q -p blindfold-cli
B=target/release/blindfold

DATASETS=${DATASETS:-"mnist fashion-mnist"}
ACTIVATIONS=${ACTIVATIONS:-"square relu-poly2 relu-poly3 relu-poly4"}
ARCHS=${ARCHS:-"tenseal-cnn1 cryptonets cnn2 lenet5"}
MNIST_DIR=${MNIST_DIR:-../shared/data/mnist}
: "${EPOCHS_tenseal_cnn1:=8}" "${EPOCHS_cryptonets:=8}" "${EPOCHS_cnn2:=6}" "${EPOCHS_lenet5:=4}"
: "${NTEST_tenseal_cnn1:=200}" "${NTEST_cryptonets:=200}" "${NTEST_cnn2:=200}" "${NTEST_lenet5:=100}"

for ds in $DATASETS; do
  data=()
  [ "$ds" = mnist ] && data=(--data-dir "$MNIST_DIR")
  for act in $ACTIVATIONS; do
    for arch in $ARCHS; do
      v=${arch//-/_}
      epochs_var=EPOCHS_$v ntest_var=NTEST_$v
      epochs=${!epochs_var} ntest=${!ntest_var}
      stem="$OUT/$ds-$arch-$act"
      if [ ! -s "$stem.safetensors" ]; then
        echo "== train $ds $arch $act ($epochs epochs)" >&2
        $B train --dataset "$ds" "${data[@]}" --arch "$arch" --activation "$act" \
          --epochs "$epochs" --out "$stem.safetensors.tmp" 2>&1 | tr '\r' '\n' | grep -a '^epoch' | tee "$stem.train.log" >&2
        mv "$stem.safetensors.tmp" "$stem.safetensors"
      fi
      if [ ! -s "$stem.json" ]; then
        echo "== infer $ds $arch $act ($ntest images)" >&2
        $B infer --model "$stem.safetensors" --dataset "$ds" "${data[@]}" --n-test "$ntest" \
          --json "$stem.json.tmp" >"$stem.infer.log" 2>&1 || { cat "$stem.infer.log" >&2; exit 1; }
        mv "$stem.json.tmp" "$stem.json"
      fi
    done
  done
done

# One row per result: the plaintext accuracy on the full test set comes from the last epoch.
{
  printf 'dataset\tarch\tactivation\tepochs\tplain_full\tn\tplain_n\tencrypted\tagreement\tdepth\tpreset\trotation_keys\teval_key_mb\tserver_p50_ms\n'
  for ds in $DATASETS; do for act in $ACTIVATIONS; do for arch in $ARCHS; do
    stem="$OUT/$ds-$arch-$act"
    [ -s "$stem.json" ] || continue
    last=$(tail -n 1 "$stem.train.log")
    epochs=$(sed -E 's/^epoch +([0-9]+):.*/\1/' <<<"$last")
    full=$(sed -E 's/.*test accuracy ([0-9.]+)%.*/\1/' <<<"$last")
    jq -r --arg e "$epochs" --arg f "$full" --arg act "$act" '[.dataset, .arch, $act, $e, $f, .n, .plain_accuracy * 100,
      .encrypted_accuracy * 100, .agreement * 100, .depth, .params.preset, .rotation_keys,
      .bytes.eval_keys / 1e6, .server_ms.p50] | @tsv' "$stem.json"
  done; done; done
} >"$OUT/table.tsv"
awk -F'\t' 'NR == 1 { print "| dataset | arch | activation | epochs | plaintext, 10k | n | plaintext, n | encrypted, n | agreement | depth | preset | rotation keys | eval keys MB | server p50 ms |"; print "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"; next }
  { printf "| %s | %s | %s | %s | %s%% | %s | %.1f%% | %.1f%% | %.1f%% | %s | `%s` | %s | %.1f | %.1f |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14 }' \
  "$OUT/table.tsv" >"$OUT/table.md"
cat "$OUT/table.md"
