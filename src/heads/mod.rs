//! What reads the encoder's output: the reward (or classifier) head of a family's layout, MoRE's
//! sparse mixture of reward experts, and DMoERM's aggregator over its experts.

pub mod aggregator;
pub mod moe;
pub mod reward;

pub use reward::RewardHead;
