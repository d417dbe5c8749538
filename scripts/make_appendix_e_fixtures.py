#!/usr/bin/env python3
"""Makes tests/fixtures/tiny-roberta-rm/ and tests/fixtures/tiny-gpt2-rm/: two tiny random reward models
(RobertaForSequenceClassification, GPT2ForSequenceClassification, num_labels 1) with their own tiny
byte-level BPE tokenizers, and transformers' rewards for them, so that rmroute's RoBERTa and GPT-2 ports can
be checked against transformers without the hubs.

How to run (from the repository root; CPU torch is enough, nothing is fetched from a model hub):

    python3 -m venv /tmp/rmvenv
    /tmp/rmvenv/bin/pip install torch transformers tokenizers safetensors
    HF_HUB_OFFLINE=1 /tmp/rmvenv/bin/python scripts/make_appendix_e_fixtures.py
        [--data ../shared/data] [--out tests/fixtures]

(made with torch 2.15 CPU, transformers 5.25, tokenizers 0.23). Deterministic: the same data and versions
give the same files (fixed torch seeds, one CPU thread; the BPE training is run twice and compared).

Tokenizers, trained with the tokenizers library on the text of the first 200 records of
anthropic/helpful-base (chosen and rejected) and the first 400 messages of oasst (vocabulary 512):
  tiny-roberta-rm  as roberta-base: <s>=0 <pad>=1 </s>=2 <unk>=3, <mask> last; ByteLevel pre-tokenizer
                   (add_prefix_space false); RobertaProcessing, a pair is "<s> A </s></s> B </s>".
  tiny-gpt2-rm     as gpt2: one special token <|endoftext|> (bos = eos = unk), the last id; ByteLevel
                   post-processor, a pair is the plain concatenation A B; no pad token in the tokenizer.
Both are wrapped as transformers' RobertaTokenizerFast / GPT2TokenizerFast and saved with save_pretrained;
the script reloads them with AutoTokenizer and checks the pair layouts above.

Models (torch.manual_seed 0 / 1, initializer_range 0.2): hidden 32, 2 layers, 4 heads, MLP 64. RoBERTa:
max_position_embeddings 66 (= 64 + pad_token_id + 1), type_vocab_size 1, pad_token_id 1. GPT-2:
n_positions 64, gelu_new, pad_token_id = eos id in the config (as TRL users set it). Every LayerNorm weight
is 1 + N(0, 0.1²) and every bias N(0, 0.1²), so a port that ignores one fails; the heads (RoBERTa
classifier.dense and classifier.out_proj, GPT-2 score) are N(0, 0.2²). Saved as safetensors.

rewards_ref.json (per directory), computed by the saved checkpoint reloaded with from_pretrained in eval mode,
float32, attn_implementation "eager": for each (prompt, response) pair the ids of
tokenizer(prompt, response, truncation=True, max_length=48) (transformers' default longest_first) and the
reward of that row alone; the rewards of all rows in one right-padded batch ("batch_right"); for GPT-2 also
one left-padded batch with position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0) as generate passes
them ("batch_left") and the same batch without position_ids ("batch_left_default_positions": transformers'
default, which shifts the positions of left-padded rows; for information, it is expected to differ).
The script checks alone == batch_right (== batch_left) within 1e-5 relative. "notes" in the file say how
transformers picks the pooled token and the position ids.
"""

import argparse
import gzip
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoTokenizer,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2TokenizerFast,
    RobertaConfig,
    RobertaForSequenceClassification,
    RobertaTokenizerFast,
)

transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bars in the output
torch.set_num_threads(1)  # bit-identical rewards from run to run (CPU kernels may split sums by thread)

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 512
MAX_LENGTH = 48
MAX_CHARS = 600  # per text of a picked pair, to keep rewards_ref.json small
ASSISTANT = "\n\nAssistant:"
TOL = 1e-5  # relative, against max(|reward|, 1)

NOTES = {
    "gpt2_pooling": (
        "transformers 5.25 GPT2ForSequenceClassification: with config.pad_token_id set, the pooled (scored) token "
        "of each row is the RIGHTMOST position whose input_id != config.pad_token_id (argmax of index * "
        "(ids != pad); index 0 for an all-pad row), whatever the attention_mask says; so it works for right and "
        "left padding, but with pad = eos a trailing <|endoftext|> in the text itself would be skipped. With "
        "pad_token_id None only batch size 1 is allowed and the last position is used."
    ),
    "gpt2_positions": (
        "GPT2Model: position_ids default to arange(seq_len) (+ cached length) for every row, ignoring the "
        "attention_mask, so a left-padded row gets shifted positions (batch_left_default_positions); generate "
        "passes (attention_mask.cumsum(-1) - 1).clamp(min=0), which gives each row the positions it has alone."
    ),
    "roberta_positions": (
        "RobertaEmbeddings: position_ids are computed from input_ids, not the attention_mask: "
        "mask = ids != pad_token_id (1); pos = cumsum(mask) * mask + pad_token_id, i.e. real tokens get 2, 3, ... "
        "and pads get 1 (hence max_position_embeddings = max length + 2); token_type_ids default to 0. The "
        "classifier pools the first token (<s>): out_proj(tanh(dense(h[:, 0])))."
    ),
}


