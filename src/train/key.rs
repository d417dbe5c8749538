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

    /// Why `recorded` (a checkpoint's or a finished stage's key) does not fit this one, if it does not:
    /// the first setting that differs is named, with both values.
    pub fn mismatch(&self, recorded: &StageKey) -> Option<String> {
        if recorded.settings != self.settings {
            let difference = match first_difference(&recorded.settings, &self.settings, String::new()) {
                Some((path, then, now)) if path.ends_with("prompt_truncation") => format!(
                    " (`{path}`: {then} there, {now} now; a router's is `router.truncation` in the method's section)"
                ),
                Some((path, then, now)) => format!(" (`{path}`: {then} there, {now} now)"),
                None => String::new(),
            };
            Some(format!(
                "was trained with other settings than this run's{difference}: resume with the same config and \
                 flags, or start over with --force"
            ))
        } else if recorded.inputs != self.inputs {
            Some(
                "was trained on other data than this run has now (its training examples changed since): start over \
                 with --force, or put the data back"
                    .into(),
            )
        } else {
            None
        }
    }
}

/// The key path of the first value that differs between `a` and `b`, and both values (`null` where one
/// lacks it).
fn first_difference(
    a: &serde_json::Value,
    b: &serde_json::Value,
    path: String,
) -> Option<(String, serde_json::Value, serde_json::Value)> {
    use serde_json::Value;
    let join = |key: &str| if path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|key| {
                let (u, v) = (x.get(key).unwrap_or(&Value::Null), y.get(key).unwrap_or(&Value::Null));
                first_difference(u, v, join(key))
            })
        }
        _ if a == b => None,
        _ => Some((path, a.clone(), b.clone())),
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
    ) -> Result<Option<String>> {
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
