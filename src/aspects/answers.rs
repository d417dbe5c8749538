//! `DIR/<domain>/aspect-answers.jsonl`: every answer the judge gave, one JSON line each, appended as
//! it arrives. A killed run loses only the answers in flight, and the next run asks only the rest.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{consistent_label, Order, Verdict};
use crate::data::lines::read_lines;

/// One line of the answer log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerRecord {
    pub split: String,
    pub id: String,
    pub aspect: String,
    pub order: Order,
    pub model: String,
    /// [`super::question_hash`] of the question asked.
    pub question: String,
    pub answer: Verdict,
    /// The judge's reply as it came.
    pub reply: String,
}

/// What identifies a question for one model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AnswerKey {
    pub split: String,
    pub id: String,
    pub aspect: String,
    pub order: Order,
    pub question: String,
}

impl AnswerRecord {
    pub fn key(&self) -> AnswerKey {
        AnswerKey {
            split: self.split.clone(),
            id: self.id.clone(),
            aspect: self.aspect.clone(),
            order: self.order,
            question: self.question.clone(),
        }
    }
}

/// A log that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum AnswerLogError {
    #[error("{}:{line}: not an answer record ({message}); fix or delete that line", file.display())]
    Line { file: PathBuf, line: usize, message: String },
    #[error("{}: {source}", file.display())]
    Io { file: PathBuf, source: std::io::Error },
}

/// The open log of one domain, appended to line by line.
pub struct AnswerLog {
    path: PathBuf,
    file: File,
}

/// A label the logged answers give: split, record id, capability point, label.
pub type LoggedLabel = (String, String, String, i8);

/// Answers already in a log for one model, and whether a cut-short last line was dropped.
pub struct Stored {
    pub answers: HashMap<AnswerKey, Verdict>,
    /// The labels that one model's answers in the two orders give, for any model and question text (an
    /// edited description is asked again): a label in a split that is not among them was not written by
    /// label-aspects.
    pub labels: HashSet<LoggedLabel>,
    pub skipped_partial_line: bool,
}

impl AnswerLog {
    /// Opens `path` for appending (creating it) and reads the answers `model` gave. A last line cut short
    /// by a killed run is dropped; any other bad line is an error naming it.
    pub fn open(path: &Path, model: &str) -> Result<(Self, Stored), AnswerLogError> {
        let io = |source| AnswerLogError::Io { file: path.to_path_buf(), source };
        let mut stored = Stored { answers: HashMap::new(), labels: HashSet::new(), skipped_partial_line: false };
        // Per split, id, point and model: the verdicts given in each order.
        let mut by_order: HashMap<(String, String, String, String), [HashSet<Verdict>; 2]> = HashMap::new();
        let ends_with_newline = last_byte(path).map_err(io)?.is_none_or(|b| b == b'\n');
        if path.exists() {
            let mut lines = read_lines(path).map_err(|e| io(std::io::Error::other(e.to_string())))?.peekable();
            while let Some(line) = lines.next() {
                let (number, text) = line.map_err(|e| AnswerLogError::Line {
                    file: path.to_path_buf(),
                    line: e.line,
                    message: e.message,
                })?;
                if text.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<AnswerRecord>(&text) {
                    Ok(record) => {
                        if record.model == model {
                            stored.answers.insert(record.key(), record.answer);
                        }
                        let key = (record.split, record.id, record.aspect, record.model);
                        by_order.entry(key).or_default()[record.order.index()].insert(record.answer);
                    }
                    Err(_) if lines.peek().is_none() && !ends_with_newline => stored.skipped_partial_line = true,
                    Err(e) => {
                        return Err(AnswerLogError::Line {
                            file: path.to_path_buf(),
                            line: number,
                            message: e.to_string(),
                        })
                    }
                }
            }
        }
        for ((split, id, aspect, _), [chosen_first, rejected_first]) in by_order {
            for (&a, &b) in chosen_first.iter().flat_map(|a| rejected_first.iter().map(move |b| (a, b))) {
                if let Some(label) = consistent_label(a, b) {
                    stored.labels.insert((split.clone(), id.clone(), aspect.clone(), label));
                }
            }
        }
        let mut file = OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
        if stored.skipped_partial_line {
            // Drop the cut-short line, so the log stays readable line by line.
            let bytes = std::fs::read(path).map_err(io)?;
            let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            file.set_len(keep as u64).map_err(io)?;
        } else if !ends_with_newline {
            file.write_all(b"\n").map_err(io)?;
        }
        Ok((Self { path: path.to_path_buf(), file }, stored))
    }

