//! Training: objectives and their losses, AdamW with schedule and clipping, and the one loop with
//! checkpoints that every method uses.

pub mod fused_adamw;
pub mod loss;
pub mod objective;
pub mod optim;
pub mod trainer;
