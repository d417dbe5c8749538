//! Fused CPU kernels, each with its own backward pass where it trains, and the composed candle ops
//! beside it as its oracle and as the path on other devices and dtypes. Nothing here knows a model:
//! ops take tensors (and, for dropout, a mask) and return tensors.
//!
//! Why they exist: candle 0.11.1's fused softmax and layer norm pass no gradient (STYLE.md §8), and
//! composed ops keep every intermediate alive for the backward pass (see `../shared/bench/CPU_NOTES.md`).

pub mod adamw;
pub mod alloc;
pub mod attention_softmax;
pub mod bf16;
pub mod cpu;
pub mod dropout;
pub mod gelu;
pub mod layer_norm;
pub mod linear;
pub mod relative_scores;
pub mod simd;
