#!/usr/bin/env python3
"""Cuts the small real sample in data/sample/ from ../shared/data/ (see data/sample/README.md).

Usage: python3 scripts/make_sample.py [SHARED_DATA_DIR] [OUT_DIR]
Deterministic: the same input gives the same files.
"""
import bz2
import gzip
import json
import os
import sys

src = sys.argv[1] if len(sys.argv) > 1 else "../shared/data"
out = sys.argv[2] if len(sys.argv) > 2 else "data/sample"

ANTHROPIC_LINES = 150  # per subset, the first lines of each test file
HELLASWAG_ITEMS = 400  # the first items of the plain-text file
OASST_TREES = 60  # the first message trees (all their messages) of the validation file

for subset in ["harmless-base", "helpful-base", "helpful-rejection-sampled"]:
    os.makedirs(f"{out}/anthropic/{subset}", exist_ok=True)
    with gzip.open(f"{src}/anthropic/{subset}/test.jsonl.gz", "rt", encoding="utf-8") as f:
        lines = [next(f) for _ in range(ANTHROPIC_LINES)]
    with open(f"{out}/anthropic/{subset}/test.jsonl", "w", encoding="utf-8") as f:
        f.writelines(lines)

os.makedirs(f"{out}/hellaswag", exist_ok=True)
with bz2.open(f"{src}/hellaswag/hellaswag_val_part1.txt.bz2", "rt", encoding="utf-8") as f:
    lines = [next(f) for _ in range(6 * HELLASWAG_ITEMS)]
with open(f"{out}/hellaswag/hellaswag_val_sample.txt", "w", encoding="utf-8") as f:
    f.writelines(lines)

os.makedirs(f"{out}/oasst/oasst1_validation_en", exist_ok=True)
trees, kept = [], []
with open(f"{src}/oasst/oasst1_validation_en/en-validation.jsonl", encoding="utf-8") as f:
    for line in f:
        tree = json.loads(line)["message_tree_id"]
        if tree not in trees:
            if len(trees) == OASST_TREES:
                continue
            trees.append(tree)
        kept.append(line)
with open(f"{out}/oasst/oasst1_validation_en/en-validation.jsonl", "w", encoding="utf-8") as f:
    f.writelines(kept)
