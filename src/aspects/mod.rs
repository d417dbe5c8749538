//! Capability-point labels for DMoERM, asked of an OpenAI-compatible chat-completions server
//! (`rmroute label-aspects`).
//!
//! DMoERM trains one LoRA expert per capability point (helpfulness, harmlessness, …) and needs, for
//! each pair, which response is better on each point. As in the paper, a judge LLM is asked twice per
//! pair and point, the second time with the responses swapped, and only answers that agree across the
//! two orders become labels: a judge that favours a position then yields no label rather than a
//! biased one.
//!
//! [`run::label_aspects`] ties it together: [`answers`] keeps every answer on disk so a run resumes
//! where it stopped, [`client`] asks the server with retries.

pub mod answers;
pub mod client;
pub mod run;
mod splits;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One capability point: its key in a record's `aspects` and the one-line description the judge reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aspect {
    pub name: String,
    pub description: String,
}

/// A bad `--aspects` file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", file.display())]
pub struct AspectsFileError {
    pub file: PathBuf,
    pub message: String,
}

/// Reads `{"name": "description", …}`, sorted by name. Names become record keys and DMoERM stage
/// folders (`expert-<task>-<name>`), so they must be non-empty, free of whitespace and path separators,
/// and not start with `.`.
pub fn read_aspects(path: &Path) -> Result<Vec<Aspect>, AspectsFileError> {
    let err = |message: String| AspectsFileError { file: path.to_path_buf(), message };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(format!("not JSON: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(err(r#"expected a JSON object {"name": "one-line description", …}"#.into()));
    };
    if map.is_empty() {
        return Err(err("no capability points: name at least one".into()));
    }
    let mut aspects = Vec::with_capacity(map.len());
    for (name, description) in map {
        if name.is_empty() || name.starts_with('.') || name.chars().any(|c| c.is_whitespace() || c == '/' || c == '\\')
        {
            return Err(err(format!(
                "capability point {name:?}: a name must be non-empty, have no whitespace, `/` or `\\`, and not \
                 start with `.` (it names a folder)"
            )));
        }
        let Some(description) = description.as_str().map(str::trim).filter(|d| !d.is_empty()) else {
            return Err(err(format!("capability point `{name}`: the description must be a non-empty string")));
        };
        aspects.push(Aspect { name, description: description.to_string() });
    }
    Ok(aspects)
}

/// Which response is shown first. The paper's consistency check asks both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Response A = chosen, B = rejected.
    ChosenFirst,
    /// Response A = rejected, B = chosen.
    RejectedFirst,
}

impl std::fmt::Display for Order {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Order::ChosenFirst => "chosen first",
            Order::RejectedFirst => "rejected first",
        })
    }
}

impl Order {
    pub const BOTH: [Order; 2] = [Order::ChosenFirst, Order::RejectedFirst];

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The judge's answer to one question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Verdict {
    A,
    B,
    #[serde(rename = "TIE")]
    Tie,
}

/// Reads a judge's reply: `A`, `B` or `TIE` in any case, optionally as `Response A`, wrapped in quotes,
/// Markdown or punctuation. Anything else is `None`, never a guess.
pub fn parse_verdict(reply: &str) -> Option<Verdict> {
    let trimmed = reply.trim_matches(|c: char| c.is_whitespace() || c.is_ascii_punctuation() || "“”‘’".contains(c));
    let lower = trimmed.to_ascii_lowercase();
    let word = lower
        .strip_prefix("response")
        .map(|w| w.trim_start_matches(|c: char| c.is_whitespace() || c.is_ascii_punctuation()))
        .unwrap_or(&lower);
    match word {
        "a" => Some(Verdict::A),
        "b" => Some(Verdict::B),
        "tie" => Some(Verdict::Tie),
        _ => None,
    }
}

/// The label from both orders: +1 chosen better, -1 rejected better, 0 tie; `None` when the orders
/// disagree (the pair gets no label for that point).
pub fn consistent_label(chosen_first: Verdict, rejected_first: Verdict) -> Option<i8> {
    match (chosen_first, rejected_first) {
        (Verdict::A, Verdict::B) => Some(1),
        (Verdict::B, Verdict::A) => Some(-1),
        (Verdict::Tie, Verdict::Tie) => Some(0),
        _ => None,
    }
}

const SYSTEM: &str = "You compare two responses of an AI assistant to the same conversation on one capability \
point. Judge only that point, not overall quality, and do not let the order of the responses sway you.";

/// The system and user messages of one question.
pub fn question_messages(prompt: &str, first: &str, second: &str, aspect: &Aspect) -> [String; 2] {
    let user = format!(
        "[Conversation]\n{prompt}\n\n[Response A]\n{first}\n\n[Response B]\n{second}\n\n[Capability point]\n{}: {}\n\n\
         Which response is better on this capability point? Answer with exactly one letter: A or B (or TIE if \
         they are equal on this point).",
        aspect.name, aspect.description
    );
    [SYSTEM.to_string(), user]
}

