#!/usr/bin/env bash
# Reproduces the paper's Tables 2, 3 and 6 with one command: prepares the data, trains every method over
# the seeds, evaluates each run and writes the tables (Markdown, CSV, plots) under one folder, with the
# exact configs, commands and versions that produced them. A run that already finished is not retrained.
#
#   scripts/reproduce.sh                  # the paper (a GPU): Baseline on DeBERTa-v3-large and -base, the
#                                         #   other methods on DeBERTa-v3-base, seeds 1-5
#   scripts/reproduce.sh --quick          # a slice for 2 CPU cores, checked against tests/expected/quick-table.json
#   scripts/reproduce.sh --table7         # Appendix E's Table 7 (a GPU): Baseline on DeBERTa-v3 large, base,
#                                         #   small and xsmall, BERT-base, BERT-small, RoBERTa-base and GPT-2
#
# Options:
#   --quick               SPLADE-tiny, 2,000 training pairs per domain, 1 epoch, 2 seeds, every test pair; the
#                         table is compared with the expected one (about 20 minutes on 2 cores)
#   --table7              the Table 7 set above, seeds 1-5 (not with --quick, --methods or --backbone)
#   --methods a,b         of baseline, baselora, more, rodos, arliss, dmoerm (default: all)
#   --seeds 1,2,3         default 1,2,3,4,5 (quick: 1,2)
#   --backbone NAME       a configs/<method>-NAME.json family: deberta-v3-large, deberta-v3-base, minilm,
#                         splade-tiny (quick's), or paper (the default: the paper's pairing above)
#   --data DIR            raw data laid out by domain (prepared here) or an already prepared folder
#                         (default: ../shared/data, the shared real HH-RLHF, HellaSwag and OASST)
#   --out DIR             default: reproduce/ (quick: reproduce-quick/)
#   --device DEV          cpu, cuda or cuda:N (default: cuda, quick: cpu)
#   --backbone-path NAME=DIR   train configs/<method>-NAME.json on the checkpoint in DIR instead of its hub id
#                         (repeatable; e.g. a local copy of the hub, or tiny checkpoints to try the mechanics)
#   --max-length N        every config's max_length (e.g. for a GPU with less memory than the paper's)
#   --expected FILE       quick: the table to compare with (default: tests/expected/quick-table.json)
#   --save-expected       quick: write this run's table as the expected one instead of comparing (refresh it
#                         on purpose: after a change that is meant to move the figures)
# Runs are OUT/runs/<method>-<backbone>-seed<N>. A finished run is reused only if it was trained with the
# settings this command would use; otherwise the script stops and says which setting differs.
# DMoERM keeps its own stage settings under --quick (experts: lr 5e-5, 1 epoch; the aggregator, a small
# MLP on cached features: 10 epochs at 1e-3), as configs/dmoerm-*.json set them.
# Environment: RMROUTE_BIN, an rmroute binary to use instead of building target/release/rmroute.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

quick=0 table7=0 methods="" seeds="" backbone="" data="" out="" device="" expected="" save_expected=0 max_length=""
backbone_paths=()
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1 ;;
    --table7) table7=1 ;;
    --backbone-path) backbone_paths+=("$2"); shift ;;
    --max-length) max_length=$2; shift ;;
    --methods) methods=$2; shift ;;
    --seeds) seeds=$2; shift ;;
    --backbone) backbone=$2; shift ;;
    --data) data=$2; shift ;;
    --out) out=$2; shift ;;
    --device) device=$2; shift ;;
    --expected) expected=$2; shift ;;
    --save-expected) save_expected=1 ;;
    -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see $0 --help)" >&2; exit 2 ;;
  esac
  shift
done

# The quick slice: small enough for 2 CPU cores, large enough that learning shows above the seeds' spread
# (on SPLADE-tiny, anthropic learns to ~0.56 here; a slice that learns nothing could not catch a broken
# loss). Every test pair is scored: the tolerance shrinks with the test pairs, and scoring is cheap.
QUICK_PAIRS=${QUICK_PAIRS:-2000}      # training pairs per domain
QUICK_EVAL_PAIRS=${QUICK_EVAL_PAIRS:-} # test pairs per domain (default: all)
if [ "$save_expected" = 1 ] && [ "$quick" = 0 ]; then
  echo "--save-expected writes the quick slice's expected table: pass --quick too" >&2
  exit 2
