//! Typed errors for raw and prepared data: every one names the file, the line and, where it applies,
//! the field, so a user can open the file at the right place.

use std::fmt;
use std::path::PathBuf;

/// A record that cannot be converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    pub file: PathBuf,
    /// 1-based line number of the record (its first line for multi-line records).
    pub line: usize,
    /// The field at fault, when there is one.
    pub field: Option<String>,
    pub message: String,
}

impl RecordError {
    pub fn new(file: impl Into<PathBuf>, line: usize, field: Option<&str>, message: impl Into<String>) -> Self {
        Self { file: file.into(), line, field: field.map(str::to_string), message: message.into() }
    }

    /// A short reason used as the key when invalid records are counted in `stats.json`.
    pub fn reason(&self) -> String {
        match &self.field {
            Some(field) => format!("invalid `{field}`: {}", self.message),
            None => self.message.clone(),
        }
    }
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file.display(), self.line)?;
        if let Some(field) = &self.field {
            write!(f, "field `{field}`: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for RecordError {}

/// Where a converter is in a file, so field helpers can build errors without repeating it.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    pub file: &'a std::path::Path,
    pub line: usize,
}

impl At<'_> {
    pub fn err(&self, field: Option<&str>, message: impl Into<String>) -> RecordError {
        RecordError::new(self.file, self.line, field, message)
    }

    /// Parses one JSON object from a line.
    pub fn parse_object(&self, text: &str) -> Result<serde_json::Map<String, serde_json::Value>, RecordError> {
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(map)) => Ok(map),
            Ok(other) => Err(self.err(None, format!("expected a JSON object, found {}", json_kind(&other)))),
            Err(e) => Err(self.err(None, format!("malformed JSON: {e}"))),
        }
    }

    /// A required string field.
    pub fn str_field<'v>(
        &self,
        obj: &'v serde_json::Map<String, serde_json::Value>,
        field: &str,
    ) -> Result<&'v str, RecordError> {
        match obj.get(field) {
            None => Err(self.err(Some(field), "missing")),
            Some(serde_json::Value::String(s)) => Ok(s),
            Some(other) => Err(self.err(Some(field), format!("expected a string, found {}", json_kind(other)))),
        }
    }

    /// A required string field that must hold some non-whitespace text (a response or a prompt).
    pub fn text_field<'v>(
        &self,
        obj: &'v serde_json::Map<String, serde_json::Value>,
        field: &str,
    ) -> Result<&'v str, RecordError> {
        let s = self.str_field(obj, field)?;
        if s.trim().is_empty() {
            return Err(self.err(Some(field), "empty text"));
        }
        Ok(s)
    }
}

/// The JSON type name, for error messages.
pub fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
