#!/usr/bin/env python3
"""Counts the parameters of the paper's Table 7 backbones as transformers builds them: each as its
...ForSequenceClassification with num_labels 1, from a config written out below (the hub's config.json of
each model; nothing is fetched), with RANDOM weights.

How to run (from the repository root; CPU torch is enough):

    python3 -m venv /tmp/rmvenv && /tmp/rmvenv/bin/pip install torch transformers safetensors
    HF_HUB_OFFLINE=1 /tmp/rmvenv/bin/python scripts/table7_param_counts.py [--out DIR] [--only NAME ...]

Without --out it prints the table only (the models are built on torch's "meta" device: the same modules
and counts, no memory, no init). With --out DIR it also writes each model, one at a time (torch.manual_seed
0, random init, float32), as a checkpoint directory DIR/<name>/ (config.json + model.safetensors) with a
stand-in tokenizer of the same family, irrelevant to the counts: tiny-spm (DeBERTa-v3 layout) for DeBERTa,
models/all-MiniLM-L6-v2's bert-base-uncased WordPiece for BERT, tests/fixtures/tiny-roberta-rm and
tiny-gpt2-rm for RoBERTa and GPT-2. Disk: about 4.9 GB for all eight (DeBERTa-v3-large alone 1.7 GB).

Columns: transformers' num_parameters() (every parameter once; tied weights once) and
num_parameters(exclude_embeddings=True) (less every nn.Embedding: word, position, token type and, for
DeBERTa, the relative-position table), in millions.
"""

import argparse
import gc
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

transformers.utils.logging.disable_progress_bar()

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared/models/fixtures"


def deberta_v3(hidden, layers, heads, mlp):
    # microsoft/deberta-v3-*/config.json (all four share everything but the sizes)
    return DebertaV2Config(
        vocab_size=128100, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=mlp, hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
        max_position_embeddings=512, type_vocab_size=0, initializer_range=0.02, layer_norm_eps=1e-7,
        relative_attention=True, max_relative_positions=-1, position_buckets=256, norm_rel_ebd="layer_norm",
        share_att_key=True, pos_att_type=["p2c", "c2p"], position_biased_input=False, pad_token_id=0,
        num_labels=1,
    )


def bert(hidden, layers, heads, mlp):
    # google-bert/bert-base-uncased and prajjwal1/bert-small config.json
    return BertConfig(
        vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=mlp, hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
        max_position_embeddings=512, type_vocab_size=2, initializer_range=0.02, layer_norm_eps=1e-12,
        pad_token_id=0, num_labels=1,
    )


def roberta_base():
    # FacebookAI/roberta-base config.json
    return RobertaConfig(
        vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=514,
        type_vocab_size=1, initializer_range=0.02, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, num_labels=1,
    )


def gpt2():
    # openai-community/gpt2 config.json; pad_token_id = eos for sequence classification, as TRL users set it
    return GPT2Config(
        vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None,
        activation_function="gelu_new", resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1, layer_norm_epsilon=1e-5,
        initializer_range=0.02, bos_token_id=50256, eos_token_id=50256, pad_token_id=50256, num_labels=1,
    )


# name, hub id, class, config, tokenizer files to copy with --out
BACKBONES = [
    ("deberta-v3-large", "microsoft/deberta-v3-large", DebertaV2ForSequenceClassification,
     lambda: deberta_v3(1024, 24, 16, 4096), SHARED / "tiny-spm"),
    ("deberta-v3-base", "microsoft/deberta-v3-base", DebertaV2ForSequenceClassification,
     lambda: deberta_v3(768, 12, 12, 3072), SHARED / "tiny-spm"),
    ("deberta-v3-small", "microsoft/deberta-v3-small", DebertaV2ForSequenceClassification,
     lambda: deberta_v3(768, 6, 12, 3072), SHARED / "tiny-spm"),
    ("deberta-v3-xsmall", "microsoft/deberta-v3-xsmall", DebertaV2ForSequenceClassification,
     lambda: deberta_v3(384, 12, 6, 1536), SHARED / "tiny-spm"),
    ("bert-base-uncased", "google-bert/bert-base-uncased", BertForSequenceClassification,
     lambda: bert(768, 12, 12, 3072), ROOT / "models/all-MiniLM-L6-v2"),
    ("bert-small", "prajjwal1/bert-small", BertForSequenceClassification,
     lambda: bert(512, 4, 8, 2048), ROOT / "models/all-MiniLM-L6-v2"),
    ("roberta-base", "FacebookAI/roberta-base", RobertaForSequenceClassification,
     roberta_base, ROOT / "tests/fixtures/tiny-roberta-rm"),
    ("gpt2", "openai-community/gpt2", GPT2ForSequenceClassification,
     gpt2, ROOT / "tests/fixtures/tiny-gpt2-rm"),
]
TOKENIZER_FILES = ["spm.model", "tokenizer.json", "tokenizer_config.json"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="write each model as DIR/<name>/ (default: counts only)")
    ap.add_argument("--only", nargs="*", default=None, help="names to build (default: all)")
    args = ap.parse_args()

    rows = []
    for name, hub, cls, make_config, tok_dir in BACKBONES:
        if args.only and name not in args.only:
            continue
        config = make_config()
        if args.out is None:
            with torch.device("meta"):  # counts only: no memory, no init
                model = cls(config)
        else:
            torch.manual_seed(0)
            model = cls(config).eval()
        total, non_emb = model.num_parameters(), model.num_parameters(exclude_embeddings=True)
        rows.append((name, hub, cls.__name__, total, non_emb))
        print(f"{name:18} {total / 1e6:9.2f}M", flush=True)
        if args.out is not None:
            d = args.out / name
            d.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(str(d), safe_serialization=True)
            copied = [f for f in TOKENIZER_FILES if (tok_dir / f).exists()]
            for f in copied:
                shutil.copyfile(tok_dir / f, d / f)
            print(f"  wrote {d} (tokenizer: {', '.join(copied) or 'none, ' + str(tok_dir) + ' is missing'})")
        del model
        gc.collect()  # one model in memory at a time

    print(f"\ntransformers {transformers.__version__}, num_labels 1, parameters in millions\n")
    print("| name | hub id | class | num_parameters() | non-embedding |")
    print("|---|---|---|---:|---:|")
    for name, hub, cls_name, total, non_emb in rows:
        print(f"| {name} | {hub} | {cls_name} | {total / 1e6:.2f} ({total:,}) | {non_emb / 1e6:.2f} |")


if __name__ == "__main__":
    main()