fi
# Table 7's backbones, in the paper's row order.
TABLE7_BACKBONES="deberta-v3-large deberta-v3-base deberta-v3-small deberta-v3-xsmall bert-base bert-small roberta-base gpt2"
if [ "$table7" = 1 ] && { [ "$quick" = 1 ] || [ -n "$methods" ] || [ -n "$backbone" ]; }; then
  echo "--table7 is its own set (Baseline on Table 7's backbones): leave out --quick, --methods and --backbone" >&2
  exit 2
fi
if [ "$table7" = 1 ]; then
  methods=baseline
  seeds=${seeds:-1,2,3,4,5}
  backbone=table7
  out=${out:-reproduce-table7}
  device=${device:-cuda}
elif [ "$quick" = 1 ]; then
  methods=${methods:-baseline,baselora,more,rodos,arliss,dmoerm}
  seeds=${seeds:-1,2}
  backbone=${backbone:-splade-tiny}
  out=${out:-reproduce-quick}
  device=${device:-cpu}
  expected=${expected:-$repo/tests/expected/quick-table.json}
else
  methods=${methods:-baseline,baselora,more,rodos,arliss,dmoerm}
  seeds=${seeds:-1,2,3,4,5}
  backbone=${backbone:-paper}
  out=${out:-reproduce}
  device=${device:-cuda}
fi
data=${data:-$repo/../shared/data}
# Paths given on the command line are the caller's; the rest of the script runs from the repository.
absolute() { realpath -m "$1"; }
data=$(absolute "$data")
out=$(absolute "${out}")
[ -n "$expected" ] && expected=$(absolute "$expected")
[ -n "${RMROUTE_BIN:-}" ] && RMROUTE_BIN=$(absolute "$RMROUTE_BIN")
for i in ${backbone_paths[@]+"${!backbone_paths[@]}"}; do
  given=${backbone_paths[$i]}
  case $given in *=*) backbone_paths[$i]="${given%%=*}=$(absolute "${given#*=}")" ;; esac
done
case $max_length in ''|*[!0-9]*|0) [ -z "$max_length" ] || { echo "--max-length takes a positive number, got $max_length" >&2; exit 2; } ;; esac
cd "$repo"
if [ "$quick" = 1 ] && [ "$save_expected" = 0 ] && [ ! -f "$expected" ]; then
  echo "no expected table at $expected: make one from a run you trust with --save-expected" >&2
  exit 2
fi
mkdir -p "$out"/configs "$out"/runs "$out"/tables
log=$out/commands.txt

if [ -n "${RMROUTE_BIN:-}" ]; then
  bin=$(realpath "$RMROUTE_BIN")
else
  if [ "$device" = cpu ]; then cargo build --release --locked --quiet; else cargo build --release --locked --quiet --features cuda; fi
  bin=$PWD/target/release/rmroute
fi
# Every command that makes a figure is written down, in order, as it runs.
run() {
  printf '%q ' "$@" >> "$log"
  printf '\n' >> "$log"
  "$@"
}
# Appended, so the versions that trained the runs stay beside those of later invocations.
{
  echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "rmroute: $("$bin" --version)"
  echo "git: $(git rev-parse HEAD 2>/dev/null || echo unknown)$([ -z "$(git status --porcelain 2>/dev/null)" ] || echo ' (with local changes)')"
  echo "rustc: $(rustc --version 2>/dev/null || echo unknown)"
  echo "host: $(uname -srm), $(nproc) cores"
  echo "options: quick=$quick table7=$table7 methods=$methods seeds=$seeds backbone=$backbone data=$data device=$device max_length=${max_length:-config} backbone_paths=${backbone_paths[*]:-none}"
} >> "$out/versions.txt"
echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ)" >> "$log"