def open_text(path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def anthropic_records(data, n=None):
    with open_text(data / "anthropic/helpful-base/test.jsonl.gz") as f:
        for i, line in enumerate(f):
            if n is not None and i >= n:
                break
            yield i + 1, json.loads(line)


def oasst_messages(data, n=None):
    with open_text(data / "oasst/oasst1_validation_en/en-validation.jsonl") as f:
        for i, line in enumerate(f):
            if n is not None and i >= n:
                break
            yield json.loads(line)


def training_text(data):
    """The text the tokenizers are trained on, in file order."""
    texts = []
    for _, r in anthropic_records(data, 200):
        texts += [r["chosen"], r["rejected"]]
    texts += [m["text"] for m in oasst_messages(data, 400)]
    return texts


def anthropic_pairs(data):
    """(id, prompt, response): prompt = the chosen transcript up to the last "\\n\\nAssistant:", response = the rest."""
    for n, r in anthropic_records(data):
        chosen = r["chosen"]
        if ASSISTANT in chosen:
            at = chosen.rfind(ASSISTANT) + len(ASSISTANT)
            if chosen[at:].strip():
                yield f"anthropic/helpful-base/test.jsonl.gz/{n}/chosen", chosen[:at], chosen[at:].strip()


def oasst_pairs(data):
    """(id, prompt, response) for assistant replies to a root prompt: "\\n\\nHuman: X\\n\\nAssistant:", reply."""
    msgs = list(oasst_messages(data))
    roots = {m["message_id"]: m for m in msgs if m["parent_id"] is None}
    for m in msgs:
        root = roots.get(m["parent_id"])
        if m["role"] == "assistant" and root is not None and m["text"].strip() and not m.get("deleted"):
            yield f"oasst/{root['message_id']}/{m['message_id']}", "\n\nHuman: " + root["text"].strip() + ASSISTANT, m[
                "text"
            ].strip()


# ---------------------------------------------------------------------------------------------- tokenizers


def train_bpe(texts, special_first):
    """A byte-level BPE model trained on texts with special_first at ids 0.. (then the 256 bytes, then merges)."""
    tok = Tokenizer(models.BPE(dropout=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 1,  # the last id is the special token added after training
        min_frequency=2,
        special_tokens=special_first,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def make_roberta_tokenizer(texts):
    tok = train_bpe(texts, ["<s>", "<pad>", "</s>", "<unk>"])
    tok.add_special_tokens([tokenizers.AddedToken("<mask>", lstrip=True, special=True)])  # last, as roberta-base
    # (sep, cls, trim_offsets, add_prefix_space) as roberta-base's tokenizer.json
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")),
                                                      True, False)
    return tok


def make_gpt2_tokenizer(texts):
    tok = train_bpe(texts, [])
    tok.add_special_tokens([tokenizers.AddedToken("<|endoftext|>", special=True)])  # last, as gpt2's 50256
    tok.post_processor = processors.ByteLevel(trim_offsets=True)  # no special tokens around a pair
    return tok


def wrap_and_save(kind, raw, out_dir):
    """Wrap raw as transformers' fast tokenizer, save it to out_dir, return it reloaded by AutoTokenizer."""
    if kind == "roberta":
        t = RobertaTokenizerFast(
            tokenizer_object=raw, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
            unk_token="<unk>", pad_token="<pad>", mask_token="<mask>", add_prefix_space=False, trim_offsets=True,
            model_max_length=64,
        )
    else:
        t = GPT2TokenizerFast(
            tokenizer_object=raw, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
            add_prefix_space=False, model_max_length=64,
        )
    t.save_pretrained(str(out_dir))
    return AutoTokenizer.from_pretrained(str(out_dir))


def check_layout(kind, tok):
    """tokenizer(prompt, response) of the reloaded tokenizer must be <s> A </s></s> B </s> / plain A B."""
    a, b = "\n\nHuman: Hello there, how are you?\n\nAssistant:", "Fine, thanks! Ünïcödé ☕"
    ids = tok(a, b)["input_ids"]
    pa = tok(a, add_special_tokens=False)["input_ids"]
    pb = tok(b, add_special_tokens=False)["input_ids"]
    if kind == "roberta":
        s, e = tok.convert_tokens_to_ids("<s>"), tok.convert_tokens_to_ids("</s>")
        want = [s] + pa + [e, e] + pb + [e]
        assert (s, tok.pad_token_id, e, tok.unk_token_id) == (0, 1, 2, 3), "RoBERTa special ids"
        assert tok.mask_token_id == len(tok) - 1
    else:
        want = pa + pb
        eos = tok.convert_tokens_to_ids("<|endoftext|>")
        assert tok.pad_token is None, "gpt2-style tokenizer must have no pad token"
        assert tok.bos_token_id == tok.eos_token_id == tok.unk_token_id == eos == len(tok) - 1
    assert list(ids) == want, f"{kind}: pair layout {ids} != {want}"
    assert tok.decode(pa) == a and tok.decode(pb) == b, f"{kind}: byte-level round trip"
    print(f"{kind}: reloaded tokenizer, {len(tok)} tokens, pair layout ok: {tok.convert_ids_to_tokens(ids)[:3]}..")


# ---------------------------------------------------------------------------------------------- models


def perturb(model, head_names, seed):
    """LayerNorm weights 1 + N(0, 0.1²), all biases N(0, 0.1²), head weights N(0, 0.2²)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=g))
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif any(name.startswith(h) for h in head_names) and name.endswith("weight"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def make_roberta(vocab_size):
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=66, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        layer_norm_eps=1e-5, initializer_range=0.2, num_labels=1, hidden_act="gelu",
    )
    model = RobertaForSequenceClassification(config)
    perturb(model, ["classifier.dense", "classifier.out_proj"], seed=100)
    return model


def make_gpt2(vocab_size, eos):
    torch.manual_seed(1)
    config = GPT2Config(
        vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=64, activation_function="gelu_new",
        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, initializer_range=0.2, num_labels=1,
    )
    model = GPT2ForSequenceClassification(config)
    perturb(model, ["score"], seed=101)
    return model


# ---------------------------------------------------------------------------------------------- references


def pick_pairs(data, tok):
    """Real pairs picked by their token counts under tok (file order, first match), then hand-made ones."""

    def n(text):
        return len(tok(text, add_special_tokens=False)["input_ids"])

    slots = [  # name, source, predicate on (prompt tokens, response tokens)
        ("anthropic-short", "anthropic", lambda p, r: p + r + 4 <= 40),
        ("oasst-short", "oasst", lambda p, r: p + r + 4 <= MAX_LENGTH),
        ("anthropic-long-long", "anthropic", lambda p, r: p >= 60 and r >= 60),
        ("anthropic-long-prompt-short-response", "anthropic", lambda p, r: p >= 80 and r <= 12),
        ("oasst-short-prompt-long-response", "oasst", lambda p, r: p <= 20 and r >= 80),
    ]
    sources = {"anthropic": list(anthropic_pairs(data)), "oasst": list(oasst_pairs(data))}
    picked = []
    for name, source, pred in slots:
        for pid, prompt, response in sources[source]:
            if len(prompt) <= MAX_CHARS and len(response) <= MAX_CHARS and pred(n(prompt), n(response)):
                picked.append({"name": name, "source": pid, "prompt": prompt, "response": response})
                break
        else:
            sys.exit(f"no pair in {data}/{source} fits slot {name}")
    picked += [
        {"name": "tiny", "source": "hand-made", "prompt": "Hi", "response": "Ok."},
        {"name": "transcript", "source": "hand-made",
         "prompt": "\n\nHuman: What is the capital of France?\n\nAssistant:", "response": "Paris."},
        {"name": "non-ascii", "source": "hand-made", "prompt": "«Guten Morgen» auf Japanisch?",
         "response": "おはよう — très simple ☕"},
    ]
    return picked


def rewards(model, rows, pad_id, left=False, positions=False):
    """Rewards of rows (lists of ids) in one padded batch."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, sl] = torch.tensor(r)
        mask[i, sl] = 1
    kw = {}
    if positions:
        kw["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, **kw).logits[:, 0].tolist()


def max_diff(a, b):
    """(max |a - b|, max |a - b| / max(|a|, 1))."""
    d = [abs(x - y) for x, y in zip(a, b)]
    return max(d), max(x / max(abs(y), 1.0) for x, y in zip(d, a))


def write_refs(kind, out_dir, tok, pairs):
    cls = RobertaForSequenceClassification if kind == "roberta" else GPT2ForSequenceClassification
    model = cls.from_pretrained(str(out_dir), attn_implementation="eager", dtype=torch.float32).eval()
    if kind == "gpt2":
        tok.pad_token = tok.eos_token  # for batching only; the saved tokenizer has no pad token
        assert model.config.pad_token_id == tok.pad_token_id
    pad = tok.pad_token_id

    rows, out_pairs = [], []
    for p in pairs:
        full = tok(p["prompt"], p["response"])["input_ids"]
        ids = list(tok(p["prompt"], p["response"], truncation=True, max_length=MAX_LENGTH)["input_ids"])
        assert len(ids) == min(len(full), MAX_LENGTH)
        rows.append(ids)
        out_pairs.append({**p, "untruncated_length": len(full), "input_ids": ids,
                          "alone": rewards(model, [ids], pad)[0]})
    alone = [p["alone"] for p in out_pairs]
    n_cut = sum(p["untruncated_length"] > MAX_LENGTH for p in out_pairs)
    assert n_cut >= 2, f"{kind}: only {n_cut} pairs exceed max_length"

    ref = {
        "generated_by": "scripts/make_appendix_e_fixtures.py",
        "versions": {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__},
        "model_class": type(model).__name__,
        "dtype": "float32",
        "attn_implementation": "eager",
        "encoding": f"tokenizer(prompt, response, truncation=True, max_length={MAX_LENGTH}) (longest_first)",
        "max_length": MAX_LENGTH,
        "pad_token_id": pad,
        "parameters": model.num_parameters(),
        "notes": [NOTES["roberta_positions"]] if kind == "roberta" else [NOTES["gpt2_pooling"],
                                                                          NOTES["gpt2_positions"]],
    }
    batches = {"batch_right": rewards(model, rows, pad)}
    if kind == "gpt2":
        batches["batch_left"] = rewards(model, rows, pad, left=True, positions=True)
        batches["batch_left_default_positions"] = rewards(model, rows, pad, left=True)
    for name, values in batches.items():
        d, rel = max_diff(alone, values)
        must = name != "batch_left_default_positions"
        print(f"{kind}: alone vs {name:29} max |diff| {d:.3e}  rel {rel:.3e}" + ("" if must else "  (not checked)"))
        if must and rel > TOL:
            sys.exit(f"{kind}: {name} differs from the rewards alone by {rel:.3e} relative")
    ref.update(batches)
    print(f"{kind}: {len(pairs)} pairs ({n_cut} cut to {MAX_LENGTH}), rewards alone "
          + " ".join(f"{a:.4f}" for a in alone))

    # one pair per line, lists inline: small and diff-friendly
    head = json.dumps(ref, ensure_ascii=False, indent=1)[:-2]
    lines = [json.dumps(p, ensure_ascii=False) for p in out_pairs]
    text = head + ',\n "pairs": [\n' + ",\n".join(lines) + "\n ]\n}\n"
    assert json.loads(text) == {**ref, "pairs": out_pairs}
    (out_dir / "rewards_ref.json").write_text(text, encoding="utf-8")
    return ref


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data")
    ap.add_argument("--out", type=Path, default=ROOT / "tests/fixtures")
    args = ap.parse_args()

    texts, pairs = training_text(args.data), None
    print(f"training text: {len(texts)} texts, {sum(map(len, texts))} characters")
    for kind, make, sub in [("roberta", make_roberta_tokenizer, "tiny-roberta-rm"),
                            ("gpt2", make_gpt2_tokenizer, "tiny-gpt2-rm")]:
        raw = make(texts)
        assert raw.to_str() == make(texts).to_str(), f"{kind}: BPE training is not deterministic"
        out_dir = args.out / sub
        out_dir.mkdir(parents=True, exist_ok=True)
        for f in out_dir.iterdir():  # a clean directory: no stale files
            f.unlink()
        tok = wrap_and_save(kind, raw, out_dir)
        check_layout(kind, tok)

        if kind == "roberta":
            model = make_roberta(len(tok))
        else:
            model = make_gpt2(len(tok), tok.eos_token_id)
        model.save_pretrained(str(out_dir), safe_serialization=True)
        if kind == "roberta":
            pairs = pick_pairs(args.data, tok)  # picked by RoBERTa token counts, the same pairs for GPT-2
        ref = write_refs(kind, out_dir, tok, pairs)
        size = sum(f.stat().st_size for f in out_dir.iterdir())
        print(f"wrote {out_dir}: {ref['parameters']} parameters, {size / 1024:.0f} KB: "
              + ", ".join(f"{f.name} {f.stat().st_size}" for f in sorted(out_dir.iterdir())))


if __name__ == "__main__":
    main()
