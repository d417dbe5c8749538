//! Sequence-classification heads in Hugging Face's naming, so a model saved by rmroute loads in
//! transformers as `…ForSequenceClassification` and the other way round: a reward model has one output
//! (`num_labels = 1`), a router one per domain.
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
    pub fn load_bert(vb: VarBuilder, cfg: &BertConfig, outputs: usize) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            pooler: Linear::load(vb.pp("bert.pooler.dense"), h, h, cfg.initializer_range)?,
            pooler_activation: "tanh".into(),
            pooler_dropout: 0.0,
            classifier: Linear::load(vb.pp("classifier"), h, outputs, cfg.initializer_range)?,
            classifier_dropout: cfg.classifier_dropout.unwrap_or(cfg.hidden_dropout_prob),
        })
    }

    pub fn load_deberta(vb: VarBuilder, cfg: &DebertaConfig, outputs: usize) -> Result<Self> {
        let p = cfg.pooler_size();
        Ok(Self {
            pooler: Linear::load(vb.pp("pooler.dense"), cfg.hidden_size, p, cfg.initializer_range)?,
            pooler_activation: cfg.pooler_hidden_act.clone(),
            pooler_dropout: cfg.pooler_dropout,
            classifier: Linear::load(vb.pp("classifier"), p, outputs, cfg.initializer_range)?,
            classifier_dropout: cfg.cls_dropout.unwrap_or(cfg.hidden_dropout_prob),
        })
    }

    /// Outputs of the classifier.
    pub fn outputs(&self) -> usize {
        self.classifier.weight.dims()[0]
    }

    /// The pooled vector the classifier reads, from the first token's hidden state: `(batch, pooler size)`
    /// (DMoERM's aggregator reads its experts' pooled vectors).
    pub fn pooled(&self, hidden: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let first = hidden.i((.., 0))?.contiguous()?;
        let first = ctx.dropout(&first, self.pooler_dropout)?;
        activation(&self.pooler_activation, &self.pooler.forward(&first)?)
    }

    /// Logits from the first token's hidden state: `(batch, outputs)`.
    pub fn logits(&self, hidden: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let pooled = ctx.dropout(&self.pooled(hidden, ctx)?, self.classifier_dropout)?;
        self.classifier.forward(&pooled)
    }

    /// One reward per row: `(batch,)`; an error for a head with several outputs (a router).
    pub fn forward(&self, hidden: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        if self.outputs() != 1 {
            candle_core::bail!("a head with {} outputs is a classifier, not a reward head", self.outputs());
        }
        self.logits(hidden, ctx)?.squeeze(1)
    }
}
