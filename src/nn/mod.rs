//! Layers every model is built from: the forward context, the parameter store with its seeded
//! initialisers, linear layers (plain, LoRA, bf16), layer norm, activations and attention
//! probabilities. Built on `ops`; nothing here knows an architecture.

pub mod activation;
pub mod attention;
pub mod bf16;
pub mod ctx;
pub mod layer_norm;
pub mod linear;
pub mod lora;
pub mod lora_config;
pub mod params;
pub mod residual;

pub use activation::activation;
pub use ctx::{Adapters, Ctx, Run};
pub use layer_norm::LayerNorm;
pub use linear::{linear, Linear};
