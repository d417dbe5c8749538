//! RoBERTa encoder, as transformers' `modeling_roberta.py`: BERT's layers (`roberta.encoder.layer.N`,
//! the same module names, so LoRA targets `query`/`key`/`value`/`dense` as on BERT) under embeddings of
//! its own, whose position ids count real tokens from `padding_idx + 1` (computed from the input ids, as
//! transformers does, so padding on either side leaves a token's position alone), and no token types
//! (transformers' RoBERTa tokenizer returns none: every row reads type 0). The sequence-classification
//! head is `classifier.dense` (tanh) then `classifier.out_proj` on the first token (`<s>`).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::bert::{check_absolute_positions, BertConfig, BertEmbeddings, BertLayers};
use super::{Checkpoint, Encoder, EncoderConfig, Family, HeadLayout, PoolerLayout, ReadAt};
use crate::nn::lora::LoraLinear;
use crate::nn::Ctx;

/// The RoBERTa family (`model_type: roberta`).
pub const FAMILY: Family = Family {
    model_type: "roberta",
    prefix: "roberta",
    bare_modules: &["embeddings", "encoder", "pooler"],
    classifier_class: "RobertaForSequenceClassification",
    base_class: "RobertaModel",
    config: read_config,
};

/// `pad_token_id` where a RoBERTa `config.json` leaves it out (transformers' `RobertaConfig`).
const DEFAULT_PAD: usize = 1;

/// A RoBERTa `config.json`: BERT's keys, with RoBERTa's default padding id.
#[derive(Debug, Clone)]
pub struct RobertaConfig(pub BertConfig);

fn read_config(checkpoint: &Checkpoint) -> anyhow::Result<Box<dyn EncoderConfig>> {
    let mut config: BertConfig = checkpoint.parse_config()?;
    if checkpoint.config.get("pad_token_id").is_none_or(|v| v.is_null()) {
        config.pad_token_id = DEFAULT_PAD;
    }
    let (h, heads) = (config.hidden_size, config.num_attention_heads);
    super::checkpoint::check_shape(h, heads, None, config.num_hidden_layers, config.vocab_size)
        .map_err(|e| checkpoint.config_error(e))?;
    if config.max_position_embeddings <= config.pad_token_id + 1 {
        return Err(checkpoint.config_error(format!(
            "`max_position_embeddings` {} leaves no position after `pad_token_id` {} (positions start at pad_token_id + 1)",
            config.max_position_embeddings, config.pad_token_id
        )));
    }
    if config.pad_token_id >= config.vocab_size {
        return Err(checkpoint.config_error(format!(
            "`pad_token_id` {} is not below `vocab_size` {}",
            config.pad_token_id, config.vocab_size
        )));
    }
    Ok(Box::new(RobertaConfig(config)))
}

impl EncoderConfig for RobertaConfig {
    fn head(&self) -> HeadLayout {
        let c = &self.0;
        let dropout = c.classifier_dropout.unwrap_or(c.hidden_dropout_prob);
        HeadLayout {
            read_at: ReadAt::First,
            pooler: Some(PoolerLayout {
                key: "classifier.dense".into(),
                in_dim: c.hidden_size,
                out_dim: c.hidden_size,
                activation: "tanh".into(),
                dropout,
            }),
            classifier_key: "classifier.out_proj".into(),
            classifier_in: c.hidden_size,
            classifier_bias: true,
            classifier_dropout: dropout,
            init_std: c.initializer_range,
            modules_to_save: vec!["classifier".into()],
        }
    }

    fn max_positions(&self) -> Option<usize> {
        // The first `pad_token_id + 1` rows of the position table are never a real token's.
        Some(self.0.max_position_embeddings - self.0.pad_token_id - 1)
    }

    fn hidden_size(&self) -> usize {
        self.0.hidden_size
    }

    fn pad_token_id(&self) -> Option<u32> {
        Some(self.0.pad_token_id as u32)
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn Encoder>> {
        check_absolute_positions(&self.0)?;
        Ok(Box::new(Roberta {
            embeddings: RobertaEmbeddings::load(vb.pp("embeddings"), &self.0)?,
            layers: BertLayers::load(vb, &self.0)?,
        }))
    }
}

/// `RobertaEmbeddings`: BERT's, with position ids counted from `padding_idx + 1` and token type 0.
struct RobertaEmbeddings {
    embeddings: BertEmbeddings,
    padding_idx: u32,
}

impl RobertaEmbeddings {
    fn load(vb: VarBuilder, config: &BertConfig) -> Result<Self> {
        Ok(Self { embeddings: BertEmbeddings::load(vb, config)?, padding_idx: config.pad_token_id as u32 })
    }

    /// transformers' `create_position_ids_from_input_ids`: a real token's position is `padding_idx`
    /// plus the number of real tokens up to and including it; a pad's is `padding_idx`.
    fn position_ids(&self, input_ids: &Tensor) -> Result<Tensor> {
        let rows = input_ids.to_vec2::<u32>()?;
        let mut positions = Vec::with_capacity(rows.len() * rows.first().map_or(0, Vec::len));
        for row in &rows {
            let mut count = 0;
            for &id in row {
                if id == self.padding_idx {
                    positions.push(self.padding_idx);
                } else {
                    count += 1;
                    positions.push(self.padding_idx + count);
                }
            }
        }
        Tensor::from_vec(positions, input_ids.dims2()?, input_ids.device())
    }

    fn forward(&self, input_ids: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let token_types = input_ids.zeros_like()?;
        self.embeddings.forward(input_ids, &token_types, Some(&self.position_ids(input_ids)?), ctx)
    }
}

/// `RobertaModel` without its pooler (`…ForSequenceClassification` has none).
struct Roberta {
    embeddings: RobertaEmbeddings,
    layers: BertLayers,
}

impl Encoder for Roberta {
    fn forward(
        &self,
        input_ids: &Tensor,
        _token_type_ids: &Tensor,
        attention_mask: &Tensor,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let hidden = self.embeddings.forward(input_ids, ctx)?;
        self.layers.forward(hidden, attention_mask, ctx)
    }

    fn lora_linears(&self) -> Vec<&LoraLinear> {
        self.layers.lora_linears()
    }

    fn lora_linears_mut(&mut self) -> Vec<&mut LoraLinear> {
        self.layers.lora_linears_mut()
    }
}
