//! Tokenizers from a checkpoint directory: `tokenizer.json`; for DeBERTa-v3 the SentencePiece
//! `spm.model`, converted to the same Unigram tokenizer transformers builds from it
//! (`DebertaV2Converter`: normalizer Replace(`\s{2,}|[\n\r\t]` → space) → NFC → right-strip, Metaspace
//! `▁` with a prepended space, `[CLS] A [SEP] B [SEP]` with token types 0/1, `[MASK]` appended); for BERT
//! checkpoints that ship only `vocab.txt` (prajjwal1/bert-small), the WordPiece tokenizer
//! `BertTokenizerFast` builds from it.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::json;
use tokenizers::Tokenizer;

/// Loads the tokenizer of a checkpoint directory, with truncation and padding switched off
/// (rmroute truncates and pads itself; all-MiniLM-L6-v2 ships both fixed at 128).
pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let json_path = dir.join("tokenizer.json");
    let spm_path = dir.join("spm.model");
    let vocab_path = dir.join("vocab.txt");
    let mut tokenizer = if json_path.is_file() {
        Tokenizer::from_file(&json_path)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("reading {}", json_path.display()))?
    } else if spm_path.is_file() {
        tokenizer_from_spm(&spm_path)?
    } else if vocab_path.is_file() {
        tokenizer_from_vocab(&vocab_path, do_lower_case(dir)?)?
    } else {
        bail!("no tokenizer in {}: expected tokenizer.json, spm.model or vocab.txt", dir.display());
    };
    tokenizer.with_truncation(None).map_err(anyhow::Error::msg)?;
    tokenizer.with_padding(None);
    Ok(tokenizer)
}

/// `do_lower_case` of the directory's `tokenizer_config.json`; true without one or without the key, as
/// transformers' `BertTokenizer` defaults.
pub fn do_lower_case(dir: &Path) -> Result<bool> {
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(true);
    }
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?)
            .with_context(|| format!("parsing {}", path.display()))?;
    match config.get("do_lower_case") {
        None | Some(serde_json::Value::Null) => Ok(true),
        Some(value) => {
            value.as_bool().with_context(|| format!("{}: `do_lower_case` is not true or false", path.display()))
        }
    }
}

/// Builds the tokenizer transformers' `BertTokenizerFast` makes of a `vocab.txt` (`BertConverter`):
/// BERT's normalizer (accents stripped when lowercasing) and pre-tokenizer, WordPiece with `##` and
/// `[UNK]`, `[CLS] A [SEP] B [SEP]` with token types 0/1, and the special tokens matched whole in the
/// text. A `[MASK]` the vocabulary lacks is appended, as transformers does.
pub fn tokenizer_from_vocab(path: &Path, do_lower_case: bool) -> Result<Tokenizer> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // Python reads the file with universal newlines and keeps the last id of a repeated token.
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut vocab = serde_json::Map::new();
    for (id, token) in text.split_terminator('\n').enumerate() {
        vocab.insert(token.to_string(), id.into());
    }
    let id_of = |name: &str| vocab.get(name).and_then(|v| v.as_u64());
    let need = |name: &str| {
        id_of(name).with_context(|| {
            format!("{} has no {name} token (a BERT vocab.txt needs [PAD], [UNK], [CLS] and [SEP])", path.display())
        })
    };
    let (pad, unk, cls, sep) = (need("[PAD]")?, need("[UNK]")?, need("[CLS]")?, need("[SEP]")?);
    let mask = id_of("[MASK]").unwrap_or(vocab.len() as u64);
    let mut added = [(pad, "[PAD]"), (unk, "[UNK]"), (cls, "[CLS]"), (sep, "[SEP]"), (mask, "[MASK]")];
    added.sort();
    let added: Vec<serde_json::Value> = added.iter().map(|&(id, name)| special(id as usize, name)).collect();
    let json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": do_lower_case},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": cls_sep_template(cls, sep),
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": vocab}
    });
    Tokenizer::from_bytes(serde_json::to_vec(&json)?)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("building the WordPiece tokenizer of {}", path.display()))
}

/// `[CLS] A [SEP]` and `[CLS] A [SEP] B [SEP]` with token types 0 and 1, as BERT and DeBERTa build pairs.
fn cls_sep_template(cls: impl Into<serde_json::Value>, sep: impl Into<serde_json::Value>) -> serde_json::Value {
    let (cls, sep) = (cls.into(), sep.into());
    json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
        "special_tokens": {
            "[CLS]": {"id": "[CLS]", "ids": [cls], "tokens": ["[CLS]"]},
            "[SEP]": {"id": "[SEP]", "ids": [sep], "tokens": ["[SEP]"]}
        }
    })
}