/// A short hash of the question's text: a stored answer is reused only for the very same question, so
/// re-prepared data or an edited description is asked again.
pub fn question_hash(messages: &[String; 2]) -> String {
    let mut hasher = Sha256::new();
    for m in messages {
        hasher.update((m.len() as u64).to_le_bytes());
        hasher.update(m.as_bytes());
    }
    hasher.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The chat-completions request; temperature 0 and a few tokens, since one word is wanted.
/// `max_tokens` 0 leaves the field out: OpenAI's reasoning models refuse it, and thinking models need
/// more than a word's worth before they answer.
pub fn request_body(model: &str, messages: &[String; 2], max_tokens: u32) -> serde_json::Value {
    let mut body = serde_json::json!({
        "model": model,
        "messages": [
            {"role": "system", "content": messages[0]},
            {"role": "user", "content": messages[1]},
        ],
        "temperature": 0,
    });
    if max_tokens > 0 {
        body["max_tokens"] = max_tokens.into();
    }
    body
}

/// What one pair ends up with for one capability point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairOutcome {
    Label(i8),
    Inconsistent,
    /// At least one order has no answer yet (retries ran out, the server refused the question, or the
    /// run stopped).
    Unanswered,
}

impl PairOutcome {
    pub fn of(answers: [Option<Verdict>; 2]) -> Self {
        match answers {
            [Some(a), Some(b)] => consistent_label(a, b).map_or(PairOutcome::Inconsistent, PairOutcome::Label),
            _ => PairOutcome::Unanswered,
        }
    }
}

/// Counts for one capability point over some pairs.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AspectCounts {
    pub pairs: usize,
    /// +1 labels.
    pub chosen_better: usize,
    /// -1 labels.
    pub rejected_better: usize,
    /// 0 labels.
    pub tie: usize,
    pub inconsistent: usize,
    pub unanswered: usize,
    /// Consistent / answered in both orders; `null` when no pair was.
    pub agreement: Option<f64>,
}

impl AspectCounts {
    pub fn add(&mut self, outcome: PairOutcome) {
        self.pairs += 1;
        match outcome {
            PairOutcome::Label(1) => self.chosen_better += 1,
            PairOutcome::Label(-1) => self.rejected_better += 1,
            PairOutcome::Label(_) => self.tie += 1,
            PairOutcome::Inconsistent => self.inconsistent += 1,
            PairOutcome::Unanswered => self.unanswered += 1,
        }
        let consistent = self.chosen_better + self.rejected_better + self.tie;
        let answered = consistent + self.inconsistent;
        self.agreement = (answered > 0).then(|| consistent as f64 / answered as f64);
    }
}

/// `DIR/aspect-labels.json`: counts per capability point over the run's domains and splits, and per
/// domain and split.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LabelSummary {
    pub model: String,
    pub domains: Vec<String>,
    pub splits: Vec<String>,
    pub aspects: BTreeMap<String, AspectCounts>,
    pub by_domain: BTreeMap<String, BTreeMap<String, BTreeMap<String, AspectCounts>>>,
    /// The questions this run got no answer to, with why; the next run asks them again.
    pub unanswered: Vec<UnansweredQuestion>,
}

/// One question without an answer, for the summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnansweredQuestion {
    pub file: PathBuf,
    pub id: String,
    pub aspect: String,
    pub order: Order,
    /// The last failure, with the server's reason where it gave one.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_in_the_forms_judges_write_them() {
        for (reply, want) in [
            ("A", Some(Verdict::A)),
            (" b\n", Some(Verdict::B)),
            ("TIE", Some(Verdict::Tie)),
            ("tie.", Some(Verdict::Tie)),
            ("**A**", Some(Verdict::A)),
            ("\"B\"", Some(Verdict::B)),
            ("Response A", Some(Verdict::A)),
            ("`response b`.", Some(Verdict::B)),
            ("Response: A", Some(Verdict::A)),
            ("maybe", None),
            ("A or B", None),
            ("", None),
            ("AB", None),
        ] {
            assert_eq!(parse_verdict(reply), want, "{reply:?}");
        }
    }

    #[test]
    fn only_answers_that_agree_across_orders_are_labels() {
        use Verdict::*;
        assert_eq!(consistent_label(A, B), Some(1));
        assert_eq!(consistent_label(B, A), Some(-1));
        assert_eq!(consistent_label(Tie, Tie), Some(0));
        for (a, b) in [(A, A), (B, B), (A, Tie), (Tie, B)] {
            assert_eq!(consistent_label(a, b), None);
        }
        assert_eq!(PairOutcome::of([Some(A), None]), PairOutcome::Unanswered);
    }

    #[test]
    fn aspects_file_is_validated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aspects.json");
        let read = |text: &str| {
            std::fs::write(&path, text).unwrap();
            read_aspects(&path)
        };
        let ok = read(r#"{"harmlessness": "no harm", "helpfulness": "answers the request"}"#).unwrap();
        assert_eq!(ok.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["harmlessness", "helpfulness"]);
        for bad in ["{}", "[]", r#"{"two words": "x"}"#, r#"{"": "x"}"#, r#"{"a": 1}"#, r#"{"a": " "}"#, "nope"] {
            let e = read(bad).unwrap_err().to_string();
            assert!(e.contains("aspects.json"), "{bad}: {e}");
        }
        // Names become folders `expert-<task>-<name>`.
        for name in ["a/b", r"a\b", ".hidden", "..", "/"] {
            let e = read(&serde_json::json!({ name: "x" }).to_string()).unwrap_err().to_string();
            assert!(e.contains("aspects.json") && e.contains(&format!("{name:?}")), "{name}: {e}");
        }
    }

    #[test]
    fn max_tokens_zero_leaves_the_field_out() {
        let messages = ["s".to_string(), "u".to_string()];
        assert_eq!(request_body("m", &messages, 8)["max_tokens"], 8);
        assert_eq!(request_body("m", &messages, 64)["max_tokens"], 64);
        assert!(request_body("m", &messages, 0).get("max_tokens").is_none());
    }
}
