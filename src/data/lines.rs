//! Reading raw files line by line (plain, `.gz` or `.bz2`) with exact line numbers and UTF-8 checks.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use super::error::RecordError;

/// Opens a file, decompressing by extension.
pub fn open(path: &Path) -> Result<Box<dyn BufRead>, RecordError> {
    let file = File::open(path).map_err(|e| RecordError::new(path, 0, None, format!("cannot open: {e}")))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let reader: Box<dyn Read> = if name.ends_with(".gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else if name.ends_with(".bz2") {
        Box::new(bzip2::read::MultiBzDecoder::new(file))
    } else {
        Box::new(file)
    };
    Ok(Box::new(BufReader::with_capacity(1 << 16, reader)))
}

/// Iterates over `(line number, text)`; a line that is not UTF-8 is an error naming its number.
pub fn read_lines(path: &Path) -> Result<Lines, RecordError> {
    Ok(Lines { reader: open(path)?, path: path.to_path_buf(), number: 0, done: false })
}

pub struct Lines {
    reader: Box<dyn BufRead>,
    path: PathBuf,
    number: usize,
    done: bool,
}

impl Iterator for Lines {
    type Item = Result<(usize, String), RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut buf = Vec::new();
        self.number += 1;
        match self.reader.read_until(b'\n', &mut buf) {
            Ok(0) => {
                self.done = true;
                None
            }
            Ok(_) => {
                while matches!(buf.last(), Some(b'\n' | b'\r')) {
                    buf.pop();
                }
                Some(
                    String::from_utf8(buf)
                        .map(|text| (self.number, text))
                        .map_err(|e| RecordError::new(&self.path, self.number, None, format!("invalid UTF-8: {e}"))),
                )
            }
            Err(e) => {
                self.done = true;
                Some(Err(RecordError::new(&self.path, self.number, None, format!("read failed: {e}"))))
            }
        }
    }
}
