//! The pair record of DESIGN.md: one JSON object per line of a prepared `train.jsonl`/`test.jsonl`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{At, RecordError};
use super::lines::read_lines;

/// One preference pair: for `prompt`, `chosen` is preferred over `rejected`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairRecord {
    pub id: String,
    pub domain: String,
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    /// Capability-point preferences (+1 chosen better, -1 rejected better, 0 tie) where the source has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aspects: Option<BTreeMap<String, i8>>,
    /// The task category DMoERM's outer router routes by, where records carry one (default: the domain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
}

/// Reads a prepared pair file; a bad line is an error naming the file and the line.
pub fn read_pairs(path: &Path) -> Result<Vec<PairRecord>, RecordError> {
    let mut pairs = Vec::new();
    for line in read_lines(path)? {
        let (number, text) = line?;
        if text.trim().is_empty() {
            continue;
        }
        let at = At { file: path, line: number };
        let record: PairRecord =
            serde_json::from_str(&text).map_err(|e| at.err(None, format!("not a pair record: {e}")))?;
        for (field, value) in [("prompt", &record.prompt), ("chosen", &record.chosen), ("rejected", &record.rejected)] {
            if value.trim().is_empty() {
                return Err(at.err(Some(field), "empty text"));
            }
        }
        for (name, &label) in record.aspects.iter().flatten() {
            let field = format!("aspects.{name}");
            if let Err(why) = check_name(name) {
                return Err(at.err(Some(&field), format!("not an aspect name: {why}")));
            }
            if !(-1..=1).contains(&label) {
                return Err(at.err(Some(&field), format!("{label} is not a preference (+1, -1 or 0)")));
            }
        }
        if let Some(task) = &record.task {
            check_name(task).map_err(|why| at.err(Some("task"), format!("not a task name: {why}")))?;
        }
        pairs.push(record);
    }
    Ok(pairs)
}

/// Names that become directory and key names (a DMoERM stage is `expert-<task>-<aspect>`): not empty,
/// no slashes or white space, no leading dot.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty".into());
    }
    if name.starts_with('.') || name.contains(['/', '\\']) || name.contains(char::is_whitespace) {
        return Err(format!("\"{name}\" has a slash, white space or a leading dot"));
    }
    Ok(())
}
