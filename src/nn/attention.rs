//! Attention probabilities for a forward pass: the fused op (`ops::attention_softmax`) with its dropout
//! mask drawn from the pass's stream, one draw per score, as plain dropout draws.

use candle_core::{Result, Tensor};

use super::Ctx;
use crate::ops::attention_softmax;
use crate::ops::dropout::DropoutMask;

/// `dropout(softmax(scores / scale with masked keys at the lowest value))`, dropout only in training.
pub fn attention_probs(scores: &Tensor, keep: &Tensor, scale: f64, dropout: f32, ctx: &Ctx) -> Result<Tensor> {
    let mask =
        (ctx.train && dropout > 0.0).then(|| DropoutMask::from_draws(&ctx.dropout_draws(scores.elem_count()), dropout));
    attention_softmax::attention_probs(scores, keep, scale, mask.as_ref())
}
