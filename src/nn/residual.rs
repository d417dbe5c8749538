//! The two halves of a post-norm transformer layer's feed-forward path as BERT-family checkpoints name
//! them: `…Intermediate` (a projection and its activation) and `…Output` / `…SelfOutput` (a projection,
//! dropout, then layer norm over the sum with the residual).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::lora::LoraLinear;
use super::{activation, Ctx, LayerNorm};

/// `dense` (LoRA-capable), dropout, then `LayerNorm` of the sum with the residual.
pub struct DenseResidualNorm {
    pub dense: LoraLinear,
    layer_norm: LayerNorm,
    dropout: f32,
}

impl DenseResidualNorm {
    /// Loads `dense` (`in_dim` → `out_dim`) and `LayerNorm` at `vb`.
    pub fn load(vb: VarBuilder, in_dim: usize, out_dim: usize, eps: f64, dropout: f32) -> Result<Self> {
        Ok(Self {
            dense: LoraLinear::load(vb.pp("dense"), in_dim, out_dim, true)?,
            layer_norm: LayerNorm::load(vb.pp("LayerNorm"), out_dim, eps)?,
            dropout,
        })
    }

    pub fn forward(&self, x: &Tensor, residual: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let out = ctx.dropout(&self.dense.forward(x, ctx)?, self.dropout)?;
        self.layer_norm.forward(&(out + residual)?)
    }
}

/// `dense` (LoRA-capable) and the activation a config names.
pub struct DenseActivation {
    pub dense: LoraLinear,
    activation: String,
}

impl DenseActivation {
    pub fn load(vb: VarBuilder, in_dim: usize, out_dim: usize, activation: &str) -> Result<Self> {
        Ok(Self { dense: LoraLinear::load(vb.pp("dense"), in_dim, out_dim, true)?, activation: activation.to_string() })
    }

    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        activation(&self.activation, &self.dense.forward(x, ctx)?)
    }
}
