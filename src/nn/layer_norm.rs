//! LayerNorm as a module, on rmroute's fused op with a backward pass.
//!
//! NOTE: candle 0.11.1's fused `LayerNorm` passes no gradient (STYLE.md §8).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// LayerNorm over the last dimension, with a gradient (`ops::layer_norm`).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self { weight, bias, eps }
    }

    pub fn load(vb: VarBuilder, size: usize, eps: f64) -> Result<Self> {
        Ok(Self::new(
            vb.get_with_hints(size, "weight", candle_nn::init::ONE)?,
            vb.get_with_hints(size, "bias", candle_nn::init::ZERO)?,
            eps,
        ))
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::ops::layer_norm::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}
