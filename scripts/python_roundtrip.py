#!/usr/bin/env python3
"""The round trip between rmroute and Python transformers/PEFT; run by scripts/python-roundtrip.sh
(which makes the venv, fetches the models, builds rmroute and prepares data/sample), or by hand:

    HF_HUB_OFFLINE=1 VENV/bin/python scripts/python_roundtrip.py --rmroute target/release/rmroute \\
        --prepared PREPARED_DIR --work WORK_DIR [--backbone models/all-MiniLM-L6-v2] \\
        [--gpt2 tests/fixtures/tiny-gpt2-rm] [--python-only]

Checks, each |reward difference| <= --tol (1e-4):
  rmroute -> Python  rmroute trains a tiny Baseline and a tiny BaseLoRA on MiniLM; their run directories
                     load in transformers (AutoModelForSequenceClassification on RUN: the BaseLoRA adapter
                     is merged there) and in PEFT (PeftModel on the backbone + RUN/adapters/default), and
                     give the rewards `rmroute score` gives, for short and long (> max_length) pairs, with
                     both truncation strategies, each input alone and in one padded batch.
  Python -> rmroute  a PEFT LoRA adapter and a fully fine-tuned model trained here score the same in
                     `rmroute score` (--adapter DIR, and --model DIR); their reward heads start at std 1,
                     not 0.02, so rewards are of order 1-10 and 1e-4 is a tight relative bound too.
  RODOS, ARLISS, DMoERM  tiny runs on MiniLM: transformers/PEFT load the router and each domain's model or
                     adapter; the router picks rmroute's domain for every prompt (a long prompt cut as the
                     run's router cuts it: its end by default) and that model gives rmroute's reward.
  GPT-2 (--gpt2)     GPT2ForSequenceClassification, a decoder (the reward at the last token that is not
                     pad_token_id, eos 511 here; LoRA on Conv1D c_attn/c_proj with fan_in_fan_out), on the
                     tiny random fixture, max_length 48, items picked by GPT-2 token counts; pairs are
                     `tokenizer(prompt, response)` (plain concatenation), both truncation strategies,
                     rewards each alone and in one batch padded right and padded left (left with generate()'s
                     position ids from the mask: GPT2Model's default arange shifts a left-padded row's
                     positions, so transformers' own rewards move; how far is printed as a note):
                     - rmroute BaseLoRA: AutoModel(RUN) (merged) and PeftModel(fixture, RUN/adapters/default)
                       against `rmroute score --model RUN` (--adapter default) and the fixture --adapter DIR;
                     - rmroute ARLISS: each domain's reward adapter (stages/rm-<domain>, as rmroute.json's
                       parts say; an ARLISS run takes no --adapter) in PEFT on the fixture against `rmroute
                       score --model FIXTURE --adapter DIR`; PEFT's router adapter picks `rmroute score
                       --model RUN`'s domain and that adapter gives its reward (one_pass and sequential);
                     - Python -> rmroute: a PEFT LoRA adapter trained here (fan_in_fan_out, modules_to_save
                       [score]) scores the same in `rmroute score --model FIXTURE --adapter DIR`;
                     and for each adapter, PEFT holds exactly the tensors of adapter_model.safetensors (no
                     missing or unexpected keys, equal values), the head score.weight among them and not
                     the base's, LoRA on all 6 c_attn/c_proj modules, adapter_config.json's fan_in_fan_out
                     true and modules_to_save [score].
Also checked: the run directory contract (files, one label, rmroute.json, adapter_config.json) and that
transformers loads every weight. rmroute is run at batch size 16 (one padded batch) and 1.
--gpt2 '' skips the GPT-2 part. --python-only runs the Python side alone (training, saving, reloading,
Python rewards), for a machine without the rmroute binary. Exit status 1 if any check fails.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import warnings  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from peft import LoraConfig, PeftModel, TaskType, get_peft_model  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.disable_progress_bar()
warnings.filterwarnings("ignore", category=FutureWarning)

MAX_LENGTH = 64
STRATEGIES = ["longest_first", "keep_prompt_end"]
# LoRA on the encoder's query/key/value/dense only: a plain ["query","key","value","dense"] list would also
# adapt pooler.dense, which is trained whole (modules_to_save) here.
TARGET_REGEX = r".*encoder\.layer\.\d+\.(.*\.)?(query|key|value|dense)"


# ---------------------------------------------------------------------------------------------- checks

class Checks:
    def __init__(self, tol):
        self.tol, self.rows, self.facts = tol, [], []

    def fact(self, name, ok, detail=""):
        """A yes/no check (a file, a field, a command that must succeed)."""
        self.facts.append((name, bool(ok), detail))
        print(f"  [{'ok' if ok else 'FAIL'}] {name}{': ' + detail if detail else ''}", flush=True)
        return ok

    def compare(self, model, loader, strategy, batching, ref, got):
        """ref, got: id -> reward. A missing id or a non-finite reward fails the row."""
        missing = sorted(set(ref) - set(got))
        deltas = [abs(ref[k] - got[k]) for k in ref if k in got]
        worst = max(deltas) if deltas else math.inf
        if any(not math.isfinite(d) for d in deltas):
            worst = math.inf
        ok = not missing and len(deltas) > 0 and worst <= self.tol
        scale = max((abs(v) for v in ref.values()), default=math.nan)
        self.rows.append((model, loader, strategy, batching, len(deltas), worst, ok, missing, scale))
        return ok

    def fail_rows(self, model, loader, batchings, why):
        """Rows that could not be compared (a step before them failed)."""
        for strategy in STRATEGIES:
            for b in batchings:
                self.rows.append((model, loader, strategy, b, 0, math.inf, False, [why], math.nan))

    def report(self):
        print()
        head = ("model", "loader", "strategy", "python vs rmroute", "n", "max |reward|", "max |Δ|", "")
        table = [head] + [
            (m, l, s, b, str(n), "-" if math.isnan(r) else f"{r:.3g}", "-" if not math.isfinite(w) else f"{w:.2e}",
             "ok" if ok else "FAIL")
            for m, l, s, b, n, w, ok, _, r in self.rows
        ]
        widths = [max(len(r[i]) for r in table) for i in range(len(head))]
        for i, r in enumerate(table):
            print("  ".join(c.ljust(widths[j]) for j, c in enumerate(r)).rstrip())
            if i == 0:
                print("  ".join("-" * w for w in widths))
        for m, l, s, b, n, w, ok, missing, _ in self.rows:
            if missing:
                print(f"  {m} / {l} / {s} / {b}: {'; '.join(map(str, missing))[:300]}")
        failed_facts = [f for f in self.facts if not f[1]]
        if failed_facts:
            print("\nfailed checks:")
            for name, _, detail in failed_facts:
                print(f"  {name}: {detail}")
        passed = sum(r[6] for r in self.rows) + sum(f[1] for f in self.facts)
        failed = len(self.rows) + len(self.facts) - passed
        print(f"\nroundtrip: {passed} checks passed, {failed} failed (tolerance {self.tol:g})")
        return failed == 0


# -------------------------------------------------------------------------------------------- encoding

def keep_prompt_end(tok, prompt, response, n):
    """rmroute's keep_prompt_end, written from its rule: the end of the prompt, the start of the
    response, the response getting at least half of the budget. (ids, token types)."""
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"]
    cls, sep = tok.cls_token_id, tok.sep_token_id
    full = [cls] + p + [sep] + r + [sep]
    if len(full) > n:
        budget = n - 3
        keep_r = min(len(r), max(max(budget - len(p), 0), budget // 2))
        keep_p = min(len(p), budget - keep_r)
        full = [cls] + p[len(p) - keep_p :] + [sep] + r[:keep_r] + [sep]
    first_sep = full.index(sep)
    return full, [0 if i <= first_sep else 1 for i in range(len(full))]


def batch_inputs(tok, items, strategy, n):
    """One padded batch of the items (a list of dicts with prompt/response), as model kwargs."""
    prompts, responses = [it["prompt"] for it in items], [it["response"] for it in items]
    if strategy == "longest_first":
        return dict(tok(prompts, responses, truncation=True, max_length=n, padding=True, return_tensors="pt"))
    encs = [keep_prompt_end(tok, p, r, n) for p, r in zip(prompts, responses)]
    width = max(len(ids) for ids, _ in encs)
    pad = tok.pad_token_id
    ids = [e[0] + [pad] * (width - len(e[0])) for e in encs]
    types = [e[1] + [0] * (width - len(e[1])) for e in encs]
    mask = [[1] * len(e[0]) + [0] * (width - len(e[0])) for e in encs]
    return {"input_ids": torch.tensor(ids), "token_type_ids": torch.tensor(types), "attention_mask": torch.tensor(mask)}


def single_inputs(tok, item, strategy, n):
    if strategy == "longest_first":
        return dict(tok(item["prompt"], item["response"], truncation=True, max_length=n, padding=False, return_tensors="pt"))
    ids, types = keep_prompt_end(tok, item["prompt"], item["response"], n)
    return {"input_ids": torch.tensor([ids]), "token_type_ids": torch.tensor([types]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}


@torch.no_grad()
def python_rewards(model, tok, items, strategy, n):
    """{"batch1": id -> reward, "padded": id -> reward}."""
    model.eval()
    alone = {it["id"]: float(model(**single_inputs(tok, it, strategy, n)).logits[0, 0]) for it in items}
    logits = model(**batch_inputs(tok, items, strategy, n)).logits[:, 0]
    padded = {it["id"]: float(v) for it, v in zip(items, logits)}
    return {"batch1": alone, "padded": padded}


# ------------------------------------------------------------------------------------------------ data

def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def prepared_pairs(prepared, domains, split):
    out = []
    for d in domains:
        path = Path(prepared) / d / f"{split}.jsonl"
        if path.exists():
            out += read_jsonl(path)
    return out


def pick_items(tok, prepared, slots=None, domains=("oasst", "anthropic"), added=3):
    """Short and long real (prompt, response) items from the prepared data, by the tokenizer's token
    counts (MiniLM's unless told); `added`: the special tokens the tokenizer puts around a pair."""
    slots = slots or [  # name, how many, predicate on (prompt tokens, response tokens), both without specials
        ("short", 3, lambda p, r: p + r + 3 <= 48),
        ("fits", 1, lambda p, r: 58 <= p + r + 3 <= MAX_LENGTH),
        ("just-over", 1, lambda p, r: MAX_LENGTH < p + r + 3 <= MAX_LENGTH + 8),
        ("long-long", 3, lambda p, r: p >= 40 and r >= 40 and p + r <= 1500),
        ("short-prompt-long-response", 1, lambda p, r: p <= 15 and r >= 80),
        ("long-prompt-short-response", 1, lambda p, r: p >= 80 and r <= 15),
    ]
    candidates = []
    for split in ("test", "train"):
        for rec in prepared_pairs(prepared, list(domains), split):
            for side in ("chosen", "rejected"):
                candidates.append((f"{rec['id']}/{side}", rec["prompt"], rec[side]))
    items, used = [], set()
    for name, count, pred in slots:
        got = 0
        for cid, prompt, response in candidates:
            if got == count:
                break
            if prompt in used:  # one item per prompt: prepared pairs repeat (prompt, chosen)
                continue
            p = len(tok(prompt, add_special_tokens=False)["input_ids"])
            r = len(tok(response, add_special_tokens=False)["input_ids"])
            if pred(p, r):
                used.add(prompt)
                items.append({"id": f"{name}:{cid}", "prompt": prompt, "response": response, "tokens": p + r + added})
                got += 1
        if got < count:
            print(f"  note: only {got} of {count} '{name}' items in {prepared}")
    return items


# --------------------------------------------------------------------------------------------- rmroute

class Rmroute:
    def __init__(self, binary, checks):
        self.binary, self.checks, self.cache = binary, checks, {}

    def run(self, name, args):
        cmd = [str(self.binary)] + [str(a) for a in args]
        t = time.time()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as e:
            return self.checks.fact(name, False, f"{' '.join(cmd)}: {e}")
        detail = f"{time.time() - t:.1f}s"
        if proc.returncode != 0:
            detail = f"exit {proc.returncode}: {' '.join(cmd)}\n      " + (proc.stderr or proc.stdout).strip()[-1500:].replace("\n", "\n      ")
        return self.checks.fact(name, proc.returncode == 0, detail)

    def score(self, name, model, items_file, out, strategy, max_length=None, adapter=None, batch_size=None):
        args = ["score", "--model", model, "--input", items_file, "--out", out, "--quiet", "--truncation", strategy]
        if max_length is not None:
            args += ["--max-length", max_length]
        if adapter is not None:
            args += ["--adapter", adapter]
        if batch_size is not None:
            args += ["--batch-size", batch_size]
        key = tuple(map(str, args[:5] + args[7:]))  # the same command but --out: scored already
        if key not in self.cache:
            got = None
            if self.run(name, args):
                try:
                    got = {str(rec["id"]): float(rec["reward"]) for rec in read_jsonl(out)}
                except (KeyError, ValueError, TypeError) as e:
                    self.checks.fact(f"{name}: output lines are {{id, reward}}", False, repr(e))
            self.cache[key] = got
        return self.cache[key]


def compare_with_rmroute(checks, rm, label, loader, py, items_file, work, model_arg, adapter=None, max_length=None, rm_label=""):
    """py: strategy -> {"batch1", "padded", ...} rewards (a decoder's has "padded right" and "padded left").
    Scores with rmroute at its default batch size (one padded batch here) and at batch size 1, and
    compares each with every Python batching."""
    for strategy in STRATEGIES:
        for bs, bs_name in ((None, "bs16"), (1, "bs1")):
            tag = f"{label}-{rm_label or loader}-{strategy}-{bs_name}"
            out = work / "scores" / ("".join(c if c.isalnum() or c in "-_" else "_" for c in tag) + ".jsonl")
            got = rm.score(f"rmroute score {label} ({rm_label or loader}, {strategy}, {bs_name})", model_arg, items_file,
                           out, strategy, max_length=max_length, adapter=adapter, batch_size=bs)
            for py_batching in py[strategy]:
                batching = f"py {py_batching} / rm {rm_label + ' ' if rm_label else ''}{bs_name}"
                if got is None:
                    checks.rows.append((label, loader, strategy, batching, 0, math.inf, False, ["rmroute score failed"], math.nan))
                else:
                    checks.compare(label, loader, strategy, batching, py[strategy][py_batching], got)


# ---------------------------------------------------------------------------------------- run contract

def load_seq_cls(checks, path, what):
    model, info = AutoModelForSequenceClassification.from_pretrained(str(path), output_loading_info=True)
    missing = [k for k in info.get("missing_keys", [])]
    unexpected = [k for k in info.get("unexpected_keys", []) if not k.endswith("position_ids")]
    checks.fact(f"{what}: transformers loads every weight", not missing and not unexpected,
                f"missing {missing[:6]} unexpected {unexpected[:6]}" if missing or unexpected else "")
    model.eval()
    return model


def check_run_dir(checks, run, method, backbone, cfg, head_modules=("classifier", "pooler"), fan_in_fan_out=None):
    """head_modules: what adapter_config.json's modules_to_save must hold; fan_in_fan_out: its value
    where it matters (True for GPT-2's Conv1D), None not to check it."""
    name = run.name
    cfg_path, meta_path = run / "config.json", run / "rmroute.json"
    ok = checks.fact(f"{name}: config.json, model.safetensors, tokenizer.json, rmroute.json",
                     all((run / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json", "rmroute.json")),
                     ", ".join(sorted(p.name for p in run.iterdir())) if run.is_dir() else "no run directory")
    if not ok:
        return False
    hf = json.loads(cfg_path.read_text())
    labels = hf.get("num_labels", len(hf.get("id2label", {})) or None)
    checks.fact(f"{name}: config.json has one label", labels == 1, f"num_labels {labels}, id2label {hf.get('id2label')}")
    meta = json.loads(meta_path.read_text())
    mcfg = meta.get("config", {})
    checks.fact(f"{name}: rmroute.json method/backbone/config", str(meta.get("method", "")).lower() == method
                and meta.get("backbone") == backbone and mcfg.get("max_length") == cfg["max_length"]
                and mcfg.get("truncation") == cfg["truncation"],
                f"method {meta.get('method')!r} backbone {meta.get('backbone')!r} max_length {mcfg.get('max_length')!r} truncation {mcfg.get('truncation')!r}")
    if method == "baselora":
        ad = run / "adapters" / "default"
        ok = checks.fact(f"{name}: adapters/default/ in PEFT layout",
                         (ad / "adapter_config.json").is_file() and (ad / "adapter_model.safetensors").is_file(),
                         ", ".join(sorted(p.name for p in ad.iterdir())) if ad.is_dir() else "missing")
        if ok:
            ac = json.loads((ad / "adapter_config.json").read_text())
            tm, mts = ac.get("target_modules"), ac.get("modules_to_save") or []
            checks.fact(f"{name}: adapter_config.json fields",
                        ac.get("base_model_name_or_path") == backbone and isinstance(tm, str)
                        and set(head_modules) <= set(mts) and ac.get("r") == cfg["lora"]["r"]
                        and ac.get("lora_alpha") == cfg["lora"]["lora_alpha"] and ac.get("peft_type") == "LORA"
                        and (fan_in_fan_out is None or ac.get("fan_in_fan_out") is fan_in_fan_out),
                        f"base_model_name_or_path {ac.get('base_model_name_or_path')!r} target_modules {tm!r} "
                        f"modules_to_save {mts!r} r {ac.get('r')} lora_alpha {ac.get('lora_alpha')} task_type {ac.get('task_type')!r} "
                        f"fan_in_fan_out {ac.get('fan_in_fan_out')!r}")
    return True


def lora_b_nonzero(model):
    return any(p.abs().max().item() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def router_keeps(run, method):
    """Which end of a prompt longer than max_length the run's router reads: its config's
    `<method>.router.truncation`, else rmroute's default, keep_end (the latest turns; issue 32)."""
    meta = json.loads((run / "rmroute.json").read_text())
    router = ((meta.get("config") or {}).get(method) or {}).get("router") or {}
    return router.get("truncation") or "keep_end"


def prompt_inputs(tok, prompt, n, keeps):
    """A prompt alone as the router reads it: cut to n tokens keeping its end (keep_end: the tokenizer's
    truncation_side "left") or its start (keep_start)."""
    side = tok.truncation_side
    tok.truncation_side = "left" if keeps == "keep_end" else "right"
    try:
        return dict(tok(prompt, truncation=True, max_length=n, return_tensors="pt"))
    finally:
        tok.truncation_side = side


# ---------------------------------------------------------------------------------------------- python

def wide_head(model):
    """A reward head with std 1 weights instead of transformers' 0.02: rewards of order 10 rather than
    0.01, so that the absolute tolerance is a tight relative one too."""
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, 1.0)
        model.classifier.bias.normal_(0.0, 1.0)


def pairwise_steps(model, tok, pairs, steps, lr, batch=4, max_length=MAX_LENGTH):
    """`steps` AdamW steps of -log σ(r_chosen - r_rejected) on `pairs` (longest_first, max_length)."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for step in range(steps):
        chunk = [pairs[(step * batch + i) % len(pairs)] for i in range(batch)]
        prompts = [c["prompt"] for c in chunk]
        enc_c = tok(prompts, [c["chosen"] for c in chunk], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        enc_r = tok(prompts, [c["rejected"] for c in chunk], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        loss = -F.logsigmoid(model(**enc_c).logits[:, 0] - model(**enc_r).logits[:, 0]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(round(loss.item(), 4))
    model.eval()
    return losses


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rmroute", type=Path, default=Path("target/release/rmroute"))
    ap.add_argument("--prepared", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--backbone", default="models/all-MiniLM-L6-v2")
    ap.add_argument("--gpt2", default="tests/fixtures/tiny-gpt2-rm", help="the tiny GPT-2 reward model ('' skips the GPT-2 part)")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--python-only", action="store_true")
    args = ap.parse_args()

    torch.set_grad_enabled(True)
    checks = Checks(args.tol)
    work = args.work
    (work / "scores").mkdir(parents=True, exist_ok=True)
    backbone = args.backbone
    tok = AutoTokenizer.from_pretrained(backbone)
    rm = None if args.python_only else Rmroute(args.rmroute.resolve(), checks)

    items = pick_items(tok, args.prepared)
    items_file = work / "items.jsonl"
    with open(items_file, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps({"id": it["id"], "prompt": it["prompt"], "response": it["response"]}, ensure_ascii=False) + "\n")
    long_items = sum(it["tokens"] > MAX_LENGTH for it in items)
    print(f"{len(items)} items ({long_items} longer than {MAX_LENGTH} tokens, up to {max(it['tokens'] for it in items)}) in {items_file}")
    checks.fact("items: short and long pairs", long_items >= 3 and len(items) - long_items >= 2, f"{len(items)} items, {long_items} long")

    # ---- rmroute -> Python: tiny Baseline and BaseLoRA
    print("\n== rmroute -> Python")
    lora = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "target_modules": ["query", "key", "value", "dense"]}
    runs = {
        "baseline": {"method": "baseline", "backbone": backbone, "domains": ["oasst"], "epochs": 1, "batch_size": 8, "lr": 5e-5,
                     "max_length": MAX_LENGTH, "max_pairs": 32, "truncation": "longest_first"},
        "baselora": {"method": "baselora", "backbone": backbone, "domains": ["oasst"], "epochs": 1, "batch_size": 8, "lr": 5e-4,
                     "max_length": MAX_LENGTH, "max_pairs": 32, "truncation": "longest_first", "lora": lora},
    }
    for method, cfg in runs.items():
        if rm is None:
            print(f"  (--python-only: skipping rmroute train-baseline {method})")
            continue
        cfg_path, run = work / f"{method}.json", work / "runs" / method
        cfg_path.write_text(json.dumps(cfg, indent=2))
        if not rm.run(f"rmroute train-baseline ({method})",
                      ["train-baseline", "--config", cfg_path, "--data", args.prepared, "--out", run, "--quiet"]):
            checks.fail_rows(method, "AutoModel(RUN)", ["all"], "training failed")
            if method == "baselora":
                checks.fail_rows(method, "PeftModel", ["all"], "training failed")
            continue
        if not check_run_dir(checks, run, method, backbone, cfg):
            checks.fail_rows(method, "AutoModel(RUN)", ["all"], "not a run directory")
            continue
        loaders = []
        try:
            run_tok = AutoTokenizer.from_pretrained(str(run))
            same = all(run_tok(it["prompt"], it["response"])["input_ids"] == tok(it["prompt"], it["response"])["input_ids"] for it in items)
            checks.fact(f"{method}: AutoTokenizer(RUN) encodes as the backbone's", same)
        except Exception as e:  # noqa: BLE001
            checks.fact(f"{method}: AutoTokenizer(RUN) loads", False, repr(e)[:300])
            run_tok = tok
        try:
            loaders.append(("AutoModel(RUN)", load_seq_cls(checks, run, f"{method} AutoModel(RUN)"), run_tok))
        except Exception as e:  # noqa: BLE001
            checks.fact(f"{method}: AutoModelForSequenceClassification.from_pretrained(RUN)", False, repr(e)[:300])
            checks.fail_rows(method, "AutoModel(RUN)", ["all"], "does not load")
        if method == "baselora":
            try:
                base = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=1)
                peft_model = PeftModel.from_pretrained(base, str(run / "adapters" / "default"))
                checks.fact("baselora: adapter's lora_B is not all zero (training moved it)", lora_b_nonzero(peft_model))
                loaders.append(("PeftModel(backbone, adapters/default)", peft_model, tok))
            except Exception as e:  # noqa: BLE001
                checks.fact("baselora: PeftModel.from_pretrained(backbone, RUN/adapters/default)", False, repr(e)[:300])
                checks.fail_rows(method, "PeftModel", ["all"], "does not load")
        for loader, model, ltok in loaders:
            py = {s: python_rewards(model, ltok, items, s, MAX_LENGTH) for s in STRATEGIES}
            # max_length left to the run (its config says MAX_LENGTH)
            compare_with_rmroute(checks, rm, method, loader, py, items_file, work, run, rm_label="RUN")
            if loader.startswith("PeftModel"):
                # rmroute's own adapter through its --adapter path, on the backbone as PEFT does it
                compare_with_rmroute(checks, rm, method, loader, py, items_file, work, backbone,
                                     adapter=run / "adapters" / "default", max_length=MAX_LENGTH,
                                     rm_label="backbone --adapter")

    # ---- Python -> rmroute: a PEFT adapter and a fully fine-tuned model trained here
    print("\n== Python -> rmroute")
    train_pairs = prepared_pairs(args.prepared, ["oasst"], "train")[:20]
    checks.fact("Python training pairs", len(train_pairs) >= 8, f"{len(train_pairs)} oasst train pairs")

    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=1)
    wide_head(base)
    lcfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, lora_dropout=0.1,
                      target_modules=TARGET_REGEX, modules_to_save=["classifier", "pooler"])
    peft_model = get_peft_model(base, lcfg)
    adapted = [n for n, _ in peft_model.named_modules() if n.endswith("lora_A")]
    checks.fact("py-adapter: LoRA on the encoder's query/key/value/dense only (6 layers x 6), not the pooler",
                len(adapted) == 36 and not any("pooler" in n for n in adapted), f"{len(adapted)} adapted modules")
    losses = pairwise_steps(peft_model, tok, train_pairs, steps=5, lr=1e-3)
    print(f"  py-adapter: 5 AdamW steps, losses {losses}")
    checks.fact("py-adapter: lora_B moved from zero", lora_b_nonzero(peft_model))
    adapter_dir = work / "py-adapter"
    peft_model.save_pretrained(str(adapter_dir))
    in_memory = {s: python_rewards(peft_model, tok, items, s, MAX_LENGTH) for s in STRATEGIES}
    reloaded = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=1), str(adapter_dir))
    py_adapter = {s: python_rewards(reloaded, tok, items, s, MAX_LENGTH) for s in STRATEGIES}
    for s in STRATEGIES:
        checks.compare("py-adapter", "in memory vs reloaded (Python only)", s, "batch1", in_memory[s]["batch1"], py_adapter[s]["batch1"])
        checks.compare("py-adapter", "batch1 vs padded (Python only)", s, "padded", py_adapter[s]["batch1"], py_adapter[s]["padded"])
    if rm is not None:
        compare_with_rmroute(checks, rm, "py-adapter", "PeftModel(backbone, py-adapter)", py_adapter, items_file, work,
                             backbone, adapter=adapter_dir, max_length=MAX_LENGTH, rm_label="backbone --adapter")

    torch.manual_seed(1)
    full = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=1)
    wide_head(full)
    losses = pairwise_steps(full, tok, train_pairs, steps=3, lr=5e-5)
    print(f"  py-full: 3 AdamW steps, losses {losses}")
    full_dir = work / "py-full"
    full.save_pretrained(str(full_dir))
    AutoTokenizer.from_pretrained(backbone).save_pretrained(str(full_dir))
    full_reloaded = load_seq_cls(checks, full_dir, "py-full")
    py_full = {s: python_rewards(full_reloaded, tok, items, s, MAX_LENGTH) for s in STRATEGIES}
    for s in STRATEGIES:
        checks.compare("py-full", "batch1 vs padded (Python only)", s, "padded", py_full[s]["batch1"], py_full[s]["padded"])
    if rm is not None:
        compare_with_rmroute(checks, rm, "py-full", "AutoModel(py-full)", py_full, items_file, work,
                             full_dir, max_length=MAX_LENGTH, rm_label="DIR")

    if rm is not None:
        rodos_round_trip(checks, rm, args.prepared, work, backbone, items, items_file)
        arliss_round_trip(checks, rm, args.prepared, work, backbone, items, items_file)
        dmoerm_round_trip(checks, rm, args.prepared, work, backbone, items, items_file)

    if args.gpt2:
        gpt2_round_trip(checks, rm, args.prepared, work, args.gpt2)

    sys.exit(0 if checks.report() else 1)


def rodos_round_trip(checks, rm, prepared, work, backbone, items, items_file):
    """A tiny RODOS run: transformers loads its router (num_labels = domains, id2label naming them) and
    routes every prompt where `rmroute score` does; each domain's reward model gives rmroute's reward."""
    print("\n== RODOS: router and domain models in transformers")
    cfg = {"method": "rodos", "backbone": backbone, "domains": ["hellaswag", "oasst"], "epochs": 1, "batch_size": 8,
           "lr": 5e-5, "max_length": MAX_LENGTH, "max_pairs": 24, "truncation": "longest_first",
           "rodos": {"router": {"epochs": 2, "lr": 1e-4}}}
    cfg_path, run = work / "rodos.json", work / "runs" / "rodos"
    cfg_path.write_text(json.dumps(cfg, indent=2))
    if not rm.run("rmroute train-rodos", ["train-rodos", "--config", cfg_path, "--data", prepared, "--out", run, "--quiet"]):
        return
    out = work / "rodos-scores.jsonl"
    if not rm.run("rmroute score (rodos)", ["score", "--model", run, "--input", items_file, "--out", out, "--quiet"]):
        return
    scored = {str(r["id"]): r for r in read_jsonl(out)}
    router = AutoModelForSequenceClassification.from_pretrained(str(run / "stages" / "router")).eval()
    labels = [router.config.id2label[i] for i in range(router.config.num_labels)]
    checks.fact("rodos: router config names the domains", labels == cfg["domains"], f"id2label {labels}")
    tok = AutoTokenizer.from_pretrained(str(run / "stages" / "router"))
    models = {d: AutoModelForSequenceClassification.from_pretrained(str(run / "stages" / f"rm-{d}")).eval() for d in labels}
    keeps = router_keeps(run, "rodos")
    same_route, deltas = 0, []
    with torch.no_grad():
        for it in items:
            enc = prompt_inputs(tok, it["prompt"], MAX_LENGTH, keeps)
            domain = labels[int(router(**enc).logits[0].argmax())]
            got = scored[str(it["id"])]
            same_route += domain == got.get("domain")
            pair = tok(it["prompt"], it["response"], truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
            deltas.append(abs(float(models[got["domain"]](**pair).logits[0, 0]) - float(got["reward"])))
    checks.fact("rodos: transformers' router picks rmroute's domain for every prompt", same_route == len(items),
                f"{same_route} of {len(items)} (long prompts cut {keeps})")
    checks.fact("rodos: the routed domain's model in transformers gives rmroute's reward", max(deltas) <= checks.tol,
                f"max |Δ| {max(deltas):.2e}")


def arliss_round_trip(checks, rm, prepared, work, backbone, items, items_file):
    """A tiny ARLISS run: each adapter (a reward adapter per domain, the router adapter with a classifier
    over the domains) loads with PEFT onto the untouched backbone; the router adapter picks rmroute's
    domain for every prompt, and the routed domain's adapter gives rmroute's reward, in both of rmroute's
    switching modes."""
    print("\n== ARLISS: PEFT adapters on the backbone")
    cfg = {"method": "arliss", "backbone": backbone, "domains": ["hellaswag", "oasst"], "epochs": 1, "batch_size": 8,
           "lr": 1e-4, "max_length": MAX_LENGTH, "max_pairs": 24, "truncation": "longest_first",
           "lora": {"r": 12, "lora_alpha": 768, "lora_dropout": 0.1, "target_modules": ["query", "key", "value", "dense"]},
           "arliss": {"router": {"epochs": 2, "lr": 1e-4}}}
    cfg_path, run = work / "arliss.json", work / "runs" / "arliss"
    cfg_path.write_text(json.dumps(cfg, indent=2))
    if not rm.run("rmroute train-arliss", ["train-arliss", "--config", cfg_path, "--data", prepared, "--out", run, "--quiet"]):
        return
    scored = {}
    for mode in ("one_pass", "sequential"):
        out = work / f"arliss-scores-{mode}.jsonl"
        if not rm.run(f"rmroute score (arliss, {mode})",
                      ["score", "--model", run, "--input", items_file, "--out", out, "--switching", mode, "--quiet"]):
            return
        scored[mode] = {str(r["id"]): r for r in read_jsonl(out)}
    copies = [p for p in run.rglob("*") if p.name in ("model.safetensors", "pytorch_model.bin")]
    checks.fact("arliss: the run holds no copy of the backbone", not copies, ", ".join(map(str, copies)))
    labels = cfg["domains"]
    tok = AutoTokenizer.from_pretrained(backbone)
    router = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=len(labels)), str(run / "stages" / "router")
    ).eval()
    models = {d: PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=1),
                                           str(run / "stages" / f"rm-{d}")).eval() for d in labels}
    for d, m in models.items():
        checks.fact(f"arliss: rm-{d} loads as a LoRA adapter with a trained head", lora_b_nonzero(m))
    keeps = router_keeps(run, "arliss")
    with torch.no_grad():
        for mode, got_all in scored.items():
            same_route, deltas = 0, []
            for it in items:
                enc = prompt_inputs(tok, it["prompt"], MAX_LENGTH, keeps)
                domain = labels[int(router(**enc).logits[0].argmax())]
                got = got_all[str(it["id"])]
                same_route += domain == got.get("domain")
                pair = tok(it["prompt"], it["response"], truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
                deltas.append(abs(float(models[got["domain"]](**pair).logits[0, 0]) - float(got["reward"])))
            checks.fact(f"arliss ({mode}): PEFT's router adapter picks rmroute's domain for every prompt",
                        same_route == len(items), f"{same_route} of {len(items)} (long prompts cut {keeps})")
            checks.fact(f"arliss ({mode}): the routed domain's adapter in PEFT gives rmroute's reward",
                        max(deltas) <= checks.tol, f"max |Δ| {max(deltas):.2e}")


def dmoerm_round_trip(checks, rm, prepared, work, backbone, items, items_file):
    """A tiny DMoERM run: transformers loads the router over the tasks and each task's stage-1 reward
    model; PEFT loads each capability expert onto it; the experts' pooled vectors through the saved MLP
    (Linear → PReLU → Linear, written out in torch) give rmroute's reward. A task without aspect labels
    (hellaswag) is its stage-1 model."""
    print("\n== DMoERM: router, stage-1 models, PEFT experts and the aggregator in torch")
    from safetensors.torch import load_file
    cfg = {"method": "dmoerm", "backbone": backbone, "domains": ["hellaswag", "oasst"], "epochs": 1, "batch_size": 8,
           "lr": 1e-4, "max_length": MAX_LENGTH, "max_pairs": 40, "truncation": "longest_first",
           "lora": {"r": 12, "lora_alpha": 768, "lora_dropout": 0.1, "target_modules": ["query", "key", "value", "dense"]},
           "dmoerm": {"router": {"epochs": 2, "lr": 1e-4}, "aspects": ["helpfulness", "quality"], "min_aspect_pairs": 5,
                      "aggregator": {"epochs": 3, "lr": 1e-3}}}
    cfg_path, run = work / "dmoerm.json", work / "runs" / "dmoerm"
    cfg_path.write_text(json.dumps(cfg, indent=2))
    if not rm.run("rmroute train-dmoerm", ["train-dmoerm", "--config", cfg_path, "--data", prepared, "--out", run, "--quiet"]):
        return
    out = work / "dmoerm-scores.jsonl"
    if not rm.run("rmroute score (dmoerm)", ["score", "--model", run, "--input", items_file, "--out", out, "--quiet"]):
        return
    scored = {str(r["id"]): r for r in read_jsonl(out)}
    stages = run / "stages"
    router = AutoModelForSequenceClassification.from_pretrained(str(stages / "router")).eval()
    labels = [router.config.id2label[i] for i in range(router.config.num_labels)]
    checks.fact("dmoerm: router config names the tasks", labels == cfg["domains"], f"id2label {labels}")
    tok = AutoTokenizer.from_pretrained(str(stages / "router"))
    tasks = {}
    for task in labels:
        rm_dir = str(stages / f"rm-{task}")
        agg_dir = stages / f"aggregator-{task}"
        if not agg_dir.is_dir():
            tasks[task] = (AutoModelForSequenceClassification.from_pretrained(rm_dir).eval(), None, None)
            continue
        order = json.loads((agg_dir / "aggregator.json").read_text())
        experts = [PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(rm_dir), str(stages / a)).eval()
                   for a in order["adapters"]]
        for a, m in zip(order["adapters"], experts):
            checks.fact(f"dmoerm: {a} loads as a LoRA adapter on rm-{task} with a trained head", lora_b_nonzero(m))
        tasks[task] = (None, experts, load_file(str(agg_dir / "aggregator.safetensors")))
    checks.fact("dmoerm: oasst has experts and an aggregator, hellaswag (no aspect labels) is one model",
                tasks["oasst"][1] is not None and tasks["hellaswag"][1] is None)
    keeps = router_keeps(run, "dmoerm")
    same_route, deltas = 0, []
    with torch.no_grad():
        for it in items:
            enc = prompt_inputs(tok, it["prompt"], MAX_LENGTH, keeps)
            task = labels[int(router(**enc).logits[0].argmax())]
            got = scored[str(it["id"])]
            same_route += task == got.get("domain")
            pair = tok(it["prompt"], it["response"], truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
            single, experts, agg = tasks[got["domain"]]
            if experts is None:
                reward = float(single(**pair).logits[0, 0])
            else:
                pooled = torch.cat([m.base_model.model.bert(**pair).pooler_output for m in experts], dim=-1)
                h = torch.nn.functional.linear(pooled, agg["fc1.weight"], agg["fc1.bias"])
                h = torch.nn.functional.prelu(h, agg["prelu.weight"])
                reward = float(torch.nn.functional.linear(h, agg["fc2.weight"], agg["fc2.bias"])[0, 0])
            deltas.append(abs(reward - float(got["reward"])))
    checks.fact("dmoerm: transformers' router picks rmroute's task for every prompt", same_route == len(items),
                f"{same_route} of {len(items)} (long prompts cut {keeps})")
    checks.fact("dmoerm: the routed task's model (experts and MLP in torch) gives rmroute's reward",
                max(deltas) <= checks.tol, f"max |Δ| {max(deltas):.2e}")


# ------------------------------------------------------------------------------------------------ GPT-2

GPT2_MAX_LENGTH = 48  # under the fixture's n_positions 64, so that short pairs fit and long ones are cut
GPT2_LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "target_modules": ["c_attn", "c_proj"]}
GPT2_PADDING = ("right", "left")


def gpt2_slots(n):
    """pick_items' slots by GPT-2 token counts (a decoder's pair is plain concatenation: nothing added)."""
    return [
        ("short", 3, lambda p, r: p + r <= n - 8),
        ("fits", 1, lambda p, r: n - 4 <= p + r <= n),
        ("just-over", 1, lambda p, r: n < p + r <= n + 8),
        ("long-long", 3, lambda p, r: p >= 40 and r >= 40 and p + r <= 1500),
        ("short-prompt-long-response", 1, lambda p, r: p <= 15 and r >= 60),
        ("long-prompt-short-response", 1, lambda p, r: p >= 60 and r <= 15),
    ]


def gpt2_tokenizer(path):
    """The fixture's tokenizer with its pad token set to config.json's pad_token_id (eos 511): GPT-2's
    tokenizer has none, and transformers reads the reward at the last token that is not that id."""
    tok = AutoTokenizer.from_pretrained(str(path))
    pad_id = json.loads((Path(path) / "config.json").read_text())["pad_token_id"]
    tok.pad_token = tok.convert_ids_to_tokens(pad_id)
    assert tok.pad_token_id == pad_id
    return tok


def decoder_keep_prompt_end(tok, prompt, response, n):
    """rmroute's keep_prompt_end for a tokenizer that adds nothing around a pair (GPT-2): the end of the
    prompt, the start of the response, the response getting at least half of the budget."""
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"]
    if len(p) + len(r) > n:
        keep_r = min(len(r), max(max(n - len(p), 0), n // 2))
        keep_p = min(len(p), n - keep_r)
        p, r = p[len(p) - keep_p :], r[:keep_r]
    return p + r


def decoder_batch(tok, items, strategy, n, side):
    """One padded batch on `side`, as model kwargs. longest_first is the tokenizer's own
    `tok(prompts, responses, truncation=True, padding=True)` with its padding_side set. A left-padded
    batch gets position ids counted from the attention mask, as generate() passes them: GPT2Model's
    default (arange) would shift a left-padded row's positions (see gpt2_round_trip's note)."""
    if strategy == "longest_first":
        tok.padding_side = side
        try:
            enc = dict(tok([it["prompt"] for it in items], [it["response"] for it in items], truncation=True,
                           max_length=n, padding=True, return_tensors="pt"))
        finally:
            tok.padding_side = "right"
    else:
        rows = [decoder_keep_prompt_end(tok, it["prompt"], it["response"], n) for it in items]
        width = max(len(r) for r in rows)
        fill = lambda row, pad: (pad * (width - len(row)) + row) if side == "left" else (row + pad * (width - len(row)))  # noqa: E731
        enc = {"input_ids": torch.tensor([fill(r, [tok.pad_token_id]) for r in rows]),
               "attention_mask": torch.tensor([fill([1] * len(r), [0]) for r in rows])}
    if side == "left":
        enc["position_ids"] = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return enc


def decoder_single(tok, item, strategy, n):
    if strategy == "longest_first":
        return dict(tok(item["prompt"], item["response"], truncation=True, max_length=n, return_tensors="pt"))
    ids = decoder_keep_prompt_end(tok, item["prompt"], item["response"], n)
    return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}


@torch.no_grad()
def decoder_rewards(model, tok, items, strategy, n):
    """{"batch1", "padded right", "padded left"}: id -> reward."""
    model.eval()
    out = {"batch1": {it["id"]: float(model(**decoder_single(tok, it, strategy, n)).logits[0, 0]) for it in items}}
    for side in GPT2_PADDING:
        logits = model(**decoder_batch(tok, items, strategy, n, side)).logits[:, 0]
        out[f"padded {side}"] = {it["id"]: float(v) for it, v in zip(items, logits)}
    return out


@torch.no_grad()
def left_default_positions_shift(model, tok, items, n):
    """max |reward difference| between a left-padded batch with GPT2Model's default position ids and
    each row alone: what transformers itself does without generate()'s position ids (not a check)."""
    tok.padding_side = "left"
    try:
        enc = tok([it["prompt"] for it in items], [it["response"] for it in items], truncation=True, max_length=n,
                  padding=True, return_tensors="pt")
    finally:
        tok.padding_side = "right"
    logits = model(**enc).logits[:, 0]
    alone = [float(model(**decoder_single(tok, it, "longest_first", n)).logits[0, 0]) for it in items]
    return max(abs(float(v) - a) for v, a in zip(logits, alone))


def peft_loads_every_tensor(checks, name, peft_model, adapter_dir, base_head=None):
    """The adapter as PEFT holds it (get_peft_model_state_dict, the keys save_pretrained writes) against
    adapter_model.safetensors: the same keys (nothing missing, nothing unexpected, whatever warnings PEFT
    gave) and the same tensors, the reward head (score.weight, modules_to_save) among them; the head
    differs from the base's (base_head) when given."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file
    saved = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    held = get_peft_model_state_dict(peft_model)
    missing, unexpected = sorted(set(saved) - set(held)), sorted(set(held) - set(saved))
    worst = max((float((saved[k].float() - held[k].float()).abs().max()) for k in saved if k in held
                 and saved[k].shape == held[k].shape), default=math.inf)
    shapes = [k for k in saved if k in held and saved[k].shape != held[k].shape]
    head = [k for k in saved if k.endswith("score.weight")]
    checks.fact(f"{name}: PEFT holds every tensor of adapter_model.safetensors, the head score.weight among them",
                not missing and not unexpected and not shapes and worst == 0.0 and len(head) == 1,
                f"{len(saved)} tensors; not loaded {missing[:4]} not in the file {unexpected[:4]} shapes differ {shapes[:4]} "
                f"max |Δ| {worst:.2e} heads {head}")
    adapted = sorted(n[: -len(".lora_A")] for n, _ in peft_model.named_modules() if n.endswith(".lora_A"))
    checks.fact(f"{name}: LoRA on every c_attn/c_proj (attn and mlp, 2 layers: 6 modules)",
                len(adapted) == 6 and all(n.endswith(("attn.c_attn", "attn.c_proj", "mlp.c_proj")) for n in adapted),
                f"{len(adapted)} adapted: {', '.join(n.split('model.', 1)[-1] for n in adapted)}")
    if base_head is not None and head:
        checks.fact(f"{name}: the adapter's head is its own (not the base's score.weight)",
                    saved[head[0]].shape == base_head.shape and not torch.equal(saved[head[0]], base_head))
    checks.fact(f"{name}: lora_B is not all zero (training moved it)", lora_b_nonzero(peft_model))


def check_adapter_config(checks, name, adapter_dir, gpt2):
    ac = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    checks.fact(f"{name}: adapter_config.json fan_in_fan_out true, modules_to_save [score], r/alpha, base",
                ac.get("fan_in_fan_out") is True and (ac.get("modules_to_save") or []) == ["score"]
                and ac.get("r") == GPT2_LORA["r"] and ac.get("lora_alpha") == GPT2_LORA["lora_alpha"]
                and ac.get("base_model_name_or_path") == gpt2 and ac.get("peft_type") == "LORA",
                f"fan_in_fan_out {ac.get('fan_in_fan_out')!r} modules_to_save {ac.get('modules_to_save')!r} r {ac.get('r')} "
                f"lora_alpha {ac.get('lora_alpha')} base {ac.get('base_model_name_or_path')!r} task_type {ac.get('task_type')!r}")


def gpt2_base(gpt2, num_labels=1):
    if num_labels == 1:
        return AutoModelForSequenceClassification.from_pretrained(gpt2)
    return AutoModelForSequenceClassification.from_pretrained(gpt2, num_labels=num_labels, ignore_mismatched_sizes=True)


def gpt2_round_trip(checks, rm, prepared, work, gpt2):
    """GPT-2 (GPT2ForSequenceClassification, a decoder: the reward at the last real token, LoRA on Conv1D
    c_attn/c_proj with fan_in_fan_out) on the tiny random fixture: a BaseLoRA run (merged in RUN, the
    adapter in RUN/adapters/default), an ARLISS run (an adapter per domain in stages/rm-<domain>, a
    router adapter), and a PEFT adapter trained here, each against `rmroute score`, right- and left-padded."""
    n = GPT2_MAX_LENGTH
    print(f"\n== GPT-2 ({gpt2}, max_length {n})")
    tok = gpt2_tokenizer(gpt2)
    base_head = load_seq_cls(checks, gpt2, "gpt2 fixture").score.weight.detach().clone()
    items = pick_items(tok, prepared, slots=gpt2_slots(n), domains=("oasst", "anthropic", "hellaswag"), added=0)
    items_file = work / "gpt2-items.jsonl"
    with open(items_file, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps({"id": it["id"], "prompt": it["prompt"], "response": it["response"]}, ensure_ascii=False) + "\n")
    long_items = sum(it["tokens"] > n for it in items)
    print(f"{len(items)} items ({long_items} longer than {n} GPT-2 tokens, up to {max(it['tokens'] for it in items)}) in {items_file}")
    checks.fact("gpt2 items: short and long pairs", long_items >= 3 and len(items) - long_items >= 3,
                f"{len(items)} items, {long_items} long")
    pair = tok(items[0]["prompt"], items[0]["response"])["input_ids"]
    checks.fact("gpt2: tokenizer(prompt, response) is plain concatenation",
                pair == tok(items[0]["prompt"])["input_ids"] + tok(items[0]["response"])["input_ids"])
    with torch.no_grad():
        shift = left_default_positions_shift(gpt2_base(gpt2).eval(), tok, items, n)
    print(f"  note: a left-padded batch with GPT2Model's default position ids is off its rows alone by up to "
          f"{shift:.2e} in transformers itself; the left-padded batches here pass generate()'s "
          f"(attention_mask.cumsum(-1) - 1).clamp(min=0)")

    if rm is not None:
        gpt2_baselora(checks, rm, prepared, work, gpt2, tok, items, items_file, base_head)
        gpt2_arliss(checks, rm, prepared, work, gpt2, tok, items, items_file, base_head)

    # ---- Python -> rmroute: a PEFT LoRA adapter trained here on the fixture
    train_pairs = prepared_pairs(prepared, ["oasst"], "train")[:20]
    torch.manual_seed(2)
    base = gpt2_base(gpt2)
    with torch.no_grad():
        base.score.weight.normal_(0.0, 1.0)  # as wide_head: rewards of order 1-10
    lcfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=GPT2_LORA["r"], lora_alpha=GPT2_LORA["lora_alpha"],
                      lora_dropout=GPT2_LORA["lora_dropout"], target_modules=GPT2_LORA["target_modules"],
                      fan_in_fan_out=True, modules_to_save=["score"])
    peft_model = get_peft_model(base, lcfg)
    losses = pairwise_steps(peft_model, tok, train_pairs, steps=5, lr=1e-2, max_length=n)
    print(f"  gpt2-py-adapter: 5 AdamW steps, losses {losses}")
    adapter_dir = work / "gpt2-py-adapter"
    peft_model.save_pretrained(str(adapter_dir))
    in_memory = {s: decoder_rewards(peft_model, tok, items, s, n) for s in STRATEGIES}
    reloaded = PeftModel.from_pretrained(gpt2_base(gpt2), str(adapter_dir)).eval()
    peft_loads_every_tensor(checks, "gpt2-py-adapter", reloaded, adapter_dir, base_head)
    py = {s: decoder_rewards(reloaded, tok, items, s, n) for s in STRATEGIES}
    for s in STRATEGIES:
        checks.compare("gpt2-py-adapter", "in memory vs reloaded (Python only)", s, "batch1", in_memory[s]["batch1"], py[s]["batch1"])
        for side in GPT2_PADDING:
            checks.compare("gpt2-py-adapter", "batch1 vs padded (Python only)", s, f"padded {side}",
                           py[s]["batch1"], py[s][f"padded {side}"])
    if rm is not None:
        compare_with_rmroute(checks, rm, "gpt2-py-adapter", "PeftModel(gpt2, py-adapter)", py, items_file, work,
                             gpt2, adapter=adapter_dir, max_length=n, rm_label="gpt2 --adapter")


def gpt2_baselora(checks, rm, prepared, work, gpt2, tok, items, items_file, base_head):
    """rmroute's BaseLoRA on GPT-2: transformers loads RUN (merged) and PEFT loads RUN/adapters/default on
    the fixture; both give `rmroute score --model RUN` (and --adapter default, and the fixture with
    --adapter DIR) rewards, alone and padded on either side."""
    n, method = GPT2_MAX_LENGTH, "gpt2-baselora"
    cfg = {"method": "baselora", "backbone": gpt2, "domains": ["oasst"], "epochs": 1, "batch_size": 8, "lr": 5e-3,
           "max_length": n, "max_pairs": 32, "truncation": "longest_first", "lora": GPT2_LORA}
    cfg_path, run = work / f"{method}.json", work / "runs" / method
    cfg_path.write_text(json.dumps(cfg, indent=2))
    if not rm.run(f"rmroute train-baseline ({method})",
                  ["train-baseline", "--config", cfg_path, "--data", prepared, "--out", run, "--quiet"]):
        checks.fail_rows(method, "AutoModel(RUN)", ["all"], "training failed")
        checks.fail_rows(method, "PeftModel", ["all"], "training failed")
        return
    if not check_run_dir(checks, run, "baselora", gpt2, cfg, head_modules=("score",), fan_in_fan_out=True):
        checks.fail_rows(method, "AutoModel(RUN)", ["all"], "not a run directory")
        return
    hf = json.loads((run / "config.json").read_text())
    checks.fact(f"{method}: config.json pad_token_id is the tokenizer's pad (eos)", hf.get("pad_token_id") == tok.pad_token_id,
                f"pad_token_id {hf.get('pad_token_id')!r}, eos {hf.get('eos_token_id')!r}")
    loaders = []
    try:
        run_tok = gpt2_tokenizer(run)
        checks.fact(f"{method}: AutoTokenizer(RUN) encodes as the fixture's",
                    all(run_tok(it["prompt"], it["response"])["input_ids"] == tok(it["prompt"], it["response"])["input_ids"] for it in items))
        loaders.append(("AutoModel(RUN)", load_seq_cls(checks, run, f"{method} AutoModel(RUN)"), run_tok, [(run, None, None, "RUN")]))
    except Exception as e:  # noqa: BLE001
        checks.fact(f"{method}: AutoTokenizer/AutoModelForSequenceClassification.from_pretrained(RUN)", False, repr(e)[:300])
        checks.fail_rows(method, "AutoModel(RUN)", ["all"], "does not load")
    adapter_dir = run / "adapters" / "default"
    try:
        peft_model = PeftModel.from_pretrained(gpt2_base(gpt2), str(adapter_dir)).eval()
        peft_loads_every_tensor(checks, method, peft_model, adapter_dir, base_head)
        loaders.append(("PeftModel(gpt2, adapters/default)", peft_model, tok,
                        [(run, "default", None, "RUN --adapter default"), (gpt2, adapter_dir, n, "gpt2 --adapter")]))
    except Exception as e:  # noqa: BLE001
        checks.fact(f"{method}: PeftModel.from_pretrained(gpt2, RUN/adapters/default)", False, repr(e)[:300])
        checks.fail_rows(method, "PeftModel", ["all"], "does not load")
    for loader, model, ltok, targets in loaders:
        py = {s: decoder_rewards(model, ltok, items, s, n) for s in STRATEGIES}
        for model_arg, adapter, max_length, rm_label in targets:
            compare_with_rmroute(checks, rm, method, loader, py, items_file, work, model_arg, adapter=adapter,
                                 max_length=max_length, rm_label=rm_label)


def gpt2_arliss(checks, rm, prepared, work, gpt2, tok, items, items_file, base_head):
    """rmroute's ARLISS on GPT-2: each domain's reward adapter (the path rmroute.json's parts give) loads
    with PEFT on the fixture and gives `rmroute score --model FIXTURE --adapter DIR` rewards (an ARLISS
    run itself takes no --adapter: it routes); PEFT's router adapter picks the domain `rmroute score
    --model RUN` picks and that domain's adapter gives its reward, in both switching modes."""
    n, method = GPT2_MAX_LENGTH, "gpt2-arliss"
    domains = ["hellaswag", "oasst"]
    cfg = {"method": "arliss", "backbone": gpt2, "domains": domains, "epochs": 1, "batch_size": 8, "lr": 5e-3,
           "max_length": n, "max_pairs": 24, "truncation": "longest_first", "lora": GPT2_LORA,
           "arliss": {"router": {"epochs": 2}}}
    cfg_path, run = work / f"{method}.json", work / "runs" / method
    cfg_path.write_text(json.dumps(cfg, indent=2))
    if not rm.run(f"rmroute train-arliss ({method})", ["train-arliss", "--config", cfg_path, "--data", prepared, "--out", run, "--quiet"]):
        for d in domains:
            checks.fail_rows(f"{method} rm-{d}", "PeftModel", ["all"], "training failed")
        return
    meta = json.loads((run / "rmroute.json").read_text())
    parts = {p.get("domain") or p.get("role"): run / p["path"] for p in meta.get("parts", [])}
    checks.fact(f"{method}: rmroute.json names a reward adapter per domain and a router",
                set(parts) == set(domains) | {"router"} and all((p / "adapter_model.safetensors").is_file() for p in parts.values()),
                ", ".join(f"{k}: {v.relative_to(run)}" for k, v in parts.items()))
    copies = [p for p in run.rglob("*") if p.name in ("model.safetensors", "pytorch_model.bin")]
    checks.fact(f"{method}: the run holds no copy of the base", not copies, ", ".join(map(str, copies)))
    models = {}
    for d in domains:
        if d not in parts:
            checks.fail_rows(f"{method} rm-{d}", "PeftModel", ["all"], "no adapter for the domain")
            continue
        check_adapter_config(checks, f"{method} rm-{d}", parts[d], gpt2)
        try:
            models[d] = PeftModel.from_pretrained(gpt2_base(gpt2), str(parts[d])).eval()
        except Exception as e:  # noqa: BLE001
            checks.fact(f"{method}: PeftModel.from_pretrained(gpt2, {parts[d].relative_to(run)})", False, repr(e)[:300])
            checks.fail_rows(f"{method} rm-{d}", "PeftModel", ["all"], "does not load")
            continue
        peft_loads_every_tensor(checks, f"{method} rm-{d}", models[d], parts[d], base_head)
        py = {s: decoder_rewards(models[d], tok, items, s, n) for s in STRATEGIES}
        compare_with_rmroute(checks, rm, f"{method} rm-{d}", f"PeftModel(gpt2, {parts[d].relative_to(run)})", py, items_file,
                             work, gpt2, adapter=parts[d], max_length=n, rm_label="gpt2 --adapter")
    if "router" not in parts or set(models) != set(domains):
        return
    check_adapter_config(checks, f"{method} router", parts["router"], gpt2)
    router = PeftModel.from_pretrained(gpt2_base(gpt2, num_labels=len(domains)), str(parts["router"])).eval()
    peft_loads_every_tensor(checks, f"{method} router", router, parts["router"])
    keeps = router_keeps(run, "arliss")
    for mode in ("one_pass", "sequential"):
        out = work / f"{method}-scores-{mode}.jsonl"
        if not rm.run(f"rmroute score ({method}, {mode})",
                      ["score", "--model", run, "--input", items_file, "--out", out, "--switching", mode, "--quiet"]):
            continue
        got_all = {str(r["id"]): r for r in read_jsonl(out)}
        same_route, deltas = 0, []
        routes = {d: sum(got_all[str(it["id"])].get("domain") == d for it in items) for d in domains}
        with torch.no_grad():
            for it in items:
                enc = prompt_inputs(tok, it["prompt"], n, keeps)
                domain = domains[int(router(**enc).logits[0].argmax())]
                got = got_all[str(it["id"])]
                same_route += domain == got.get("domain")
                pair = decoder_single(tok, it, "longest_first", n)
                deltas.append(abs(float(models[got["domain"]](**pair).logits[0, 0]) - float(got["reward"])))
        checks.fact(f"{method} ({mode}): PEFT's router adapter picks rmroute's domain for every prompt",
                    same_route == len(items), f"{same_route} of {len(items)} (long prompts cut {keeps}; rmroute's routes {routes})")
        checks.fact(f"{method} ({mode}): the routed domain's adapter in PEFT gives rmroute's reward",
                    max(deltas) <= checks.tol, f"max |Δ| {max(deltas):.2e}")


if __name__ == "__main__":
    main()
