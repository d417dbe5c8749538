//! A stage's resume key: the settings it trains with and a fingerprint of its training examples; and
//! how a stage reads what rmroute 0.1.0 recorded in place of one.

use anyhow::Result;
use serde::{Deserialize, Serialize};

/// rmroute 0.1.0 recorded a stage's whole effective config (`TrainConfig`, a stage's overrides applied)
/// where a key is now, and checkpoints without a fingerprint of the data. A stage that reads such a
/// record turns that config into the settings it implies, as far as it can tell: a JSON object whose
/// fields are compared with the key's fields of the same names.
pub type LegacySettings = fn(&serde_json::Value) -> Result<serde_json::Value>;

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

impl StageKey {
    /// Why a record of rmroute 0.1.0 (its `config`, and its data fingerprint where it has one) does
    /// not fit this key, if it does not.
    pub fn legacy_mismatch(
        &self,
        legacy: LegacySettings,
        config: &serde_json::Value,
        inputs: Option<&str>,
    ) -> Result<Option<&'static str>> {
        let recorded = legacy(config)?;
        let fits =
            recorded.as_object().is_some_and(|fields| fields.iter().all(|(k, v)| self.settings.get(k) == Some(v)));
        let key = StageKey {
            settings: if fits { self.settings.clone() } else { recorded },
            inputs: inputs.unwrap_or(&self.inputs).to_string(),
        };
        Ok(self.mismatch(&key))
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
