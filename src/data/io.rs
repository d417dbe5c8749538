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

/// Flushes a file's contents to disk.
pub fn sync_file(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

/// A directory written whole under a temporary name (a hidden sibling unique to this call), synced,
/// then renamed into place, so a crash leaves the old directory or the new one, never a mix. A previous
/// directory under the name is moved aside to another unique sibling and removed after the swap;
/// nothing else beside the target is touched.
pub struct StagedDir {
    staged: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl StagedDir {
    pub fn new(target: &Path) -> std::io::Result<Self> {
        let staged = sibling(target, "tmp")?;
        std::fs::create_dir_all(&staged)?;
        Ok(Self { staged, target: target.to_path_buf(), committed: false })
    }

    /// Where to write the directory's contents.
    pub fn path(&self) -> &Path {
        &self.staged
    }

    /// Syncs every file, then swaps the staged directory in.
    pub fn commit(mut self) -> std::io::Result<()> {
        sync_tree(&self.staged)?;
        let old = sibling(&self.target, "old")?;
        let replaced = self.target.exists();
        if replaced {
            std::fs::rename(&self.target, &old)?;
        }
        std::fs::rename(&self.staged, &self.target)?;
        self.committed = true;
        if let Some(parent) = self.target.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)?.sync_all()?;
        }
        if replaced {
            std::fs::remove_dir_all(&old)?;
        }
        Ok(())
    }

    /// A previous directory that a crash left moved aside (between the two renames of a commit).
    pub fn moved_aside(target: &Path) -> Option<PathBuf> {
        let name = target.file_name()?.to_str()?;
        let prefix = format!(".{name}.old-");
        let parent = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::read_dir(parent)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix)))
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staged);
        }
    }
}

/// A hidden sibling of `target` that no other call uses: `DIR/.NAME.tag-<pid>-<n>`.
fn sibling(target: &Path, tag: &str) -> std::io::Result<PathBuf> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = target.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} does not end in a directory name", target.display()),
        )
    })?;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Ok(target.with_file_name(format!(".{name}.{tag}-{}-{n}", std::process::id())))
}

fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            sync_file(&path)?;
        }
    }
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staged_directory_replaces_the_old_one_only_when_committed() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("artifact");
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(target.join("a.txt"), b"old a").unwrap();
        std::fs::write(target.join("b.txt"), b"old b").unwrap();
        {
            // A crash before the commit: the old directory is untouched.
            let staged = StagedDir::new(&target).unwrap();
            std::fs::write(staged.path().join("a.txt"), b"new a").unwrap();
        }
        assert_eq!(std::fs::read(target.join("a.txt")).unwrap(), b"old a");
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1, "the staged copy is gone");
        std::fs::create_dir_all(root.path().join("artifact.old")).unwrap();
        std::fs::write(root.path().join("artifact.old/keep.txt"), b"a user's backup").unwrap();
        let staged = StagedDir::new(&target).unwrap();
        std::fs::write(staged.path().join("a.txt"), b"new a").unwrap();
        staged.commit().unwrap();
        assert_eq!(std::fs::read(target.join("a.txt")).unwrap(), b"new a");
        assert!(!target.join("b.txt").exists(), "nothing of the old directory is mixed in");
        let mut left: Vec<String> =
            std::fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        left.sort();
        assert_eq!(left, ["artifact", "artifact.old"], "a neighbour with a similar name is never touched");
    }
}
