//! Plain linear layers (heads, poolers, MLPs) and `x·Wᵀ + b` for inputs of any rank.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// A plain linear layer `x·Wᵀ + b` for layers that never take LoRA (heads, poolers).
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Loads `weight` and `bias`; missing ones (a fresh head) are initialised as transformers does:
    /// normal(0, `init_std`) weights, zero bias.
    pub fn load(vb: VarBuilder, in_dim: usize, out_dim: usize, init_std: f64) -> Result<Self> {
        let weight =
            vb.get_with_hints((out_dim, in_dim), "weight", candle_nn::Init::Randn { mean: 0.0, stdev: init_std })?;
        let bias = vb.get_with_hints(out_dim, "bias", candle_nn::init::ZERO)?;
        Ok(Self { weight, bias: Some(bias) })
    }

    /// [`Self::load`] for a layer without bias (GPT-2's `score`).
    pub fn load_without_bias(vb: VarBuilder, in_dim: usize, out_dim: usize, init_std: f64) -> Result<Self> {
        let weight =
            vb.get_with_hints((out_dim, in_dim), "weight", candle_nn::Init::Randn { mean: 0.0, stdev: init_std })?;
        Ok(Self { weight, bias: None })
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        linear(x, &self.weight, self.bias.as_ref())
    }
}

/// `x·Wᵀ + b` for inputs of any rank: leading dimensions are flattened into one 2-D matmul, which is
/// both the fastest CPU path and the cheapest backward (no broadcast weight to reduce).
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let in_dim = dims[dims.len() - 1];
    let rows = x.elem_count() / in_dim.max(1);
    let x = x.reshape((rows, in_dim))?;
    let y = match bias {
        Some(bias) => crate::ops::linear::linear_2d(&x, weight, bias)?,
        None => x.matmul(&weight.t()?)?,
    };
    let mut out_dims = dims;
    let last = out_dims.len() - 1;
    out_dims[last] = weight.dim(0)?;
    y.reshape(out_dims)
}
