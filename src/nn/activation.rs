//! The activation functions Hugging Face configs name.

use candle_core::{Result, Tensor};

/// The activations of Hugging Face configs that our encoders accept.
pub fn activation(name: &str, x: &Tensor) -> Result<Tensor> {
    match name {
        "gelu" => crate::ops::gelu::gelu_erf(x),
        "gelu_new" | "gelu_pytorch_tanh" => crate::ops::gelu::gelu_tanh(x),
        "relu" => x.relu(),
        "tanh" => x.tanh(),
        other => candle_core::bail!("unsupported activation `{other}` (expected gelu, gelu_new, relu or tanh)"),
    }
}
