//! rmroute: train, evaluate and serve router-based reward models for RLHF.
//!
//! Data flows one way: raw files → [`data::prepare`] → pair JSONL → batches → model → rewards →
//! metrics → tables. The folders are the layers, bottom to top; a module imports only from the layers
//! below it:
//!
//! ```text
//! io        atomic files, staged directories, JSON with key paths (every layer may use it)
//! ops       fused CPU kernels with their own backward; simd
//! data      pair records, source converters, splits, domains, length ordering
//! nn        forward context, parameters and initialisers, linear / LoRA / bf16 layers, attention
//! backbone  one file per architecture family; tokenizer and pair encoding; checkpoint loading
//! heads     reward / classifier head, MoRE's sparse MoE, DMoERM's aggregator
//! model     the reward model: forward, adapters, Hugging Face and PEFT in and out
//! train     the loop, objectives, optimizer and schedule, checkpoints, stages
//! aspects   DMoERM's capability-point labels from an LLM
//! methods   one file per method; the config, the run manifest, train and load dispatch
//! results   eval, report, compare, plot
//! serve     HTTP
//! ```
//!
//! (`main.rs` and its `cli/` sit on top of all of them.)

pub mod aspects;
pub mod backbone;
pub mod data;
pub mod heads;
pub mod io;
pub mod methods;
pub mod model;
pub mod nn;
pub mod ops;
pub mod results;
pub mod serve;
pub mod train;
