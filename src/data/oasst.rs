//! OpenAssistant (oasst1/oasst2): message trees, flat (one message per line, linked by `parent_id`) or
//! nested (one tree per line, `{"message_tree_id", "prompt": {…, "replies": [...]}}`).
//!
//! English only; deleted and failed-review messages out. For each prompter message with two or more
//! ranked assistant replies, the best-ranked reply is paired with each lower-ranked one. The prompt is
//! the conversation up to that prompter message, written as Anthropic's transcripts are
//! (`\n\nHuman: …\n\nAssistant: …\n\nHuman: …\n\nAssistant:`), so both dialogue domains read alike.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::{Map, Value};

use super::convert::Conversion;
use super::error::{json_kind, At, RecordError};
use super::lines::read_lines;
use super::record::PairRecord;

/// Labels where a higher value means a worse reply; their sign is flipped so +1 means chosen is better.
/// `political_content` and `moral_judgement` describe a reply rather than grade it, and keep their sign.
const LOWER_IS_BETTER: [&str; 9] = [
    "spam",
    "fails_task",
    "lang_mismatch",
    "pii",
    "not_appropriate",
    "hate_speech",
    "sexual_content",
    "toxicity",
    "violence",
];

#[derive(Debug, Clone)]
struct Message {
    id: String,
    parent: Option<String>,
    text: String,
    is_assistant: bool,
    rank: Option<u64>,
    labels: BTreeMap<String, f64>,
    /// Why the message is left out, if it is.
    excluded: Option<&'static str>,
    line: usize,
}

pub fn convert(path: &Path, id_prefix: &str, out: &mut Conversion) -> Result<(), RecordError> {
    let mut messages = Vec::new();
    for line in read_lines(path)? {
        let (number, text) = match line {
            Ok(line) => line,
            Err(e) => {
                out.source_records += 1;
                out.invalid(e)?;
                continue;
            }
        };
        if text.trim().is_empty() {
            continue;
        }
        let at = At { file: path, line: number };
        let parsed = at.parse_object(&text).and_then(|obj| {
            let mut found = Vec::new();
            match obj.get("prompt") {
                Some(Value::Object(root)) => flatten_tree(&at, root, None, &mut found)?,
                _ => found.push(parse_message(&at, &obj, None)?),
            }
            Ok(found)
        });
        match parsed {
            Ok(found) => {
                out.source_records += found.len();
                messages.extend(found);
            }
            Err(e) => {
                out.source_records += 1;
                out.invalid(e)?;
            }
        }
    }
    pair_messages(path, &messages, id_prefix, out)
}

fn parse_message(at: &At, obj: &Map<String, Value>, parent: Option<&str>) -> Result<Message, RecordError> {
    let id = at.str_field(obj, "message_id")?.to_string();
    let parent = match (parent, obj.get("parent_id")) {
        (Some(p), _) => Some(p.to_string()),
        (None, None | Some(Value::Null)) => None,
        (None, Some(Value::String(p))) => Some(p.clone()),
        (None, Some(other)) => {
            return Err(at.err(Some("parent_id"), format!("expected a string or null, found {}", json_kind(other))))
        }
    };
    let text = at.str_field(obj, "text")?.trim().to_string();
    let is_assistant = match at.str_field(obj, "role")? {
        "assistant" => true,
        "prompter" => false,
        other => return Err(at.err(Some("role"), format!("expected `prompter` or `assistant`, found {other:?}"))),
    };
    let rank = match obj.get("rank") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| at.err(Some("rank"), format!("expected an integer, found {v}")))?),
    };
    let flag = |field: &str| -> Result<Option<bool>, RecordError> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(at.err(Some(field), format!("expected a boolean, found {}", json_kind(other)))),
        }
    };
    let lang = match obj.get("lang") {
        Some(Value::String(lang)) => lang.as_str(),
        _ => return Err(at.err(Some("lang"), "missing or not a string")),
    };
    let excluded = if lang != "en" {
        Some("message not English")
    } else if flag("deleted")? == Some(true) {
        Some("message deleted")
    } else if flag("review_result")? == Some(false) {
        Some("message failed review")
    } else {
        None
    };
    Ok(Message { id, parent, text, is_assistant, rank, labels: parse_labels(at, obj)?, excluded, line: at.line })
}

