//! Training: the pairwise loss (and, with the training issue, the loop, optimizer and checkpoints).

pub mod loss;