    /// Appends one answer as a whole line, written straight to the file.
    pub fn append(&mut self, record: &AnswerRecord) -> Result<(), AnswerLogError> {
        let mut line =
            serde_json::to_vec(record).map_err(|e| AnswerLogError::Io { file: self.path.clone(), source: e.into() })?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|()| self.file.flush())
            .map_err(|source| AnswerLogError::Io { file: self.path.clone(), source })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The file's last byte, `None` when it is missing or empty.
fn last_byte(path: &Path) -> std::io::Result<Option<u8>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if file.metadata()?.len() == 0 {
        return Ok(None);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut byte = [0u8];
    file.read_exact(&mut byte)?;
    Ok(Some(byte[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, model: &str) -> AnswerRecord {
        AnswerRecord {
            split: "train".into(),
            id: id.into(),
            aspect: "helpfulness".into(),
            order: Order::ChosenFirst,
            model: model.into(),
            question: "0123456789abcdef".into(),
            answer: Verdict::A,
            reply: "A".into(),
        }
    }

    #[test]
    fn answers_survive_reopening_and_a_cut_short_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aspect-answers.jsonl");
        {
            let (mut log, stored) = AnswerLog::open(&path, "m").unwrap();
            assert!(stored.answers.is_empty());
            log.append(&record("1", "m")).unwrap();
            log.append(&record("2", "other")).unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(br#"{"split": "tra"#);
        std::fs::write(&path, &bytes).unwrap();
        {
            let (mut log, stored) = AnswerLog::open(&path, "m").unwrap();
            assert!(stored.skipped_partial_line);
            assert_eq!(stored.answers.len(), 1, "only model m's answer");
            assert_eq!(stored.answers.get(&record("1", "m").key()), Some(&Verdict::A));
            log.append(&record("3", "m")).unwrap();
        }
        let (_, stored) = AnswerLog::open(&path, "m").unwrap();
        assert!(!stored.skipped_partial_line);
        assert_eq!(stored.answers.len(), 2);
        assert!(stored.labels.is_empty(), "no question has both orders");

        // A bad line that is not the last one is an error naming it.
        let text = std::fs::read_to_string(&path).unwrap().replacen("{\"split\"", "{oops", 1);
        std::fs::write(&path, text).unwrap();
        let e = AnswerLog::open(&path, "m").err().unwrap().to_string();
        assert!(e.contains("aspect-answers.jsonl:1:"), "{e}");
    }

    #[test]
    fn labels_come_from_both_orders_of_any_model() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aspect-answers.jsonl");
        {
            let (mut log, _) = AnswerLog::open(&path, "m").unwrap();
            for (id, model, order, answer) in [
                ("1", "other", Order::ChosenFirst, Verdict::B),
                ("1", "other", Order::RejectedFirst, Verdict::A),
                ("2", "m", Order::ChosenFirst, Verdict::A),
                ("2", "m", Order::RejectedFirst, Verdict::A),
                ("3", "m", Order::ChosenFirst, Verdict::A),
                ("4", "m", Order::RejectedFirst, Verdict::B),
                ("4", "other", Order::ChosenFirst, Verdict::A),
            ] {
                let question = format!("{order:?}"); // each order's text, and so its hash, differs
                log.append(&AnswerRecord { order, answer, question, ..record(id, model) }).unwrap();
            }
        }
        let (_, stored) = AnswerLog::open(&path, "m").unwrap();
        let want: HashSet<LoggedLabel> = [("train".into(), "1".into(), "helpfulness".into(), -1)].into();
        assert_eq!(stored.labels, want, "2 disagrees, 3 has one order, 4 mixes models");
    }
}