fn parse_labels(at: &At, obj: &Map<String, Value>) -> Result<BTreeMap<String, f64>, RecordError> {
    let mut labels = BTreeMap::new();
    let Some(Value::Object(l)) = obj.get("labels") else { return Ok(labels) };
    let bad = || at.err(Some("labels"), "expected `name` (strings) and `value` (numbers) of equal length");
    let (Some(Value::Array(names)), Some(Value::Array(values))) = (l.get("name"), l.get("value")) else {
        return Err(bad());
    };
    if names.len() != values.len() {
        return Err(bad());
    }
    for (name, value) in names.iter().zip(values) {
        labels.insert(name.as_str().ok_or_else(bad)?.to_string(), value.as_f64().ok_or_else(bad)?);
    }
    Ok(labels)
}

fn flatten_tree(
    at: &At,
    node: &Map<String, Value>,
    parent: Option<&str>,
    found: &mut Vec<Message>,
) -> Result<(), RecordError> {
    let message = parse_message(at, node, parent)?;
    let id = message.id.clone();
    found.push(message);
    match node.get("replies") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(replies)) => replies.iter().try_for_each(|reply| match reply {
            Value::Object(child) => flatten_tree(at, child, Some(&id), found),
            other => Err(at.err(Some("replies"), format!("expected objects, found {}", json_kind(other)))),
        }),
        Some(other) => Err(at.err(Some("replies"), format!("expected an array, found {}", json_kind(other)))),
    }
}

fn pair_messages(path: &Path, messages: &[Message], id_prefix: &str, out: &mut Conversion) -> Result<(), RecordError> {
    let by_id: HashMap<&str, &Message> = messages.iter().map(|m| (m.id.as_str(), m)).collect();
    let mut children: HashMap<&str, Vec<&Message>> = HashMap::new();
    for m in messages {
        if let Some(reason) = m.excluded {
            out.drop(reason);
        }
        if let Some(p) = &m.parent {
            children.entry(p.as_str()).or_default().push(m);
        }
    }
    for prompter in messages.iter().filter(|m| !m.is_assistant && m.excluded.is_none()) {
        let mut ranked: Vec<&Message> = children
            .get(prompter.id.as_str())
            .map(|c| c.iter().copied().filter(|m| m.is_assistant && m.excluded.is_none() && m.rank.is_some()).collect())
            .unwrap_or_default();
        if ranked.len() < 2 {
            continue;
        }
        ranked.sort_by_key(|m| m.rank);
        let Some(prompt) = conversation(prompter, &by_id) else {
            out.drop("conversation has a missing or excluded message");
            continue;
        };
        if let Some(empty) = std::iter::once(prompter).chain(ranked.iter().copied()).find(|m| m.text.is_empty()) {
            out.invalid(RecordError::new(path, empty.line, Some("text"), "empty text"))?;
            continue;
        }
        let best = ranked[0];
        for other in &ranked[1..] {
            if other.rank == best.rank {
                out.drop("tied rank");
                continue;
            }
            out.pairs.push(PairRecord {
                id: format!("{id_prefix}/{}/{}", prompter.id, other.id),
                domain: "oasst".into(),
                prompt: prompt.clone(),
                chosen: best.text.clone(),
                rejected: other.text.clone(),
                aspects: aspects(&best.labels, &other.labels),
                task: None,
            });
        }
    }
    Ok(())
}

/// The transcript from the root down to `last`, or `None` if a message on the way is missing or excluded.
fn conversation(last: &Message, by_id: &HashMap<&str, &Message>) -> Option<String> {
    let mut chain = vec![last];
    let mut current = last;
    while let Some(parent) = &current.parent {
        current = by_id.get(parent.as_str())?;
        if current.excluded.is_some() || chain.len() > by_id.len() {
            return None;
        }
        chain.push(current);
    }
    let mut text = String::new();
    for m in chain.iter().rev() {
        text.push_str(if m.is_assistant { "\n\nAssistant: " } else { "\n\nHuman: " });
        text.push_str(&m.text);
    }
    text.push_str("\n\nAssistant:");
    Some(text)
}

/// +1 where chosen is better on a label both replies carry, -1 where worse, 0 where equal.
fn aspects(chosen: &BTreeMap<String, f64>, rejected: &BTreeMap<String, f64>) -> Option<BTreeMap<String, i8>> {
    let mut out = BTreeMap::new();
    for (name, c) in chosen {
        if let Some(r) = rejected.get(name) {
            let diff = if LOWER_IS_BETTER.contains(&name.as_str()) { r - c } else { c - r };
            out.insert(
                name.clone(),
                if diff > 0.0 {
                    1
                } else if diff < 0.0 {
                    -1
                } else {
                    0
                },
            );
        }
    }
    (!out.is_empty()).then_some(out)
}
