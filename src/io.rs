//! The bottom of the crate, for every layer: files written atomically (a temporary name, synced, then
//! renamed, so a crash never leaves half an artifact), directories staged whole, and JSON parsed with
//! errors that name the key path.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};

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

/// Writes safetensors through a temporary file, synced, and a rename.
pub fn save_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let tensors: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("model.safetensors");
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    candle_core::safetensors::save(&tensors, &tmp).with_context(|| format!("writing {}", tmp.display()))?;
    sync_file(&tmp).with_context(|| format!("syncing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Parses JSON into `T`; an error names the key path where it happened (`lora.r: invalid type …`).
pub fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            anyhow::anyhow!("{inner}")
        } else {
            anyhow::anyhow!("`{path}`: {inner}")
        }
    })
}

/// Like [`parse_json`], from an already parsed value (a checkpoint's `config.json`).
pub fn from_value<T: serde::de::DeserializeOwned>(value: &serde_json::Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        anyhow::anyhow!("`{path}`: {}", e.into_inner())
    })
}

/// Reads and parses a JSON file; errors name the file and the key path.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_json(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Writes `value` as pretty JSON, atomically.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    write_atomic(path, &serde_json::to_vec_pretty(value)?).with_context(|| format!("writing {}", path.display()))
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
