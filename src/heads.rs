//! Reward heads in Hugging Face's naming, so a single-domain reward model saved by rmroute loads in
//! transformers as `…ForSequenceClassification` with `num_labels = 1`, and the other way round.
//! BERT: `bert.pooler.dense` (tanh) + `classifier`; DeBERTa: `pooler.dense` (ContextPooler) + `classifier`.

use candle_core::{IndexOp, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::backbone::{BertConfig, DebertaConfig};
use crate::nn::{activation, Ctx, Linear};

pub struct RewardHead {
    pub pooler: Linear,
    pooler_activation: String,
    /// Dropout before the pooler (DeBERTa's `pooler_dropout`; none for BERT).
    pooler_dropout: f32,
    pub classifier: Linear,
    classifier_dropout: f32,
}

impl RewardHead {
    pub fn load_bert(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            pooler: Linear::load(vb.pp("bert.pooler.dense"), h, h, cfg.initializer_range)?,
            pooler_activation: "tanh".into(),
            pooler_dropout: 0.0,
            classifier: Linear::load(vb.pp("classifier"), h, 1, cfg.initializer_range)?,
            classifier_dropout: cfg.classifier_dropout.unwrap_or(cfg.hidden_dropout_prob),
        })
    }

    pub fn load_deberta(vb: VarBuilder, cfg: &DebertaConfig) -> Result<Self> {
        let p = cfg.pooler_size();
        Ok(Self {
            pooler: Linear::load(vb.pp("pooler.dense"), cfg.hidden_size, p, cfg.initializer_range)?,
            pooler_activation: cfg.pooler_hidden_act.clone(),
            pooler_dropout: cfg.pooler_dropout,
            classifier: Linear::load(vb.pp("classifier"), p, 1, cfg.initializer_range)?,
            classifier_dropout: cfg.cls_dropout.unwrap_or(cfg.hidden_dropout_prob),
        })
    }

    /// One reward per row, from the first token's hidden state: `(batch,)`.
    pub fn forward(&self, hidden: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let first = hidden.i((.., 0))?.contiguous()?;
        let first = ctx.dropout(&first, self.pooler_dropout)?;
        let pooled = activation(&self.pooler_activation, &self.pooler.forward(&first)?)?;
        let pooled = ctx.dropout(&pooled, self.classifier_dropout)?;
        self.classifier.forward(&pooled)?.squeeze(1)
    }
}
