//! Sequence-classification heads in Hugging Face's naming, so a model saved by rmroute loads in
//! transformers as `…ForSequenceClassification` and the other way round: a reward model has one output
//! (`num_labels = 1`), a router one per domain. Where the head's tensors sit and how it pools is the
//! family's [`HeadLayout`] (BERT: `bert.pooler.dense` (tanh) + `classifier`; DeBERTa: `pooler.dense`
//! (ContextPooler) + `classifier`; RoBERTa: `classifier.dense` (tanh) + `classifier.out_proj`; GPT-2:
//! `score` without bias, on the last real token).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::backbone::HeadLayout;
use crate::nn::{activation, Ctx, Linear};

pub struct RewardHead {
    /// The dense layer and activation before the classifier (none for GPT-2's `score`).
    pub pooler: Option<Pooler>,
    pub classifier: Linear,
    classifier_dropout: f32,
}

/// A head's dense layer before the classifier.
pub struct Pooler {
    pub dense: Linear,
    activation: String,
    /// Dropout before the dense layer (DeBERTa's `pooler_dropout`, RoBERTa's classifier dropout).
    dropout: f32,
}

impl RewardHead {
    /// The head of `layout` with `outputs` outputs, from `vb` (rooted where the checkpoint's keys
    /// start); missing tensors are initialised as transformers initialises a new head.
    pub fn load(vb: VarBuilder, layout: &HeadLayout, outputs: usize) -> Result<Self> {
        let pooler = match &layout.pooler {
            Some(p) => Some(Pooler {
                dense: Linear::load(vb.pp(&p.key), p.in_dim, p.out_dim, layout.init_std)?,
                activation: p.activation.clone(),
                dropout: p.dropout,
            }),
            None => None,
        };
        let classifier_vb = vb.pp(&layout.classifier_key);
        let (c_in, std) = (layout.classifier_in, layout.init_std);
        Ok(Self {
            pooler,
            classifier: if layout.classifier_bias {
                Linear::load(classifier_vb, c_in, outputs, std)?
            } else {
                Linear::load_without_bias(classifier_vb, c_in, outputs, std)?
            },
            classifier_dropout: layout.classifier_dropout,
        })
    }

    /// The head's tensors in checkpoint naming (`layout`'s keys).
    pub fn tensors(&self, layout: &HeadLayout) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        let mut push = |key: &str, linear: &Linear| {
            out.push((format!("{key}.weight"), linear.weight.clone()));
            if let Some(b) = &linear.bias {
                out.push((format!("{key}.bias"), b.clone()));
            }
        };
        if let (Some(pooler), Some(p)) = (&self.pooler, &layout.pooler) {
            push(&p.key, &pooler.dense);
        }
        push(&layout.classifier_key, &self.classifier);
        out
    }

    /// Outputs of the classifier.
    pub fn outputs(&self) -> usize {
        self.classifier.weight.dims()[0]
    }

    /// The pooled vector the classifier reads, from the hidden state of the token the head reads
    /// (`(batch, hidden)`, see [`crate::backbone::ReadAt`]): `(batch, pooled size)` (DMoERM's aggregator
    /// reads its experts' pooled vectors).
    pub fn pooled(&self, token: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        match &self.pooler {
            Some(pooler) => {
                let token = ctx.dropout(token, pooler.dropout)?;
                activation(&pooler.activation, &pooler.dense.forward(&token)?)
            }
            None => Ok(token.clone()),
        }
    }

    /// Logits from the hidden state of the token the head reads: `(batch, outputs)`.
    pub fn logits(&self, token: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let pooled = ctx.dropout(&self.pooled(token, ctx)?, self.classifier_dropout)?;
        self.classifier.forward(&pooled)
    }

    /// One reward per row: `(batch,)`; an error for a head with several outputs (a router).
    pub fn forward(&self, token: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        if self.outputs() != 1 {
            candle_core::bail!("a head with {} outputs is a classifier, not a reward head", self.outputs());
        }
        self.logits(token, ctx)?.squeeze(1)
    }
}
