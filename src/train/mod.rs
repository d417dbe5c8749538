//! Training: the pairwise loss, AdamW with schedule and clipping, and the loop with checkpoints.

pub mod loss;
pub mod optim;
pub mod trainer;