scripts/fetch-models.sh >/dev/null

# The data: a prepared folder is used as it is; raw data is prepared once, and OUT/prepared is reused only
# for the data it was made from (OUT/prepared.source holds that data's fingerprint).
fingerprint() { (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -d' ' -f1; }
if ls "$data"/*/train.jsonl >/dev/null 2>&1; then
  prepared=$data
elif [ -d "$data" ]; then
  prepared=$out/prepared
  source_record=$out/prepared.source
  source_print=$(fingerprint "$data")
  if [ -f "$prepared/stats.json" ]; then
    if [ -f "$source_record" ]; then
      made_from=$(sed -n 2p "$source_record")
    else # made before the record was kept: its stats.json names the folder it was made from
      made_from=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["input"])' "$prepared/stats.json")
      [ "$made_from" = "$data" ] && made_from=$source_print
    fi
    if [ "$made_from" != "$source_print" ]; then
      echo "$prepared was made from other data than --data $data (its source: $(head -1 "$source_record" 2>/dev/null || echo "$made_from")):" >&2
      echo "the runs under $out were trained on it. Pass another --out for this data, or remove $out to start over" >&2
      exit 2
    fi
  else
    run "$bin" prepare --input "$data" --out "$prepared" --seed 1 > "$out/prepare.log"
  fi
  printf '%s\n%s\n' "$data" "$source_print" > "$source_record.tmp" && mv "$source_record.tmp" "$source_record"
else
  echo "no data at $data: pass --data with raw data laid out by domain or a prepared folder" >&2
  exit 2
fi
(cd "$prepared" && sha256sum ./*/train.jsonl ./*/test.jsonl) > "$out/data-sha256.txt"

runs=()
IFS=, read -ra method_list <<< "$methods"
IFS=, read -ra seed_list <<< "$seeds"
# What to train: each method on the backbone, or the paper's pairing. Every config is checked first, so a
# missing one stops the script before hours of training, not after.
plan=()
for method in "${method_list[@]}"; do
  case $method in
    baseline|baselora|more|rodos|arliss|dmoerm) ;;
    *) echo "unknown method $method (baseline, baselora, more, rodos, arliss, dmoerm)" >&2; exit 2 ;;
  esac
  if [ "$backbone" = table7 ]; then
    for family in $TABLE7_BACKBONES; do plan+=("baseline:$family"); done
  elif [ "$backbone" = paper ]; then
    [ "$method" = baseline ] && plan+=("baseline:deberta-v3-large")
    plan+=("$method:deberta-v3-base")
  else
    plan+=("$method:$backbone")
  fi
done
for entry in "${plan[@]}"; do
  source_config=configs/${entry%%:*}-${entry#*:}.json
  [ -f "$source_config" ] || { echo "no $source_config: ${entry%%:*} has no config for backbone ${entry#*:}" >&2; exit 2; }
done
# --backbone-path NAME=DIR: each NAME must be one the plan trains, and DIR a directory.
backbone_dir() { # NAME -> the directory given for it, or nothing
  local given
  for given in ${backbone_paths[@]+"${backbone_paths[@]}"}; do
    [ "${given%%=*}" = "$1" ] && { absolute "${given#*=}"; return; }
  done
}
for given in ${backbone_paths[@]+"${backbone_paths[@]}"}; do
  name=${given%%=*} dir=${given#*=}
  case $given in *=*) ;; *) echo "--backbone-path takes NAME=DIR, got $given" >&2; exit 2 ;; esac
  printf '%s\n' "${plan[@]}" | grep -q ":$name\$" || { echo "--backbone-path $name: no config of this run uses backbone $name (${plan[*]})" >&2; exit 2; }
  [ -d "$dir" ] || { echo "--backbone-path $name=$dir: no such directory" >&2; exit 2; }
done
# The tables name a backbone by its directory's last component: two directories must not share one.
shared_names=$(for given in ${backbone_paths[@]+"${backbone_paths[@]}"}; do basename "${given#*=}"; done | sort | uniq -d)
if [ -n "$shared_names" ]; then
  echo "--backbone-path: the tables name a backbone by its directory's name, and several are called $shared_names: rename one" >&2
  exit 2
fi

for entry in "${plan[@]}"; do
  method=${entry%%:*} family=${entry#*:}
  case $method in
    baseline|baselora) command=train-baseline ;;
    *) command=train-$method ;;
  esac
  source_config=configs/$method-$family.json
  config=$out/configs/$method-$family.json
  # The config as run: the repository's, with the data, device and (quick) the slice written in.
  python3 - "$source_config" "$config" "$prepared" "$device" "$quick" "$QUICK_PAIRS" "$QUICK_EVAL_PAIRS" \
    "$(backbone_dir "$family")" "$max_length" <<'PY'
import json, sys
source, target, data, device, quick, pairs, eval_pairs, backbone_dir, max_length = sys.argv[1:]
cfg = json.load(open(source))
cfg.update({"data": data, "device": device})
if backbone_dir:
    cfg["backbone"] = backbone_dir
if quick == "1":
    cfg.update({"epochs": 1, "max_pairs": int(pairs), "max_length": 128, "batch_size": 16, "lr": 2e-4,
                "warmup_ratio": 0.1, "log_every": 5})
    if eval_pairs:
        cfg["max_eval_pairs"] = int(eval_pairs)
if max_length:
    cfg["max_length"] = int(max_length)
json.dump(cfg, open(target, "w"), indent=2)
PY
  for seed in "${seed_list[@]}"; do
    run_dir=$out/runs/$method-$family-seed$seed
    if [ -f "$run_dir/rmroute.json" ]; then
      # Reused only if trained as this command would train it (every setting the config names).
      python3 - "$config" "$run_dir/rmroute.json" <<'PY' || exit 2
import json, sys
wanted, meta_path = json.load(open(sys.argv[1])), sys.argv[2]
had = json.load(open(meta_path)).get("config", {})
def differ(want, have, path):
    for key, value in want.items():
        if key in ("seed", "out"):
            continue
        if isinstance(value, dict) and isinstance(have.get(key), dict):
            yield from differ(value, have[key], f"{path}{key}.")
        elif have.get(key) != value:
            yield f"{path}{key}: {have.get(key)!r} there, {value!r} here"
found = list(differ(wanted, had, ""))
if found:
    sys.exit(f"{meta_path} was trained with other settings ({'; '.join(found)}): remove that run or pass another --out")
PY
      echo "$run_dir is done; not retrained" >&2
    elif [ -f "$run_dir/checkpoint/state.json" ] || [ -d "$run_dir/stages" ] || compgen -G "$run_dir/.checkpoint.old-*" >/dev/null; then
      run "$bin" $command --config "$config" --seed "$seed" --out "$run_dir" --quiet --resume
    elif [ -d "$run_dir" ]; then
      # Killed before its first checkpoint: nothing to resume, so it starts over.
      run "$bin" $command --config "$config" --seed "$seed" --out "$run_dir" --quiet --force
    else
      run "$bin" $command --config "$config" --seed "$seed" --out "$run_dir" --quiet
    fi
    if [ ! -f "$run_dir/results.json" ] || [ "$run_dir/rmroute.json" -nt "$run_dir/results.json" ]; then
      run "$bin" eval --model "$run_dir" --data "$prepared" --device "$device" > "$run_dir/eval.log"
    fi
    runs+=("$run_dir")
  done
done

report=("$bin" report "${runs[@]}" --out "$out/tables" --plot)
if [ "$quick" = 1 ] && [ "$save_expected" = 1 ]; then
  run "${report[@]}" --save-expected "$expected" > "$out/tables/tables.md"
  echo "wrote the expected table $expected from $out" >&2
elif [ "$quick" = 1 ]; then
  status=0
  run "${report[@]}" --compare "$expected" > "$out/tables/tables.md" || status=$?
  cat "$out/tables/tables.md"
  exit $status
else
  run "${report[@]}" > "$out/tables/tables.md"
fi
cat "$out/tables/tables.md"
