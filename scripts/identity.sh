#!/usr/bin/env bash
# Shows that two rmroute binaries compute the same numbers: each prepares the shipped sample
# (data/sample), trains a tiny fixed-seed run of all six methods on SPLADE-tiny (configs/*-splade-tiny.json,
# 48 pairs per domain, 2 epochs at lr 5e-4, 128 tokens), and scores every test pair of the sample with each run;
# the prepared data, the rewards and eval's accuracies must be equal, bit for bit.
#
#   scripts/identity.sh OLD_BIN NEW_BIN        # e.g. a release build of main before and after a change
#
# Environment: WORK, the folder to work in (default: a new temporary one, kept for inspection);
# METHODS, a comma-separated subset of baseline,baselora,more,rodos,arliss,dmoerm; NEW_PATCH (below).
# Prints one line per method and domain and exits 1 when anything differs.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -ne 2 ]; then
  sed -n '2,11p' "$0"
  exit 2
fi
old=$(realpath "$1")
new=$(realpath "$2")
for bin in "$old" "$new"; do
  [ -x "$bin" ] || { echo "$bin is not an executable" >&2; exit 2; }
done
work=${WORK:-$(mktemp -d)}
work=$(realpath -m "$work")
methods=${METHODS:-baseline,baselora,more,rodos,arliss,dmoerm}
cd "$repo"
scripts/fetch-models.sh

# The tiny settings, written beside the configs they come from. NEW_PATCH, a JSON object merged key by key
# into the new binary's configs of the methods it names, keeps a setting whose default moved on purpose
# as it was: '{"rodos": {"router": {"truncation": "keep_start"}}}' (the old binary would refuse the key).
for name in old new; do
  mkdir -p "$work/configs/$name"
  patch='{}'
  [ "$name" = new ] && patch=${NEW_PATCH:-'{}'}
  for method in ${methods//,/ }; do
    python3 - "$repo/configs/$method-splade-tiny.json" "$work/configs/$name/$method.json" "$patch" <<'EOF'
import json, sys
config = json.load(open(sys.argv[1]))
config.update({"max_length": 128, "max_pairs": 48, "epochs": 2, "lr": 5e-4, "log_every": 1})
def merge(into, patch):
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value
patch = json.loads(sys.argv[3])
if config["method"] in patch:
    merge(config, {config["method"]: patch[config["method"]]})
json.dump(config, open(sys.argv[2], "w"), indent=2)
EOF
  done
done

command_of() { case $1 in baseline | baselora) echo train-baseline ;; *) echo "train-$1" ;; esac; }

run_all() { # name binary
  local name=$1 bin=$2 dir=$work/$1
  "$bin" prepare --input data/sample --out "$dir/prepared" --seed 7 >/dev/null
  for method in ${methods//,/ }; do
    local run=$dir/runs/$method
    "$bin" "$(command_of "$method")" --config "$work/configs/$name/$method.json" --data "$dir/prepared" --out "$run" \
      --seed 11 --force --quiet >/dev/null
    mkdir -p "$dir/scores"
    for test in "$dir"/prepared/*/test.jsonl; do
      local domain
      domain=$(basename "$(dirname "$test")")
      "$bin" score --model "$run" --input "$test" --out "$dir/scores/$method-$domain.jsonl" --quiet
    done
    "$bin" eval --model "$run" --data "$dir/prepared" --out "$dir/scores/$method-results.json" >/dev/null
  done
}

echo "old: $old"
echo "new: $new"
echo "work: $work"
run_all old "$old"
run_all new "$new"

python3 - "$work" "$methods" <<'EOF'
import json, os, sys
work, methods = sys.argv[1], sys.argv[2].split(",")
differ = 0
def same_tree(a, b):
    files = lambda root: sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
    if files(a) != files(b):
        return False
    return all(open(os.path.join(a, f), "rb").read() == open(os.path.join(b, f), "rb").read() for f in files(a))
prepared = same_tree(f"{work}/old/prepared", f"{work}/new/prepared")
print(f"prepared data: {'identical' if prepared else 'DIFFERS'}")
differ += not prepared
print(f"{'method':9} {'domain':10} {'rows':>5} {'rewards':>9} {'max |diff|':>11} {'accuracy old / new':>22}")
for method in methods:
    old_results = json.load(open(f"{work}/old/scores/{method}-results.json"))
    new_results = json.load(open(f"{work}/new/scores/{method}-results.json"))
    for name in sorted(os.listdir(f"{work}/old/scores")):
        if not name.startswith(method + "-") or not name.endswith(".jsonl"):
            continue
        domain = name[len(method) + 1:-len(".jsonl")]
        read = lambda side: [json.loads(l) for l in open(f"{work}/{side}/scores/{name}")]
        old, new = read("old"), read("new")
        values = lambda lines: [v for l in lines for k, v in sorted(l.items()) if isinstance(v, float)]
        a, b = values(old), values(new)
        same = old == new
        diff = max((abs(x - y) for x, y in zip(a, b)), default=0.0) if len(a) == len(b) else float("inf")
        accuracy = lambda r: r["domains"].get(domain, {}).get("accuracy", float("nan"))
        oa, na = accuracy(old_results), accuracy(new_results)
        print(f"{method:9} {domain:10} {len(old):5} {'equal' if same else 'DIFFER':>9} {diff:11.3g} {oa:10.4f} / {na:.4f}")
        differ += (not same) or oa != na
print("every reward and accuracy equal" if differ == 0 else f"{differ} differences")
sys.exit(1 if differ else 0)
EOF
