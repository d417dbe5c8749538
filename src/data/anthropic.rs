//! Anthropic HH-RLHF: `{"chosen", "rejected"}` full transcripts that share the dialogue and differ in
//! the final Assistant turn (router-reward-models.txt, Appendix B).

use std::path::Path;

use super::convert::{convert_lines, Conversion, Outcome};
use super::error::{At, RecordError};
use super::record::PairRecord;

const ASSISTANT: &str = "\n\nAssistant:";

/// Splits a transcript into the prompt (up to and including the last `\n\nAssistant:`) and the final
/// assistant turn (whitespace trimmed).
pub fn split_transcript(text: &str) -> Option<(&str, &str)> {
    let at = text.rfind(ASSISTANT)? + ASSISTANT.len();
    Some((&text[..at], text[at..].trim()))
}

pub fn convert(path: &Path, id_prefix: &str, out: &mut Conversion) -> Result<(), RecordError> {
    convert_lines(path, out, |at, text| convert_line(at, text, id_prefix))
}

fn convert_line(at: &At, text: &str, id_prefix: &str) -> Result<Outcome, RecordError> {
    let obj = at.parse_object(text)?;
    let chosen = at.str_field(&obj, "chosen")?;
    let rejected = at.str_field(&obj, "rejected")?;
    let (prompt, chosen_reply) =
        split_transcript(chosen).ok_or_else(|| at.err(Some("chosen"), "no `\\n\\nAssistant:` turn"))?;
    let (rejected_prompt, rejected_reply) =
        split_transcript(rejected).ok_or_else(|| at.err(Some("rejected"), "no `\\n\\nAssistant:` turn"))?;
    if chosen_reply == rejected_reply {
        return Ok(Outcome::Dropped("identical responses"));
    }
    if prompt != rejected_prompt {
        return Ok(Outcome::Dropped("prompts differ"));
    }
    // A known quirk of HH-RLHF (8 records in the official files): a conversion rule, not a broken record.
    if chosen_reply.is_empty() || rejected_reply.is_empty() {
        return Ok(Outcome::Dropped("empty final Assistant turn"));
    }
    Ok(Outcome::Pair(PairRecord {
        id: format!("{id_prefix}/{}", at.line),
        domain: "anthropic".into(),
        prompt: prompt.to_string(),
        chosen: chosen_reply.to_string(),
        rejected: rejected_reply.to_string(),
        aspects: None,
        task: None,
    }))
}
