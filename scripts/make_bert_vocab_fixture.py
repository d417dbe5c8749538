#!/usr/bin/env python3
"""Makes tests/fixtures/bert-vocab/ and tests/fixtures/bert-vocab-cased/: a checkpoint laid out as
prajjwal1/bert-small ships on the hub (config.json WITHOUT `model_type`, a BertForPreTraining
pytorch_model.bin, vocab.txt and no tokenizer.json), and the token ids transformers gives for it, so that
rmroute's tokenizer built from vocab.txt and its model_type inference can be checked without the hub.

How to run (from the repository root; CPU torch is enough, nothing is fetched from a model hub):

    python3 -m venv /tmp/rmvenv
    /tmp/rmvenv/bin/pip install torch transformers tokenizers
    HF_HUB_OFFLINE=1 /tmp/rmvenv/bin/python scripts/make_bert_vocab_fixture.py
        [--data ../shared/data] [--out tests/fixtures]

(made with torch 2.15 CPU, transformers 5.25, tokenizers 0.23). Deterministic: the same data and versions
give the same files.

vocab.txt (the same in both directories): a WordPiece vocabulary of about 1,800 entries counted from the
chosen transcripts of the first 600 records of anthropic/harmless-base and the first 600 oasst messages
(split as the uncased BERT tokenizer splits, accents kept; see make_vocab), laid out as BERT's: [PAD] first,
then [unused0..3], [UNK], [CLS], [SEP], [MASK] (ids 0, 5, 6, 7, 8), then the 150 most frequent characters
(bare, then `##`), the 1,200 most frequent words, the 500 most frequent word starts and `##` endings of the
other words, then a few accented and Chinese characters the data lacks. bert-vocab has no tokenizer_config.json (transformers' default
do_lower_case true); bert-vocab-cased has one with {"do_lower_case": false}.

bert-vocab also holds a tiny random BertForPreTraining (torch seed 0; hidden 4, 1 layer, 2 heads, MLP 8,
256 positions) saved with torch.save as pytorch_model.bin, so it has the `cls.predictions.*` and
`cls.seq_relationship.*` tensors of the MLM/NSP heads next to `bert.*`, and a config.json without
`model_type`. transformers 4's AutoConfig inferred `bert` from the path (the longest key of CONFIG_MAPPING
found in it); transformers 5's refuses a config without `model_type` (the script prints which), while
BertForPreTraining.from_pretrained still loads it.

reference.json (per directory): for texts and (prompt, response) pairs, `input_ids` and `token_type_ids` of
transformers' BertTokenizerFast.from_pretrained(dir) (`tokenizer(text)`, `tokenizer(prompt, response)`),
its tokens, and the ids of the slow BertTokenizer (BertTokenizerLegacy in transformers 5) with
`slow_differs` where they differ (listed in `slow_fast_differences`; `notes` says why), and where the
tokenizers library itself (backend_tokenizer.encode) gives other ids than transformers' call, those as
`tokenizers_input_ids` and `tokenizers_token_type_ids` (an empty response). bert-vocab's also has, per pair,
the encoder's `pooler_output` for that row alone (eval mode, float32).
"""

import argparse
import gzip
import json
import os
import shutil
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import normalizers, pre_tokenizers  # noqa: E402
from transformers import AutoConfig, BertConfig, BertForPreTraining, BertTokenizerFast  # noqa: E402
from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy  # noqa: E402

