"""A PyTorch + transformers (+ PEFT) router over domains: the reference rmroute's routers are measured
against (issue 32), trained and evaluated on the same prepared data with the same settings.

The router is `BertForSequenceClassification` (num_labels = domains) on the backbone: its pooler from the
checkpoint, a new classifier. It trains with cross-entropy on each domain's distinct training prompts
(`--balance class_weights`: each class weighted n / (K · n_c), as torch's CrossEntropyLoss(weight=…)
normalises it; `none`: plain), AdamW (no decay on biases and LayerNorm weights, as rmroute), a linear
warm-up then linear decay, gradient-norm clipping at 1, dropout on. With `--lora R` the encoder is frozen
and a PEFT LoRA adapter on its attention and dense layers trains with the head (`modules_to_save`), as
ARLISS's router adapter. Prompts longer than `--max-length` lose their start (`--truncation-side left`,
keeping the latest turns) or their end (`right`).

It prints one JSON line: accuracy per domain on the test split's pairs (each pair's prompt routed) and on
its distinct prompts, overall, and the confusion matrix (rows: true domain, columns: picked).

    python scripts/torch_router.py --backbone models/all-MiniLM-L6-v2 --data prepared-full \
        --domains anthropic,oasst --epochs 1 --lr 2e-5 --max-length 128 --seed 1
"""

import argparse
import json
import math
import os
import random
import sys

import torch
from transformers import BertForSequenceClassification, PreTrainedTokenizerFast
from transformers.optimization import get_linear_schedule_with_warmup


def read(path):
    return [json.loads(line) for line in open(path) if line.strip()]


def distinct_prompts(records):
    seen, out = set(), []
    for r in records:
        if r["prompt"] not in seen:
            seen.add(r["prompt"])
            out.append(r["prompt"])
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--domains", required=True)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--balance", choices=["class_weights", "none"], default="class_weights")
    p.add_argument("--truncation-side", choices=["left", "right"], default="left")
    p.add_argument("--max-pairs", type=int, default=None, help="training pairs per domain, as rmroute's max_pairs")
    p.add_argument("--lora", type=int, default=0, help="LoRA rank of a router adapter (0: fine-tune the encoder)")
    p.add_argument("--lora-alpha", type=float, default=16)
    p.add_argument("--lora-dropout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine (kernels differ: figures move slightly)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    domains = args.domains.split(",")
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=os.path.join(args.backbone, "tokenizer.json"))
    tokenizer.pad_token_id = 0
    tokenizer.truncation_side = args.truncation_side
    model = BertForSequenceClassification.from_pretrained(args.backbone, num_labels=len(domains))
    model.to(args.device)
    if args.lora:
        from peft import LoraConfig, get_peft_model

        targets = r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"
        config = LoraConfig(r=args.lora, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                            target_modules=targets, modules_to_save=["classifier", "pooler"], task_type="SEQ_CLS")
        model = get_peft_model(model, config)

    prompts, labels = [], []
    for label, domain in enumerate(domains):
        records = read(os.path.join(args.data, domain, "train.jsonl"))
        if args.max_pairs:
            rng = random.Random(args.seed)
            rng.shuffle(records)
            records = records[: args.max_pairs]
        for prompt in distinct_prompts(records):
            prompts.append(prompt)
            labels.append(label)
    counts = [labels.count(k) for k in range(len(domains))]
    weights = [len(labels) / (len(domains) * c) if c and args.balance == "class_weights" else 1.0 for c in counts]
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(weights, device=args.device))

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if name.endswith(".bias") or "LayerNorm" in name else decay).append(param)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, eps=1e-8)
    steps = math.ceil(len(prompts) / args.batch_size) * args.epochs
    schedule = get_linear_schedule_with_warmup(optimizer, round(args.warmup_ratio * steps), steps)
    segments = getattr(model.config, "type_vocab_size", 0) > 0

    def encode(texts):
        return tokenizer(texts, truncation=True, max_length=args.max_length, padding="longest",
                         return_tensors="pt", return_token_type_ids=segments).to(args.device)

    model.train()
    for epoch in range(args.epochs):
        order = list(range(len(prompts)))
        random.Random(args.seed * 1000 + epoch).shuffle(order)
        for start in range(0, len(order), args.batch_size):
            batch = order[start : start + args.batch_size]
            logits = model(**encode([prompts[i] for i in batch])).logits
            loss = loss_fn(logits, torch.tensor([labels[i] for i in batch], device=args.device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_([q for q in model.parameters() if q.requires_grad], 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()

    model.eval()
    confusion = [[0] * len(domains) for _ in domains]
    per_pair, per_prompt, prompt_hits, prompt_total = {}, {}, 0, 0
    for truth, domain in enumerate(domains):
        records = read(os.path.join(args.data, domain, "test.jsonl"))
        distinct = distinct_prompts(records)
        picked = {}
        with torch.inference_mode():
            for start in range(0, len(distinct), 32):
                texts = distinct[start : start + 32]
                for text, label in zip(texts, model(**encode(texts)).logits.argmax(-1).tolist()):
                    picked[text] = label
        for r in records:
            confusion[truth][picked[r["prompt"]]] += 1
        per_pair[domain] = sum(picked[r["prompt"]] == truth for r in records) / len(records)
        hits = sum(picked[t] == truth for t in distinct)
        per_prompt[domain] = hits / len(distinct)
        prompt_hits, prompt_total = prompt_hits + hits, prompt_total + len(distinct)
    total = sum(map(sum, confusion))
    print(json.dumps({
        "per_pair": per_pair,
        "per_prompt": per_prompt,
        "accuracy": sum(confusion[k][k] for k in range(len(domains))) / total,
        "prompt_accuracy": prompt_hits / prompt_total,
        "confusion": confusion,
        "labels": domains,
        "train_prompts": counts,
        "settings": vars(args),
    }))


if __name__ == "__main__":
    sys.exit(main())
