#!/usr/bin/env bash
# The round trip between rmroute and Python transformers/PEFT (too heavy for CI; run by hand):
#   rmroute -> Python  a tiny Baseline and BaseLoRA trained by rmroute on all-MiniLM-L6-v2 load in
#                      transformers (the run directory) and PEFT (RUN/adapters/default on the backbone)
#                      and give the rewards `rmroute score` gives, both truncation strategies, short and
#                      long pairs, each input alone and in a padded batch;
#   Python -> rmroute  a PEFT LoRA adapter and a fully fine-tuned model trained in Python score the same
#                      in `rmroute score` (--adapter DIR, --model DIR);
#   RODOS/ARLISS/DMoERM tiny runs on MiniLM: the routers (in transformers/PEFT) route as rmroute does and
#                      the routed model or adapter gives rmroute's reward;
#   GPT-2              on the tiny random GPT2ForSequenceClassification in tests/fixtures/tiny-gpt2-rm (a
#                      decoder: reward at the last non-pad token; LoRA on Conv1D c_attn/c_proj,
#                      fan_in_fan_out): a BaseLoRA run loads in transformers (merged RUN) and PEFT
#                      (RUN/adapters/default), each ARLISS domain adapter (RUN/stages/rm-<domain>) and its
#                      router adapter load in PEFT, and a PEFT adapter trained in Python scores in rmroute,
#                      all with rmroute's rewards alone and in batches padded right and left; PEFT must hold
#                      every tensor of each adapter_model.safetensors, the score head among them.
# Every reward must agree within 1e-4; prints a table and "roundtrip: N checks passed, M failed", and
# exits non-zero on any failure. The checks themselves are in scripts/python_roundtrip.py.
#
# Environment:
#   ROUNDTRIP_VENV  the Python venv (made on first use, with torch transformers peft safetensors from
#                   PyPI: about 5.6 GB, as PyPI's torch brings the CUDA libraries; it runs on the CPU)
#                   default $HOME/.cache/rmroute/roundtrip-venv
#   RMROUTE_BIN     an rmroute binary to use instead of building target/release/rmroute
#   KEEP_WORK=1     keep the work directory (runs, adapters, scores) even when every check passes
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${ROUNDTRIP_VENV:-$HOME/.cache/rmroute/roundtrip-venv}
if ! "$venv/bin/python" -c 'import torch, transformers, peft, safetensors' 2>/dev/null; then
  echo "== making the Python venv $venv (torch transformers peft safetensors from PyPI)"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet torch transformers peft safetensors
fi
"$venv/bin/python" -c 'import torch, transformers, peft; print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")'

scripts/fetch-models.sh

if [ -n "${RMROUTE_BIN:-}" ]; then
  bin=$(realpath "$RMROUTE_BIN")
else
  cargo build --release --locked
  bin=$PWD/target/release/rmroute
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/rmroute-roundtrip.XXXXXX")
echo "== work directory $work"
"$bin" prepare --input data/sample --out "$work/prepared" >/dev/null

export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
status=0
"$venv/bin/python" scripts/python_roundtrip.py --rmroute "$bin" --prepared "$work/prepared" --work "$work" \
  --backbone models/all-MiniLM-L6-v2 --gpt2 tests/fixtures/tiny-gpt2-rm || status=$?

if [ "$status" -eq 0 ] && [ "${KEEP_WORK:-0}" != 1 ]; then
  rm -rf "$work"
else
  echo "work directory kept: $work"
fi
exit "$status"