/// One piece of a SentencePiece model.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub text: String,
    pub score: f32,
    /// SentencePiece's type: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub kind: u64,
}

/// Builds the DeBERTa-v3 tokenizer from `spm.model` alone.
pub fn tokenizer_from_spm(path: &Path) -> Result<Tokenizer> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let pieces = parse_spm_pieces(&bytes).with_context(|| format!("parsing SentencePiece model {}", path.display()))?;
    let json = deberta_v3_tokenizer_json(&pieces)?;
    Tokenizer::from_bytes(serde_json::to_vec(&json)?).map_err(anyhow::Error::msg)
}

fn deberta_v3_tokenizer_json(pieces: &[Piece]) -> Result<serde_json::Value> {
    let id_of = |name: &str| pieces.iter().position(|p| p.text == name);
    let unk = pieces.iter().position(|p| p.kind == 2).context("the SentencePiece model has no unknown piece")?;
    let cls = id_of("[CLS]").context("the SentencePiece model has no [CLS] piece")?;
    let sep = id_of("[SEP]").context("the SentencePiece model has no [SEP] piece")?;
    let mut added = Vec::new();
    for (id, piece) in pieces.iter().enumerate() {
        if piece.kind == 2 || piece.kind == 3 {
            added.push(special(id, &piece.text));
        }
    }
    let mask = id_of("[MASK]").unwrap_or(pieces.len());
    if mask == pieces.len() {
        added.push(special(mask, "[MASK]"));
    }
    let vocab: Vec<serde_json::Value> = pieces.iter().map(|p| json!([p.text, p.score as f64])).collect();
    let metaspace = json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true});
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Replace", "pattern": {"Regex": "\\s{2,}|[\\n\\r\\t]"}, "content": " "},
            {"type": "NFC"},
            {"type": "Strip", "strip_left": false, "strip_right": true}
        ]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [metaspace.clone()]},
        "post_processor": cls_sep_template(cls, sep),
        "decoder": metaspace,
        "model": {"type": "Unigram", "unk_id": unk, "vocab": vocab, "byte_fallback": false}
    }))
}

fn special(id: usize, content: &str) -> serde_json::Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true})
}

/// Reads the pieces (field 1 of `ModelProto`: text = 1, score = 2, type = 3) from a serialized
/// SentencePiece model. A minimal protobuf reader: other fields are skipped by wire type.
pub fn parse_spm_pieces(bytes: &[u8]) -> Result<Vec<Piece>> {
    let mut pieces = Vec::new();
    let mut r = Reader { bytes, pos: 0 };
    while !r.done() {
        let (field, wire) = r.key()?;
        if field == 1 && wire == 2 {
            let body = r.length_delimited()?;
            pieces.push(parse_piece(body)?);
        } else {
            r.skip(wire)?;
        }
    }
    if pieces.is_empty() {
        bail!("no pieces found: not a SentencePiece model");
    }
    Ok(pieces)
}

fn parse_piece(bytes: &[u8]) -> Result<Piece> {
    let mut piece = Piece { text: String::new(), score: 0.0, kind: 1 };
    let mut r = Reader { bytes, pos: 0 };
    while !r.done() {
        match r.key()? {
            (1, 2) => piece.text = String::from_utf8(r.length_delimited()?.to_vec()).context("piece is not UTF-8")?,
            (2, 5) => piece.score = f32::from_le_bytes(r.fixed::<4>()?),
            (3, 0) => piece.kind = r.varint()?,
            (_, wire) => r.skip(wire)?,
        }
    }
    Ok(piece)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.bytes.get(self.pos).context("truncated varint")?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        bail!("varint too long")
    }

    fn key(&mut self) -> Result<(u64, u64)> {
        let key = self.varint()?;
        Ok((key >> 3, key & 7))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).context("truncated field")?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn length_delimited(&mut self) -> Result<&'a [u8]> {
        let n = self.varint()? as usize;
        self.take(n)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn skip(&mut self, wire: u64) -> Result<()> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.take(8).map(|_| ()),
            2 => self.length_delimited().map(|_| ()),
            5 => self.take(4).map(|_| ()),
            other => bail!("unsupported protobuf wire type {other}"),
        }
    }
}
