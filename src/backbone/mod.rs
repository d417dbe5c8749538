//! The backbones: one file per architecture family (one struct per Hugging Face module, so a struct's
//! path is its checkpoint key path), their tokenizer and pair encoding, and checkpoint loading.
//!
//! A family joins by adding its file and one line to [`FAMILIES`]: its [`Family`] says how its
//! checkpoints are recognised and named, builds its encoder, and describes its sequence-classification
//! head as a [`HeadLayout`] (the heads are built from that, in `heads/`).

pub mod bert;
pub mod checkpoint;
pub mod deberta;
pub mod encoding;
pub mod gpt2;
pub mod roberta;
pub mod tokenizer;

use anyhow::{bail, Result};
use candle_core::{DType, IndexOp, Tensor};
use candle_nn::VarBuilder;

pub use checkpoint::{load_checkpoint, resolve_model_dir, Checkpoint};
pub use encoding::{Batch, PaddingSide, PairEncoder, PromptTruncation, Truncation};

use crate::nn::lora::LoraLinear;
use crate::nn::Ctx;

/// Every family rmroute reads, by `model_type`.
pub const FAMILIES: &[&Family] = &[&bert::FAMILY, &deberta::FAMILY, &roberta::FAMILY, &gpt2::FAMILY];

/// The family of a checkpoint's `model_type`; an error naming the ones there are.
pub fn family(model_type: &str) -> Result<&'static Family> {
    match FAMILIES.iter().find(|f| f.model_type == model_type) {
        Some(family) => Ok(family),
        None => {
            let known: Vec<&str> = FAMILIES.iter().map(|f| f.model_type).collect();
            bail!("model_type `{model_type}` is not supported ({})", known.join(" or "))
        }
    }
}

/// An architecture family: how its checkpoints are named and how its encoder is built.
#[derive(Debug)]
pub struct Family {
    /// `model_type` in `config.json`.
    pub model_type: &'static str,
    /// The encoder's attribute in transformers' `…ForSequenceClassification` (`bert`, `deberta`), the
    /// prefix of its tensors there.
    pub prefix: &'static str,
    /// Top-level modules of the bare encoder (`embeddings`, `encoder`, …): a checkpoint saved as the
    /// bare model (all-MiniLM-L6-v2 is a `BertModel`) has them without the prefix.
    pub bare_modules: &'static [&'static str],
    /// transformers' class of the reward model (`BertForSequenceClassification`).
    pub classifier_class: &'static str,
    /// transformers' class of the bare encoder (`BertModel`).
    pub base_class: &'static str,
    /// Reads a checkpoint's `config.json` as the family's config (shapes checked).
    pub config: fn(&Checkpoint) -> Result<Box<dyn EncoderConfig>>,
}

/// A family's `config.json`, read: what the rest of the model needs to know of the encoder, and how
/// to build it.
pub trait EncoderConfig {
    /// Where the sequence-classification head sits and how it reads the encoder.
    fn head(&self) -> HeadLayout;
    /// The longest input the encoder can encode: `max_position_embeddings` where it adds absolute
    /// positions, `None` where positions are relative only (DeBERTa-v3), which transformers runs at any length.
    fn max_positions(&self) -> Option<usize>;
    fn hidden_size(&self) -> usize;
    /// The id batches are padded with where the family fixes it: RoBERTa's `padding_idx` (its position
    /// ids are counted from it), a decoder's `pad_token_id` or else its `eos_token_id` (transformers'
    /// rule). `None`: the tokenizer's pad token. Rewards never depend on it (padding is masked and
    /// heads read the token the mask names), but Python must read the same ids.
    fn pad_token_id(&self) -> Option<u32> {
        None
    }
    /// The encoder, from `vb` rooted at the family's prefix.
    fn build(&self, vb: VarBuilder) -> candle_core::Result<Box<dyn Encoder>>;
}

