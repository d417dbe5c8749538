//! rmroute: train, evaluate and serve router-based reward models for RLHF.
//!
//! Data flows one way: raw files → [`data::prepare`] → pair JSONL → batches → model → rewards →
//! metrics → tables.

pub mod data;
