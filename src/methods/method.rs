//! The one enum that names a method everywhere: in configs, in `rmroute.json`, and to the loader.

use serde::{Deserialize, Serialize};

/// The methods of the papers that rmroute trains; each `train-*` subcommand trains one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// One reward model, fully fine-tuned on all domains mixed.
    #[default]
    Baseline,
    /// One frozen encoder with one LoRA adapter and its head, on all domains mixed.
    Baselora,
    /// A reward model per domain and an external router over prompts.
    Rodos,
    /// One reward model whose head is a sparse mixture of reward experts.
    More,
    /// One frozen base with a LoRA reward adapter per domain and a router adapter.
    Arliss,
    /// A router over tasks; per task a reward model, LoRA capability-point experts and an MLP over them.
    Dmoerm,
}

impl Method {
    /// The method's name, as configs and `rmroute.json` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Baseline => "baseline",
            Method::Baselora => "baselora",
            Method::Rodos => "rodos",
            Method::More => "more",
            Method::Arliss => "arliss",
            Method::Dmoerm => "dmoerm",
        }
    }

    /// The subcommand that trains it.
    pub fn command(self) -> &'static str {
        match self {
            Method::Baseline | Method::Baselora => "train-baseline",
            Method::Rodos => "train-rodos",
            Method::More => "train-more",
            Method::Arliss => "train-arliss",
            Method::Dmoerm => "train-dmoerm",
        }
    }

    /// Whether new domains join a finished run of it by `--add-domain`.
    pub fn adds_domains(self) -> bool {
        matches!(self, Method::Rodos | Method::Arliss)
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A method equals its name (`"baseline"`, as configs and `rmroute.json` spell it).
impl PartialEq<&str> for Method {
    fn eq(&self, name: &&str) -> bool {
        self.as_str() == *name
    }
}
