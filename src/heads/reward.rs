//! Sequence-classification heads in Hugging Face's naming, so a model saved by rmroute loads in
//! transformers as `…ForSequenceClassification` and the other way round: a reward model has one output
//! (`num_labels = 1`), a router one per domain. Where the head's tensors sit and how it pools is the
//! family's [`HeadLayout`] (BERT: `bert.pooler.dense` (tanh) + `classifier`; DeBERTa: `pooler.dense`
//! (ContextPooler) + `classifier`).

use candle_core::{IndexOp, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::backbone::HeadLayout;
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
    /// The head of `layout` with `outputs` outputs, from `vb` (rooted where the checkpoint's keys
    /// start); missing tensors are initialised as transformers initialises a new head.
    pub fn load(vb: VarBuilder, layout: &HeadLayout, outputs: usize) -> Result<Self> {
        let (p_in, p_out) = (layout.pooler_in, layout.pooler_out);
        Ok(Self {
            pooler: Linear::load(vb.pp(&layout.pooler_key), p_in, p_out, layout.init_std)?,
            pooler_activation: layout.pooler_activation.clone(),
            pooler_dropout: layout.pooler_dropout,
            classifier: Linear::load(vb.pp(&layout.classifier_key), p_out, outputs, layout.init_std)?,
            classifier_dropout: layout.classifier_dropout,
        })
    }

    /// The head's tensors in checkpoint naming (`layout`'s keys).
    pub fn tensors(&self, layout: &HeadLayout) -> Vec<(String, Tensor)> {
        let mut out = vec![(format!("{}.weight", layout.pooler_key), self.pooler.weight.clone())];
        if let Some(b) = &self.pooler.bias {
            out.push((format!("{}.bias", layout.pooler_key), b.clone()));
        }
        out.push((format!("{}.weight", layout.classifier_key), self.classifier.weight.clone()));
        if let Some(b) = &self.classifier.bias {
            out.push((format!("{}.bias", layout.classifier_key), b.clone()));
        }
        out
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
