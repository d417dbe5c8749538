//! What every converter fills: the pairs, and counts of what was dropped by a conversion rule or
//! skipped as invalid. Nothing is dropped without being counted.

use std::collections::BTreeMap;
use std::path::Path;

use super::error::{At, RecordError};
use super::lines::read_lines;
use super::record::PairRecord;

/// The result of converting one or more raw files of a domain.
#[derive(Debug, Default)]
pub struct Conversion {
    pub pairs: Vec<PairRecord>,
    /// Raw records read (lines, items or messages, as the source counts them).
    pub source_records: usize,
    /// Records dropped by a rule of the conversion (e.g. identical responses), by reason.
    pub dropped: BTreeMap<String, usize>,
    /// Invalid records skipped under `--skip-invalid`, by reason.
    pub invalid: BTreeMap<String, usize>,
    skip_invalid: bool,
}

impl Conversion {
    pub fn new(skip_invalid: bool) -> Self {
        Self { skip_invalid, ..Self::default() }
    }

    /// An invalid record: an error, or counted and skipped under `--skip-invalid`.
    pub fn invalid(&mut self, error: RecordError) -> Result<(), RecordError> {
        if self.skip_invalid {
            *self.invalid.entry(error.reason()).or_default() += 1;
            Ok(())
        } else {
            Err(error)
        }
    }

    /// A record dropped by a conversion rule.
    pub fn drop(&mut self, reason: &str) {
        *self.dropped.entry(reason.to_string()).or_default() += 1;
    }
}

/// The id prefix for records of `file`: `<domain>/<file path under the domain folder, extensions removed>`.
pub fn id_prefix(domain: &str, domain_dir: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(domain_dir).unwrap_or(file);
    let mut text = relative.to_string_lossy().replace('\\', "/");
    for ext in [".gz", ".bz2", ".jsonl", ".json", ".txt"] {
        if let Some(stripped) = text.strip_suffix(ext) {
            text = stripped.to_string();
        }
    }
    format!("{domain}/{text}")
}

/// What one raw record becomes.
pub enum Outcome {
    Pair(PairRecord),
    /// Dropped by a conversion rule, with the reason counted in `stats.json`.
    Dropped(&'static str),
}

/// Converts a file of one JSON record per line with `convert_line`, counting every record and
/// routing invalid ones through [`Conversion::invalid`]. Pairs with identical responses are dropped.
pub fn convert_lines(
    path: &Path,
    out: &mut Conversion,
    mut convert_line: impl FnMut(&At, &str) -> Result<Outcome, RecordError>,
) -> Result<(), RecordError> {
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
        out.source_records += 1;
        match convert_line(&At { file: path, line: number }, &text) {
            Ok(Outcome::Pair(pair)) if pair.chosen == pair.rejected => out.drop("identical responses"),
            Ok(Outcome::Pair(pair)) => out.pairs.push(pair),
            Ok(Outcome::Dropped(reason)) => out.drop(reason),
            Err(e) => out.invalid(e)?,
        }
    }
    Ok(())
}
