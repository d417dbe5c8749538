//! Turning `(prompt, response)` pairs into token ids as transformers' `tokenizer(prompt, response)`
//! does (`[CLS] prompt [SEP] response [SEP]`, token types 0/1), with one of two truncation strategies
//! for pairs longer than the model's limit, padded to the longest row of a batch.

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use tokenizers::utils::truncation::{truncate_encodings, TruncationDirection, TruncationParams, TruncationStrategy};
use tokenizers::{Encoding, Tokenizer};

/// What to cut from a pair longer than `max_length` tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Truncation {
    /// transformers' default (`truncation=True`), done by the tokenizers library itself so a model
    /// trained in Python scores the same here: both sides are cut from their ends; the shorter keeps
    /// up to half of the budget (the prompt when equal) and the longer takes the rest.
    #[default]
    LongestFirst,
    /// Keep the end of the prompt (the last turns) and the start of the response; the response gets
    /// at least half of the budget.
    KeepPromptEnd,
}

impl std::fmt::Display for Truncation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Truncation::LongestFirst => "longest_first",
            Truncation::KeepPromptEnd => "keep_prompt_end",
        })
    }
}

/// Which end of a prompt longer than the limit survives when the prompt is read alone (by a router).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum PromptTruncation {
    /// The end: the latest turns, which say most about what is being asked (transformers'
    /// `truncation_side="left"`).
    #[default]
    KeepEnd,
    /// The start (`truncation_side="right"`).
    KeepStart,
}

impl PromptTruncation {
    /// What a prompt read alone kept before routers had a setting of their own: its start under
    /// `longest_first`, its end under `keep_prompt_end`.
    pub fn following(truncation: Truncation) -> Self {
        match truncation {
            Truncation::LongestFirst => PromptTruncation::KeepStart,
            Truncation::KeepPromptEnd => PromptTruncation::KeepEnd,
        }
    }
}

/// Which side of a row padding goes: transformers' `padding_side`. Encoders read their first token and
/// are padded on the right; a decoder reads its last real token from the attention mask and counts
/// positions from it, so either side gives it the same rewards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PaddingSide {
    #[default]
    Right,
    Left,
}

/// Token ids of a padded batch, `(batch, seq)` each.
pub struct Batch {
    pub input_ids: Tensor,
    pub token_type_ids: Tensor,
    pub attention_mask: Tensor,
    /// Rows that had to be truncated to `max_length`.
    pub truncated: usize,
}

/// One row's ids and token types.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    pub truncated: bool,
}

/// A tokenizer with the model's length limit and truncation strategy.
pub struct PairEncoder {
    /// Has no truncation or padding of its own: this type does both.
    pub tokenizer: Tokenizer,
    pub max_length: usize,
    pub truncation: Truncation,
    /// Which end of a prompt read alone survives ([`Self::encode_single`]).
    pub prompt_truncation: PromptTruncation,
    /// The id padding is filled with (see [`crate::backbone::EncoderConfig::pad_token_id`]).
    pub pad_id: u32,
    pub padding_side: PaddingSide,
}

impl PairEncoder {
    pub fn new(tokenizer: Tokenizer, max_length: usize, truncation: Truncation) -> Self {
        let pad_id = tokenizer.token_to_id("[PAD]").or_else(|| tokenizer.token_to_id("<pad>")).unwrap_or(0);
        Self {
            tokenizer,
            max_length,
            truncation,
            prompt_truncation: PromptTruncation::following(truncation),
            pad_id,
            padding_side: PaddingSide::Right,
        }
    }

    /// Special tokens the tokenizer adds around a pair (3 for `[CLS] a [SEP] b [SEP]`).
    fn added_tokens(&self) -> usize {
        self.tokenizer.get_post_processor().map(|p| tokenizers::PostProcessor::added_tokens(p, true)).unwrap_or(0)
    }

