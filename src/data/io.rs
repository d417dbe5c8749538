//! Reading raw files line by line (plain, `.gz` or `.bz2`) with exact line numbers and UTF-8 checks,
//! and writing outputs atomically.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
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

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a crash
/// never leaves a half-written file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Like [`write_atomic`], streaming through `fill`.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut writer = std::io::BufWriter::new(File::create(&tmp)?);
        fill(&mut writer)?;
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