transformers.utils.logging.disable_progress_bar()
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
SPECIALS = ["[PAD]", "[unused0]", "[unused1]", "[unused2]", "[unused3]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
EXTRA = ["é", "##é", "ï", "##ï", "ü", "##ü", "中", "文", "字", "符", "日", "本", "语", "和"]
ASSISTANT = "\n\nAssistant:"
MAX_CHARS = 300  # per text of a real pair, to keep reference.json small

NOTES = {
    "empty_response": (
        "transformers 5's tokenizer(prompt, \"\") treats the empty text_pair as absent and encodes the prompt "
        "alone ([CLS] A [SEP]); the tokenizers library it wraps (tokenizer.backend_tokenizer.encode(prompt, \"\")), "
        "the slow tokenizer and transformers' batched call tokenizer([prompt], [\"\"]) give [CLS] A [SEP] [SEP] "
        "with type ids 1 for the last [SEP]. Such rows carry the library's ids as tokenizers_input_ids and "
        "tokenizers_token_type_ids."
    ),
    "nfc": (
        "The slow BertTokenizer NFC-normalizes the text first, the fast one (BertNormalizer) does not: with "
        "do_lower_case false (no accent stripping) a decomposed e + U+0301 stays two characters in the fast "
        "tokenizer ([UNK] here) and becomes the vocabulary's é in the slow one."
    ),
}

TEXTS = [
    "Hello, world! How are you doing today?",
    "THE QUICK BROWN FOX Jumps Over The Lazy Dog",
    "Café naïve résumé Ångström über",
    "e\u0301 (a decomposed é) and ﬁ ligature",
    "中文字符 mixed with English 和 日本語",
    "tabs\tand\nnewlines\r\nand\x00control\x07chars\u200b and \ufffd replacement",
    "Well... (really?) -- yes; [maybe] {no} @user #tag $5.00 100% a/b don't",
    "In 1999, 3.14159 and 1,000,000 people",
    "x" * 100 + " exactly one hundred, then " + "y" * 101,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "xyzzy qwrtp zzzz \u2603 \U0001f642 \u0394\u03b5\u03bb\u03c4\u03b1",
    "what is [MASK] and [CLS] here [SEP] [unused0] [PAD] [UNK] [mask]",
    "",
    "   \n\t  ",
    "\n\nHuman: How do I make a cake?\n\nAssistant: You will need flour, eggs and sugar.",
]

PAIRS = [
    ("Is it safe to eat raw cookie dough?", "Not really: raw eggs and flour can carry bacteria."),
    ("Café au lait ou thé ?", "中文 answer with ÜBER accents and naïveté"),
    ("An empty response follows.", ""),
]


def open_text(path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def harmless(data, n):
    with open_text(data / "anthropic/harmless-base/test.jsonl.gz") as f:
        for i, line in enumerate(f):
            if i >= n:
                break
            yield json.loads(line)


def training_text(data):
    texts = [r["chosen"] for r in harmless(data, 600)]
    with open_text(data / "oasst/oasst1_validation_en/en-validation.jsonl") as f:
        for i, line in enumerate(f):
            if i >= 600:
                break
            texts.append(json.loads(line)["text"])
    return texts


def real_pairs(data):
    """(prompt, response) of records 1, 3 and 5 of harmless-base: the chosen transcript split at its last
    Assistant turn, each side cut to MAX_CHARS (the prompt keeping its end)."""
    pairs = []
    for i, record in enumerate(harmless(data, 6)):
        if i % 2 == 1:
            continue
        text = record["chosen"]
        cut = text.rindex(ASSISTANT) + len(ASSISTANT)
        pairs.append((text[:cut][-MAX_CHARS:], text[cut:][:MAX_CHARS]))
    return pairs


def make_vocab(data):
    """BERT's layout over counts of the training text, split into words as the uncased tokenizer splits
    it (so ties break by text, not by the trainer's hash order: the tokenizers WordPiece trainer is not
    deterministic): each character (bare and `##`), the most frequent words, then the most frequent
    2-5 character word starts and `##` endings of the other words."""
    normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=False, handle_chinese_chars=True)
    pre = pre_tokenizers.BertPreTokenizer()
    words, chars = Counter(), Counter()
    for text in training_text(data):
        for word, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)):
            words[word] += 1
            chars.update(word)
    top = lambda counter, n: [k for k, c in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:n] if c >= 2]
    alphabet = top(chars, 150)
    whole = top(words, 1200)
    pieces = Counter()
    for word, count in words.items():
        if word not in whole and len(word) > 2:
            for n in range(2, min(5, len(word) - 1) + 1):
                pieces[word[:n]] += count
                pieces["##" + word[-n:]] += count
    vocab = list(SPECIALS)
    for entry in alphabet + ["##" + c for c in alphabet] + whole + top(pieces, 500) + EXTRA:
        if entry not in vocab:
            vocab.append(entry)
    return vocab