    /// One pair's ids, truncated to `max_length` by the configured strategy.
    pub fn encode_row(&self, prompt: &str, response: &str) -> Result<Row> {
        let encode =
            |text: &str| -> Result<Encoding> { self.tokenizer.encode(text, false).map_err(anyhow::Error::msg) };
        let (mut a, mut b) = (encode(prompt)?, encode(response)?);
        let added = self.added_tokens();
        let budget = self.max_length.saturating_sub(added);
        let truncated = a.len() + b.len() > budget;
        if truncated {
            match self.truncation {
                Truncation::LongestFirst => {
                    let params = TruncationParams {
                        max_length: budget,
                        strategy: TruncationStrategy::LongestFirst,
                        stride: 0,
                        direction: TruncationDirection::Right,
                    };
                    (a, b) = match truncate_encodings(a, Some(b), &params).map_err(anyhow::Error::msg)? {
                        (a, Some(b)) => (a, b),
                        (_, None) => anyhow::bail!("the tokenizer dropped the response while truncating"),
                    };
                }
                Truncation::KeepPromptEnd => {
                    let keep_response = b.len().min(budget.saturating_sub(a.len()).max(budget / 2));
                    let keep_prompt = a.len().min(budget - keep_response);
                    a.truncate(keep_prompt, 0, TruncationDirection::Left);
                    b.truncate(keep_response, 0, TruncationDirection::Right);
                }
            }
        }
        let pair = self.tokenizer.post_process(a, Some(b), true).map_err(anyhow::Error::msg)?;
        Ok(Row { ids: pair.get_ids().to_vec(), type_ids: pair.get_type_ids().to_vec(), truncated })
    }

    /// A prompt alone (`tokenizer(prompt)`, for routers, which never see the response), cut to
    /// `max_length` keeping the end that `prompt_truncation` names.
    pub fn encode_single(&self, text: &str) -> Result<Row> {
        let mut a = self.tokenizer.encode(text, false).map_err(anyhow::Error::msg)?;
        let added =
            self.tokenizer.get_post_processor().map(|p| tokenizers::PostProcessor::added_tokens(p, false)).unwrap_or(0);
        let budget = self.max_length.saturating_sub(added);
        let truncated = a.len() > budget;
        if truncated {
            let direction = match self.prompt_truncation {
                PromptTruncation::KeepStart => TruncationDirection::Right,
                PromptTruncation::KeepEnd => TruncationDirection::Left,
            };
            a.truncate(budget, 0, direction);
        }
        let single = self.tokenizer.post_process(a, None, true).map_err(anyhow::Error::msg)?;
        Ok(Row { ids: single.get_ids().to_vec(), type_ids: single.get_type_ids().to_vec(), truncated })
    }

    /// Prompts alone, padded to the longest row.
    pub fn encode_prompts(&self, prompts: &[&str], device: &Device) -> Result<Batch> {
        let rows = prompts.iter().map(|p| self.encode_single(p)).collect::<Result<Vec<_>>>()?;
        self.pad(rows, device)
    }

    /// Prompt-and-response pairs, padded to the longest row.
    pub fn encode(&self, pairs: &[(&str, &str)], device: &Device) -> Result<Batch> {
        let rows = pairs.iter().map(|(p, r)| self.encode_row(p, r)).collect::<Result<Vec<_>>>()?;
        self.pad(rows, device)
    }

    fn pad(&self, rows: Vec<Row>, device: &Device) -> Result<Batch> {
        let seq = rows.iter().map(|r| r.ids.len()).max().unwrap_or(1).max(1);
        let (mut ids, mut types, mut mask) = (Vec::new(), Vec::new(), Vec::new());
        for row in &rows {
            let pad = seq - row.ids.len();
            let (real_ids, real_types, real_mask) =
                (row.ids.iter().copied(), row.type_ids.iter().copied(), std::iter::repeat_n(1u32, row.ids.len()));
            let (pad_ids, pad_types, pad_mask) =
                (std::iter::repeat_n(self.pad_id, pad), std::iter::repeat_n(0, pad), std::iter::repeat_n(0, pad));
            match self.padding_side {
                PaddingSide::Right => {
                    ids.extend(real_ids.chain(pad_ids));
                    types.extend(real_types.chain(pad_types));
                    mask.extend(real_mask.chain(pad_mask));
                }
                PaddingSide::Left => {
                    ids.extend(pad_ids.chain(real_ids));
                    types.extend(pad_types.chain(real_types));
                    mask.extend(pad_mask.chain(real_mask));
                }
            }
        }
        let shape = (rows.len(), seq);
        Ok(Batch {
            input_ids: Tensor::from_vec(ids, shape, device)?,
            token_type_ids: Tensor::from_vec(types, shape, device)?,
            attention_mask: Tensor::from_vec(mask, shape, device)?,
            truncated: rows.iter().filter(|r| r.truncated).count(),
        })
    }

    /// The tokenizer as `tokenizer.json` text (no truncation or padding, as loaded).
    pub fn tokenizer_json(&self) -> Result<String> {
        self.tokenizer.to_string(true).map_err(anyhow::Error::msg).context("serialising the tokenizer")
    }
}
