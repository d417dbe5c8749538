//! A stage's resume key: the settings it trains with and a fingerprint of its training examples.

use anyhow::Result;
use serde::{Deserialize, Serialize};

/// What a stage's result depends on: the settings it trains with and a fingerprint of the examples
/// it trains on. A checkpoint and a finished stage record it; resuming either with another key is
/// refused (the stage would mix two trainings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageKey {
    pub settings: serde_json::Value,
    /// [`fingerprint`] of the stage's training examples.
    pub inputs: String,
}

impl StageKey {
    pub fn new(settings: &impl Serialize, inputs: String) -> Result<Self> {
        Ok(Self { settings: serde_json::to_value(settings)?, inputs })
    }

    /// Why `recorded` (a checkpoint's or a finished stage's key) does not fit this one, if it does not.
    pub fn mismatch(&self, recorded: &StageKey) -> Option<&'static str> {
        if recorded.settings != self.settings {
            Some("was trained with other settings than this run's: resume with the same config and flags, or start over with --force")
        } else if recorded.inputs != self.inputs {
            Some(
                "was trained on other data than this run has now (its training examples changed since): start over \
                 with --force, or put the data back",
            )
        } else {
            None
        }
    }
}

/// A fingerprint of training inputs: the SHA-256 of `items` in order, each length-prefixed.
pub fn fingerprint<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for item in items {
        hash.update((item.len() as u64).to_le_bytes());
        hash.update(item.as_bytes());
    }
    format!("{:x}", hash.finalize())
}
