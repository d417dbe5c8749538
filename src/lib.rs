//! rmroute: train, evaluate and serve router-based reward models for RLHF.
//!
//! Data flows one way: raw files → [`data::prepare`] → pair JSONL → batches → model → rewards →
//! metrics → tables.

pub mod alloc;
pub mod aspects;
pub mod attention_softmax;
pub mod backbone;
pub mod base;
pub mod bf16;
pub mod bucket;
pub mod compare;
pub mod config;
pub mod cpu_op;
pub mod data;
pub mod dropout;
pub mod encoding;
pub mod eval;
pub mod gelu;
pub mod heads;
pub mod layer_norm;
pub mod linear;
pub mod load;
pub mod lora;
pub mod methods;
pub mod model;
pub mod moe;
pub mod nn;
pub mod plot;
pub mod relative_scores;
pub mod report;
pub mod run;
pub mod serve;
pub mod simd;
pub mod train;