def tiny_model(vocab_size):
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=4,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
        max_position_embeddings=256,
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    model = BertForPreTraining(config).eval()
    with torch.no_grad():  # LayerNorms away from 1/0, so a port that ignores one fails
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
    return config, model


def encode(fast, slow, *texts):
    enc = fast(*texts)
    s = slow(*texts, return_token_type_ids=True)
    row = {
        "input_ids": enc["input_ids"],
        "token_type_ids": enc["token_type_ids"],
        "tokens": fast.convert_ids_to_tokens(enc["input_ids"]),
        "slow_input_ids": s["input_ids"],
        "slow_token_type_ids": s["token_type_ids"],
    }
    row["slow_differs"] = (s["input_ids"], s["token_type_ids"]) != (enc["input_ids"], enc["token_type_ids"])
    backend = fast.backend_tokenizer.encode(*texts)
    if (backend.ids, backend.type_ids) != (enc["input_ids"], enc["token_type_ids"]):
        row["tokenizers_input_ids"] = backend.ids
        row["tokenizers_token_type_ids"] = backend.type_ids
    return row


def reference(dir, do_lower_case, pairs, model=None):
    fast = BertTokenizerFast.from_pretrained(dir)
    slow = BertTokenizerLegacy.from_pretrained(dir)
    assert fast.do_lower_case == do_lower_case and slow.do_lower_case == do_lower_case
    out = {
        "made_by": "scripts/make_bert_vocab_fixture.py",
        "versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
        "do_lower_case": do_lower_case,
        "texts": [],
        "pairs": [],
        "slow_fast_differences": [],
        "notes": NOTES,
    }
    for text in TEXTS:
        row = {"text": text, **encode(fast, slow, text)}
        out["texts"].append(row)
        if row["slow_differs"]:
            out["slow_fast_differences"].append({"text": text})
    for prompt, response in pairs:
        row = {"prompt": prompt, "response": response, **encode(fast, slow, prompt, response)}
        if model is not None:
            with torch.no_grad():
                output = model.bert(
                    input_ids=torch.tensor([row["input_ids"]]), token_type_ids=torch.tensor([row["token_type_ids"]])
                )
            row["pooler_output"] = output.pooler_output[0].tolist()
        out["pairs"].append(row)
        if row["slow_differs"]:
            out["slow_fast_differences"].append({"prompt": prompt, "response": response})
    return out


def write_json(path, value):
    path.write_text(json.dumps(value, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data")
    parser.add_argument("--out", type=Path, default=ROOT / "tests/fixtures")
    args = parser.parse_args()

    vocab = make_vocab(args.data)
    pairs = real_pairs(args.data) + PAIRS
    uncased, cased = args.out / "bert-vocab", args.out / "bert-vocab-cased"
    for d in (uncased, cased):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        (d / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    write_json(cased / "tokenizer_config.json", {"do_lower_case": False})

    config, model = tiny_model(len(vocab))
    torch.save(model.state_dict(), uncased / "pytorch_model.bin")
    config_dict = config.to_dict()
    for key in ("model_type", "transformers_version", "architectures", "dtype", "torch_dtype"):
        config_dict.pop(key, None)
    config_dict["architectures"] = ["BertForPreTraining"]
    write_json(uncased / "config.json", config_dict)
    try:  # transformers 4 inferred `bert` from the path; 5 refuses (the class-specific loaders still work)
        inferred = AutoConfig.from_pretrained(str(uncased)).model_type
    except ValueError:
        inferred = None
    print(f"transformers {transformers.__version__} AutoConfig infers model_type {inferred!r}")
    reloaded = BertForPreTraining.from_pretrained(str(uncased)).eval()
    keys = sorted(torch.load(uncased / "pytorch_model.bin", weights_only=True))
    assert any(k.startswith("cls.predictions.") for k in keys), keys

    write_json(uncased / "reference.json", reference(uncased, True, pairs, reloaded))
    write_json(cased / "reference.json", reference(cased, False, pairs))
    for d in (uncased, cased):
        for f in sorted(d.iterdir()):
            print(f"{f.relative_to(ROOT)}: {f.stat().st_size} bytes")
    print("pytorch_model.bin keys:", ", ".join(keys))


if __name__ == "__main__":
    main()
