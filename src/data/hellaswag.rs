//! HellaSwag: a context and four endings, one of them right. The right ending is `chosen`; one wrong
//! ending drawn with a seeded RNG is `rejected` (router-reward-models.txt, Appendix B).
//!
//! Two forms: the original JSONL (`ctx`, `activity_label`, `endings`, `label`) and the plain-text form
//! of `../shared/data/hellaswag/` (6 lines per item: `"<activity_label>: <ctx>"`, the gold index,
//! then the four endings).

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::convert::{convert_lines, Conversion, Outcome};
use super::error::{At, RecordError};
use super::lines::read_lines;
use super::record::PairRecord;
use super::split::{mix, stable_hash};

/// Builds the pair for one item; the wrong ending depends only on `seed` and the item's id.
fn make_pair(id: String, prompt: String, endings: &[String], label: usize, seed: u64) -> Outcome {
    let chosen = endings[label].trim().to_string();
    let wrong: Vec<&String> =
        endings.iter().enumerate().filter(|(i, e)| *i != label && e.trim() != chosen).map(|(_, e)| e).collect();
    if wrong.is_empty() {
        return Outcome::Dropped("no distinct wrong ending");
    }
    let mut rng = StdRng::seed_from_u64(mix(seed, stable_hash(id.as_bytes())));
    let rejected = wrong[rng.random_range(0..wrong.len())].trim().to_string();
    Outcome::Pair(PairRecord { id, domain: "hellaswag".into(), prompt, chosen, rejected, aspects: None, task: None })
}

fn check_endings(at: &At, field: &str, endings: &[String], label: usize) -> Result<(), RecordError> {
    if endings.len() < 2 {
        return Err(at.err(Some(field), format!("expected at least 2 endings, found {}", endings.len())));
    }
    if label >= endings.len() {
        return Err(at.err(Some("label"), format!("{label} is out of range for {} endings", endings.len())));
    }
    if let Some(i) = endings.iter().position(|e| e.trim().is_empty()) {
        return Err(at.err(Some(field), format!("ending {i} is empty")));
    }
    Ok(())
}

/// The original JSONL form.
pub fn convert_jsonl(path: &Path, id_prefix: &str, seed: u64, out: &mut Conversion) -> Result<(), RecordError> {
    convert_lines(path, out, |at, text| {
        let obj = at.parse_object(text)?;
        let ctx = at.text_field(&obj, "ctx")?;
        let activity = at.str_field(&obj, "activity_label")?;
        let endings: Vec<String> = match obj.get("endings") {
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| at.err(Some("endings"), "expected an array of strings"))?,
            Some(_) => return Err(at.err(Some("endings"), "expected an array of strings")),
            None => return Err(at.err(Some("endings"), "missing")),
        };
        let label = match obj.get("label") {
            None => return Err(at.err(Some("label"), "missing (the HellaSwag test split has no labels)")),
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok(),
            Some(_) => None,
        }
        .ok_or_else(|| at.err(Some("label"), "expected an ending index"))? as usize;
        check_endings(at, "endings", &endings, label)?;
        let id = match obj.get("ind").and_then(|v| v.as_u64()) {
            Some(ind) => format!("{id_prefix}/{ind}"),
            None => format!("{id_prefix}/{}", at.line),
        };
        Ok(make_pair(id, format!("{activity}: {ctx}"), &endings, label, seed))
    })
}

/// The plain-text form: 6 lines per item.
pub fn convert_text(path: &Path, id_prefix: &str, seed: u64, out: &mut Conversion) -> Result<(), RecordError> {
    let mut lines = read_lines(path)?;
    loop {
        let mut item: Vec<String> = Vec::with_capacity(6);
        let mut first_line = 0;
        let mut broken = None;
        for _ in 0..6 {
            match lines.next() {
                Some(Ok((number, text))) => {
                    if item.is_empty() {
                        first_line = number;
                    }
                    item.push(text);
                }
                Some(Err(e)) => {
                    broken = Some(e);
                    break;
                }
                None => break,
            }
        }
        if let Some(e) = broken {
            // An unreadable line makes the rest of the file's 6-line framing unknowable.
            out.source_records += 1;
            return out.invalid(e);
        }
        if item.is_empty() || (item.len() == 1 && item[0].trim().is_empty()) {
            return Ok(());
        }
        out.source_records += 1;
        let at = At { file: path, line: first_line };
        if item.len() < 6 {
            return out.invalid(at.err(None, format!("truncated item: {} of 6 lines", item.len())));
        }
        match convert_item(&at, &item, id_prefix, seed) {
            Ok(Outcome::Pair(pair)) => out.pairs.push(pair),
            Ok(Outcome::Dropped(reason)) => out.drop(reason),
            Err(e) => out.invalid(e)?,
        }
    }
}

fn convert_item(at: &At, item: &[String], id_prefix: &str, seed: u64) -> Result<Outcome, RecordError> {
    let prompt = item[0].trim();
    if prompt.is_empty() {
        return Err(at.err(Some("context"), "empty text"));
    }
    let label_at = At { file: at.file, line: at.line + 1 };
    let label: usize = item[1]
        .trim()
        .parse()
        .map_err(|_| label_at.err(Some("label"), format!("expected 0-3, found {:?}", item[1])))?;
    let endings: Vec<String> = item[2..6].to_vec();
    check_endings(&label_at, "endings", &endings, label)?;
    Ok(make_pair(format!("{id_prefix}/{}", at.line), prompt.to_string(), &endings, label, seed))
}
