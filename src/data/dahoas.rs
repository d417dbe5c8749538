//! Dahoas synthetic-instruct-gptj-pairwise, JSONL export: `{"prompt", "chosen", "rejected"}` is
//! already a pair (router-reward-models.txt, Appendix B).

use std::path::Path;

use super::convert::{convert_lines, Conversion, Outcome};
use super::error::RecordError;
use super::record::PairRecord;

pub fn convert(path: &Path, id_prefix: &str, out: &mut Conversion) -> Result<(), RecordError> {
    convert_lines(path, out, |at, text| {
        let obj = at.parse_object(text)?;
        Ok(Outcome::Pair(PairRecord {
            id: format!("{id_prefix}/{}", at.line),
            domain: "dahoas".into(),
            prompt: at.text_field(&obj, "prompt")?.to_string(),
            chosen: at.text_field(&obj, "chosen")?.trim().to_string(),
            rejected: at.text_field(&obj, "rejected")?.trim().to_string(),
            aspects: None,
            task: None,
        }))
    })
}
