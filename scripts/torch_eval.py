"""PyTorch's `rmroute eval` for a single-model run: pairwise accuracy on each domain's test split.

The reference for `scripts/bench-eval.sh`: transformers' AutoModelForSequenceClassification on the run
directory (rmroute writes it in Hugging Face layout), the run's max_length and truncation, 32 pairs per
batch (chosen and rejected together, as rmroute scores them) in file order, each batch padded to its
longest row, or to max_length with --padding max_length. Prints one JSON line: per-domain pairs and
accuracy, the scoring seconds and the whole process's seconds.
"""

import argparse
import json
import os
import sys
import time

started = time.perf_counter()
import torch  # noqa: E402
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerFast  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True, help="an rmroute run directory of one model (baseline)")
    parser.add_argument("--data", required=True, help="a prepared folder with <domain>/test.jsonl")
    parser.add_argument("--padding", choices=["longest", "max_length"], default="longest")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    meta = json.load(open(os.path.join(args.run, "rmroute.json")))
    config = meta["config"]
    max_length, truncation = config["max_length"], config.get("truncation", "longest_first")
    if truncation != "longest_first":
        sys.exit(f"truncation {truncation!r} has no transformers equivalent: compare a longest_first run")
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=os.path.join(args.run, "tokenizer.json"))
    pad = json.load(open(os.path.join(args.run, "config.json"))).get("pad_token_id", 0)
    tokenizer.pad_token_id = pad if pad is not None else 0
    model = AutoModelForSequenceClassification.from_pretrained(args.run).eval()
    # A bare tokenizer file returns no token types unless asked; BERT needs the response's segment 1
    # (without it rewards differ from rmroute's by up to 0.4), DeBERTa-v3 has no segment embeddings.
    segments = getattr(model.config, "type_vocab_size", 0) > 0

    domains = meta["domains"]
    results, scoring = {}, 0.0
    for domain in domains:
        path = os.path.join(args.data, domain, "test.jsonl")
        records = [json.loads(line) for line in open(path) if line.strip()]
        correct = 0
        begin = time.perf_counter()
        for start in range(0, len(records), 32):
            batch = records[start : start + 32]
            prompts = [r["prompt"] for r in batch] * 2
            responses = [r["chosen"] for r in batch] + [r["rejected"] for r in batch]
            inputs = tokenizer(prompts, responses, truncation=truncation, max_length=max_length,
                               padding=args.padding, return_tensors="pt", return_token_type_ids=segments)
            with torch.inference_mode():
                rewards = model(**inputs).logits[:, 0]
            n = len(batch)
            correct += int((rewards[:n] > rewards[n:]).sum())
        scoring += time.perf_counter() - begin
        results[domain] = {"pairs": len(records), "accuracy": correct / max(len(records), 1)}
    print(json.dumps({"domains": results, "scoring_s": scoring, "process_s": time.perf_counter() - started,
                      "padding": args.padding, "max_length": max_length}))


if __name__ == "__main__":
    sys.exit(main())
