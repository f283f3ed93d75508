#!/usr/bin/env bash
# Installs what blindfold needs beyond Rust, from Debian: the Fashion-MNIST dataset (tests and
# examples) and nats-server (the scale-out tests and scripts/nats.sh).
set -euo pipefail
missing=()
[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
command -v nats-server >/dev/null || missing+=(nats-server)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing ${missing[*]} (Debian packages)..." >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
