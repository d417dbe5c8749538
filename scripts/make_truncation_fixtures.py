#!/usr/bin/env python3
"""Makes tests/fixtures/truncation.json: transformers' token ids for real (prompt, response) pairs cut to
max_length 32, 64 and 128 by two strategies, for rmroute's truncation tests.

How to run (from the repository root; no torch needed, nothing is fetched from a model hub):

    scripts/fetch-models.sh                       # models/all-MiniLM-L6-v2, if missing
    python3 -m venv /tmp/tokvenv
    /tmp/tokvenv/bin/pip install transformers tokenizers sentencepiece protobuf
    HF_HUB_OFFLINE=1 /tmp/tokvenv/bin/python scripts/make_truncation_fixtures.py
        [--data data/sample] [--tiny-spm ../shared/models/fixtures/tiny-spm] [--out tests/fixtures/truncation.json]

Tokenizers: models/all-MiniLM-L6-v2 (BERT WordPiece; its tokenizer.json has truncation and padding to 128
built in, overridden here by padding=False and an explicit max_length) and the DeBERTa-v3-style
../shared/models/fixtures/tiny-spm (checked against its tokenizer_ref.json first).

Pairs: read from the raw files in data/sample/ with prepare's conversion rules (anthropic: prompt = the
transcript up to and including the last "\\n\\nAssistant:", response = the trimmed final Assistant turn of
"chosen"; oasst: prompt = the conversation from the tree root as "\\n\\nHuman: …\\n\\nAssistant: …" ending in
"\\n\\nAssistant:", response = a trimmed assistant reply), then picked deterministically by their MiniLM
token counts (file order, first match per slot): long prompt + long response (4), short prompt + long
response, long prompt + short response, a medium pair (cut at 32 and 64, not at 128) and a short pair
(never cut). Texts are capped in characters to keep the file small.

Strategies (token types: 0 up to and including the first [SEP], 1 after):
  longest_first    tok(prompt, response, truncation=True, max_length=N, padding=False), transformers'
                   default, done by the tokenizers library. Note: it is NOT "one token at a time off the
                   longer side, ties from the second": with budget = N - 3, the shorter side (the prompt
                   when equal) keeps min(its length, budget // 2) tokens from its start and the longer side
                   the rest, so on an odd budget the extra token goes to the originally longer side. The
                   script checks its output against that rule and counts where one-at-a-time would differ.
  keep_prompt_end  written here from rmroute's rule, independently of transformers' truncation:
                   full = tok(prompt, response); kept as is if len(full) <= N. Else p, r = the ids of
                   prompt and response without special tokens, budget = N - 3,
                   keep_r = min(len(r), max(max(budget - len(p), 0), budget // 2)),
                   keep_p = min(len(p), budget - keep_r),
                   ids = [CLS] + p[len(p) - keep_p:] + [SEP] + r[:keep_r] + [SEP].
"""

import argparse
import gzip
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import tokenizers  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MAX_LENGTHS = [32, 64, 128]
STRATEGIES = ["longest_first", "keep_prompt_end"]
ASSISTANT = "\n\nAssistant:"
MAX_CHARS = 1100  # per text, to keep the fixture under ~300 KB
LONG = 130  # MiniLM tokens: longer than the largest max_length on its own