/// An encoder of any family.
pub trait Encoder: Send + Sync {
    /// The last hidden states `(batch, seq, hidden)`; `attention_mask` is 1 for tokens, 0 for padding
    /// (on either side); families without token types ignore `token_type_ids`.
    fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        ctx: &Ctx,
    ) -> candle_core::Result<Tensor>;

    /// The layers that take LoRA adapters, in a fixed order (adapters are initialised in it).
    fn lora_linears(&self) -> Vec<&LoraLinear>;

    fn lora_linears_mut(&mut self) -> Vec<&mut LoraLinear>;
}

/// Where a family's sequence-classification head sits in its checkpoints and how it reads the encoder:
/// the hidden state of one token ([`ReadAt`]), through an optional pooler (dense + activation), then
/// the classifier.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadLayout {
    /// The token whose hidden state the head reads.
    pub read_at: ReadAt,
    /// The dense layer before the classifier, if the family has one.
    pub pooler: Option<PoolerLayout>,
    /// The classifier (`classifier`, `classifier.out_proj`, `score`).
    pub classifier_key: String,
    /// The classifier's input size: the pooler's output, else the hidden size.
    pub classifier_in: usize,
    /// Whether the classifier has a bias (GPT-2's `score` has none).
    pub classifier_bias: bool,
    /// Dropout before the classifier.
    pub classifier_dropout: f32,
    /// Standard deviation of a new head's weights (`initializer_range`).
    pub init_std: f64,
    /// The head's modules as PEFT names them in `modules_to_save` (matched on module names).
    pub modules_to_save: Vec<String>,
}

/// The token a head reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAt {
    /// The first token (`[CLS]`, `<s>`): encoders.
    First,
    /// The last token the attention mask keeps, wherever the padding is: decoders, whose last token
    /// is the only one that has seen the whole input.
    LastReal,
}

impl ReadAt {
    /// The hidden state of the token read in each row: `(batch, hidden)` from `(batch, seq, hidden)`.
    /// The last real token is found from the attention mask (never from a pad id, which a decoder may
    /// share with its eos), so left and right padding read the same token.
    pub fn read(self, hidden: &Tensor, attention_mask: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            ReadAt::First => hidden.i((.., 0))?.contiguous(),
            ReadAt::LastReal => {
                let (batch, seq, size) = hidden.dims3()?;
                let mask = attention_mask.to_dtype(DType::U32)?.to_vec2::<u32>()?;
                let mut rows = Vec::with_capacity(batch);
                for (row, mask) in mask.iter().enumerate() {
                    let Some(last) = mask.iter().rposition(|&m| m != 0) else {
                        candle_core::bail!("row {row} of the batch has no token to read (its attention mask is all 0)");
                    };
                    rows.push((row * seq + last) as u32);
                }
                let index = Tensor::from_vec(rows, batch, hidden.device())?;
                hidden.reshape((batch * seq, size))?.index_select(&index, 0)
            }
        }
    }
}

/// A head's pooler: a dense layer and its activation on the token read.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolerLayout {
    /// The dense layer (`bert.pooler.dense`, `pooler.dense`, `classifier.dense`).
    pub key: String,
    pub in_dim: usize,
    pub out_dim: usize,
    pub activation: String,
    /// Dropout before the pooler (DeBERTa's `pooler_dropout`, RoBERTa's classifier dropout; none for BERT).
    pub dropout: f32,
}

impl HeadLayout {
    /// Whether a checkpoint tensor belongs to the head (the pooler's module or the classifier).
    pub fn owns(&self, key: &str) -> bool {
        let pooler_module =
            self.pooler.as_ref().map(|p| p.key.rsplit_once('.').map_or(p.key.as_str(), |(module, _)| module));
        pooler_module
            .iter()
            .chain([self.classifier_key.as_str()].iter())
            .any(|m| key.strip_prefix(m).is_some_and(|rest| rest.starts_with('.')))
    }

    /// The size of the vector the classifier reads (what MoRE and DMoERM's aggregator read too).
    pub fn pooled_size(&self) -> usize {
        self.classifier_in
    }
}

/// Defaults shared by the Hugging Face configs of the encoder families (transformers' values).
pub(crate) mod defaults {
    pub fn act() -> String {
        "gelu".into()
    }
    pub fn dropout() -> f32 {
        0.1
    }
    pub fn positions() -> usize {
        512
    }
    pub fn init() -> f64 {
        0.02
    }
}
