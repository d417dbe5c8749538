//! Stanford Human Preferences: per subreddit `{train,test}.json`, one object per line with the post
//! (`history`), two comments (`human_ref_A`, `human_ref_B`) and `labels` (1 if A is preferred).

use std::path::Path;

use super::convert::{convert_lines, Conversion, Outcome};
use super::error::{At, RecordError};
use super::record::PairRecord;

pub fn convert(path: &Path, id_prefix: &str, out: &mut Conversion) -> Result<(), RecordError> {
    convert_lines(path, out, |at, text| convert_line(at, text, id_prefix))
}

fn convert_line(at: &At, text: &str, id_prefix: &str) -> Result<Outcome, RecordError> {
    let obj = at.parse_object(text)?;
    let history = at.text_field(&obj, "history")?;
    let a = at.text_field(&obj, "human_ref_A")?.trim();
    let b = at.text_field(&obj, "human_ref_B")?.trim();
    let a_preferred = match obj.get("labels") {
        None => return Err(at.err(Some("labels"), "missing")),
        Some(v) => match v.as_i64() {
            Some(1) => true,
            Some(0) => false,
            _ => return Err(at.err(Some("labels"), format!("expected 0 or 1, found {v}"))),
        },
    };
    let (chosen, rejected) = if a_preferred { (a, b) } else { (b, a) };
    Ok(Outcome::Pair(PairRecord {
        id: format!("{id_prefix}/{}", at.line),
        domain: "shp".into(),
        prompt: history.to_string(),
        chosen: chosen.to_string(),
        rejected: rejected.to_string(),
        aspects: None,
        task: None,
    }))
}