def open_text(path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def anthropic_pairs(data):
    """(id, prompt, response) from anthropic/**/*.jsonl[.gz], the chosen transcript of each line."""
    files = sorted(p for p in (data / "anthropic").rglob("*") if p.name.endswith((".jsonl", ".jsonl.gz")))
    for path in files:
        rel = path.relative_to(data / "anthropic").as_posix()
        for n, line in enumerate(open_text(path), start=1):
            if not line.strip():
                continue
            chosen = json.loads(line).get("chosen")
            if not isinstance(chosen, str) or ASSISTANT not in chosen:
                continue
            at = chosen.rfind(ASSISTANT) + len(ASSISTANT)
            prompt, response = chosen[:at], chosen[at:].strip()
            if response:
                yield f"anthropic/{rel}/{n}/chosen", prompt, response


def oasst_pairs(data):
    """(id, prompt, response) for every English, kept assistant reply in oasst/**/*.jsonl[.gz] (flat form)."""
    files = sorted(p for p in (data / "oasst").rglob("*") if p.name.endswith((".jsonl", ".jsonl.gz")))
    for path in files:
        msgs = [json.loads(line) for line in open_text(path) if line.strip()]
        if not msgs or "message_id" not in msgs[0]:
            continue  # tree exports: not in data/sample
        by_id = {m["message_id"]: m for m in msgs}

        def kept(m):
            return m.get("lang") == "en" and m.get("deleted") is not True and m.get("review_result") is not False

        for m in msgs:
            if m.get("role") != "assistant" or not kept(m) or not m["text"].strip():
                continue
            chain, cur, ok = [], by_id.get(m.get("parent_id")), True
            while cur is not None:
                if not kept(cur):
                    ok = False
                    break
                chain.append(cur)
                cur = by_id.get(cur.get("parent_id")) if cur.get("parent_id") else None
            if not ok or not chain or chain[0]["role"] != "prompter":
                continue
            prompt = "".join(
                ("\n\nAssistant: " if c["role"] == "assistant" else "\n\nHuman: ") + c["text"].strip()
                for c in reversed(chain)
            ) + ASSISTANT
            yield f"oasst/{chain[0]['message_id']}/{m['message_id']}", prompt, m["text"].strip()


SLOTS = [
    # name, source, predicate on (prompt tokens, response tokens) counted by MiniLM without specials
    ("long-long-1", "anthropic", lambda p, r: p >= LONG and r >= LONG),
    ("long-long-2", "anthropic", lambda p, r: p >= LONG and r >= LONG),
    ("long-long-3", "oasst", lambda p, r: p >= LONG and r >= LONG),
    ("long-long-4", "oasst", lambda p, r: p >= LONG and r >= LONG and abs(p - r) <= 20),
    ("short-prompt-long-response", "oasst", lambda p, r: p <= 16 and r >= LONG),
    ("long-prompt-short-response", "anthropic", lambda p, r: p >= LONG and r <= 12),
    ("medium", "anthropic", lambda p, r: 20 <= p <= 60 and 20 <= r <= 60 and 64 < p + r + 3 <= 128),
    ("short", "anthropic", lambda p, r: p + r + 3 <= 32 and r >= 3),
]


def pick_pairs(data, tok):
    sources = {"anthropic": list(anthropic_pairs(data)), "oasst": list(oasst_pairs(data))}
    used, picked = set(), []
    for name, source, pred in SLOTS:
        for pid, prompt, response in sources[source]:
            if pid in used or len(prompt) > MAX_CHARS or len(response) > MAX_CHARS:
                continue
            p = len(tok(prompt, add_special_tokens=False).input_ids)
            r = len(tok(response, add_special_tokens=False).input_ids)
            if pred(p, r):
                used.add(pid)
                picked.append({"slot": name, "pair": pid, "prompt": prompt, "response": response})
                break
        else:
            sys.exit(f"no pair in {data}/{source} fits slot {name}")
    return picked


def encode_full(tok, prompt, response):
    e = tok(prompt, response, truncation=False, padding=False)
    return list(e["input_ids"]), list(e["token_type_ids"])


def longest_first(tok, prompt, response, n):
    e = tok(prompt, response, truncation=True, max_length=n, padding=False)
    return list(e["input_ids"]), list(e["token_type_ids"])


def keep_prompt_end(tok, prompt, response, n):
    full_ids, full_types = encode_full(tok, prompt, response)
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"]
    cls, sep = tok.cls_token_id, tok.sep_token_id
    # the rule assumes tok(prompt, response) == [CLS] p [SEP] r [SEP]
    assert full_ids == [cls] + p + [sep] + r + [sep], "pair encoding is not [CLS] p [SEP] r [SEP]"
    if len(full_ids) <= n:
        return full_ids, full_types
    budget = n - 3
    keep_r = min(len(r), max(max(budget - len(p), 0), budget // 2))
    keep_p = min(len(p), budget - keep_r)
    ids = [cls] + p[len(p) - keep_p :] + [sep] + r[:keep_r] + [sep]
    first_sep = ids.index(sep)
    types = [0 if i <= first_sep else 1 for i in range(len(ids))]
    return ids, types


def rule_longest_first(tok, prompt, response, n, one_at_a_time=False):
    """The rule transformers' (tokenizers') longest_first follows, or with one_at_a_time the textbook one
    (the slow Python tokenizers' loop: a token off the longer side, ties from the response)."""
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"]
    lp, lr, budget = len(p), len(r), n - 3
    if lp + lr > budget:
        if one_at_a_time:
            while lp + lr > budget:
                if lp > lr:
                    lp -= 1
                else:
                    lr -= 1
        elif lp <= lr:
            lp = min(lp, budget // 2)
            lr = budget - lp
        else:
            lr = min(lr, budget // 2)
            lp = budget - lr
    return [tok.cls_token_id] + p[:lp] + [tok.sep_token_id] + r[:lr] + [tok.sep_token_id]


def check_tiny_spm(tok, ref_path):
    ref = json.loads(ref_path.read_text(encoding="utf-8"))
    for t in ref["texts"]:
        got = tok(t["text"])["input_ids"]
        if list(got) != t["input_ids"]:
            sys.exit(f"tiny-spm: ids differ from {ref_path} for text {t['text']!r}")
    for pr in ref["pairs"]:
        e = tok(pr["prompt"], pr["response"])
        if list(e["input_ids"]) != pr["input_ids"] or list(e["token_type_ids"]) != pr["token_type_ids"]:
            sys.exit(f"tiny-spm: ids differ from {ref_path} for pair {pr['prompt']!r}")
    return len(ref["texts"]) + len(ref["pairs"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / "data/sample")
    ap.add_argument("--minilm", type=Path, default=ROOT / "models/all-MiniLM-L6-v2")
    ap.add_argument("--tiny-spm", type=Path, default=ROOT.parent / "shared/models/fixtures/tiny-spm")
    ap.add_argument("--out", type=Path, default=ROOT / "tests/fixtures/truncation.json")
    args = ap.parse_args()

    if not (args.minilm / "tokenizer.json").exists():
        sys.exit(f"{args.minilm} is missing: run scripts/fetch-models.sh first")
    toks = {
        "all-MiniLM-L6-v2": AutoTokenizer.from_pretrained(str(args.minilm)),
        "tiny-spm": AutoTokenizer.from_pretrained(str(args.tiny_spm)),
    }
    n_ref = check_tiny_spm(toks["tiny-spm"], args.tiny_spm / "tokenizer_ref.json")
    print(f"tiny-spm: AutoTokenizer matches tokenizer_ref.json on {n_ref} inputs")

    pairs = pick_pairs(args.data, toks["all-MiniLM-L6-v2"])
    cases, not_one_at_a_time = [], 0
    for tname, tok in toks.items():
        for pair in pairs:
            full_ids, _ = encode_full(tok, pair["prompt"], pair["response"])
            lp = len(tok(pair["prompt"], add_special_tokens=False)["input_ids"])
            lr = len(tok(pair["response"], add_special_tokens=False)["input_ids"])
            print(f"{tname:17} {pair['slot']:27} prompt {lp:4} response {lr:4} tokens  {pair['pair']}")
            for strategy in STRATEGIES:
                for n in MAX_LENGTHS:
                    fn = longest_first if strategy == "longest_first" else keep_prompt_end
                    ids, types = fn(tok, pair["prompt"], pair["response"], n)
                    assert len(ids) == len(types) == min(n, len(full_ids)), (tname, pair["pair"], strategy, n)
                    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and ids.count(tok.sep_token_id) >= 2
                    if strategy == "longest_first":
                        if ids != rule_longest_first(tok, pair["prompt"], pair["response"], n):
                            sys.exit(f"{tname} {pair['pair']} N={n}: longest_first breaks the rule in the docstring")
                        if ids != rule_longest_first(tok, pair["prompt"], pair["response"], n, one_at_a_time=True):
                            not_one_at_a_time += 1
                    cases.append({
                        "tokenizer": tname,
                        "strategy": strategy,
                        "max_length": n,
                        "pair": pair["pair"],
                        "prompt": pair["prompt"],
                        "response": pair["response"],
                        "untruncated_length": len(full_ids),
                        "input_ids": ids,
                        "token_type_ids": types,
                    })

    out = {
        "generated_by": "scripts/make_truncation_fixtures.py",
        "versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
        "cases": cases,
    }
    # one case per line, lists inline: small and diff-friendly
    lines = [json.dumps(c, ensure_ascii=False) for c in cases]
    head = json.dumps({k: out[k] for k in ("generated_by", "versions")}, ensure_ascii=False)[:-1]
    text = head + ', "cases": [\n' + ",\n".join(lines) + "\n]}\n"
    assert json.loads(text) == out
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    cut = sum(c["untruncated_length"] > c["max_length"] for c in cases)
    print(f"wrote {args.out}: {len(cases)} cases ({cut} truncated, {len(cases) - cut} not), {len(text) / 1024:.0f} KB")
    print(f"longest_first: {not_one_at_a_time} cases differ from a one-token-at-a-time loop (see the docstring)")


if __name__ == "__main__":
    main()
