//! A LoRA adapter's settings in PEFT's naming (`r`, `lora_alpha`, `lora_dropout`, `target_modules`):
//! the config's `lora` section and the fields of PEFT's `adapter_config.json` rmroute reads, and which
//! layers they target.

use serde::{Deserialize, Serialize};

/// The PEFT `adapter_config.json` fields rmroute uses (other PEFT fields are written with their defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    #[serde(rename = "r")]
    pub rank: usize,
    #[serde(rename = "lora_alpha")]
    pub alpha: f64,
    #[serde(rename = "lora_dropout", default)]
    pub dropout: f64,
    /// Which linear layers get the adapter.
    pub target_modules: TargetModules,
}

/// PEFT's two ways of naming the adapted layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// Module names matched against the end of each layer's path (`query_proj`, `dense`).
    Names(Vec<String>),
    /// A regular expression that must match a layer's whole path.
    Pattern(String),
}

impl TargetModules {
    pub fn names(names: &[&str]) -> Self {
        Self::Names(names.iter().map(|s| s.to_string()).collect())
    }

    pub fn is_empty(&self) -> bool {
        match self {
            Self::Names(names) => names.is_empty(),
            Self::Pattern(p) => p.is_empty(),
        }
    }

    /// An exact pattern for these layer paths (what rmroute writes to PEFT files, so PEFT adapts
    /// exactly the layers rmroute adapted: a bare `dense` would also catch the pooler in Python).
    pub fn exactly(paths: &[&str]) -> Self {
        let alternatives: Vec<String> = paths.iter().map(|p| regex::escape(p)).collect();
        Self::Pattern(format!("^(?:{})$", alternatives.join("|")))
    }
}

impl std::fmt::Display for TargetModules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Names(names) => write!(f, "{names:?}"),
            Self::Pattern(p) => write!(f, "/{p}/"),
        }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Refuses what would divide by zero or adapt nothing.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.rank == 0 {
            return Err("`r` must be positive (the LoRA rank)".into());
        }
        if !self.alpha.is_finite() {
            return Err(format!("`lora_alpha` must be a finite number, got {}", self.alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("`lora_dropout` must be in [0, 1), got {}", self.dropout));
        }
        if self.target_modules.is_empty() {
            return Err("`target_modules` is empty".into());
        }
        if let TargetModules::Pattern(p) = &self.target_modules {
            regex::Regex::new(p).map_err(|e| format!("`target_modules` is not a valid regular expression: {e}"))?;
        }
        Ok(())
    }

    /// True when the module at `path` is targeted: PEFT matches a list of names on the last components
    /// of the path, and a string as a regular expression on the whole path.
    pub fn targets(&self, path: &str) -> bool {
        match &self.target_modules {
            TargetModules::Names(names) => names.iter().any(|t| path == t || path.ends_with(&format!(".{t}"))),
            TargetModules::Pattern(p) => regex::Regex::new(&format!("^(?:{p})$")).is_ok_and(|re| re.is_match(path)),
        }
    }
}
