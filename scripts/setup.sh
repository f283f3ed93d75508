#!/usr/bin/env bash
# Installs what blindfold needs beyond Rust: the Fashion-MNIST dataset from Debian.
set -euo pipefail
if [ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
  exit 0
fi
echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)..." >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
