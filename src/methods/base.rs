//! The frozen base an ARLISS run's adapters were trained for. The run references it (as the config
//! named it, where it resolved, and the SHA-256 of its weights) and never copies it; loading finds it
//! again and refuses one whose weights changed, since adapters on other weights score wrong.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backbone::resolve_model_dir;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRef {
    /// The backbone as the config named it: a directory or a hub id.
    pub spec: String,
    /// The directory it resolved to when the run was trained (absolute), tried when `spec` no longer
    /// resolves (a relative path read from another directory).
    pub dir: PathBuf,
    /// The weights file's name in that directory.
    pub weights: String,
    /// SHA-256 of the weights file, lowercase hex.
    pub sha256: String,
    /// The tokenizer file (`tokenizer.json` or `spm.model`) and its SHA-256: another tokenizer feeds
    /// the adapters other ids.
    pub tokenizer: String,
    pub tokenizer_sha256: String,
}

const WEIGHTS: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];
const TOKENIZERS: [&str; 2] = ["tokenizer.json", "spm.model"];

impl BaseRef {
    /// Resolves `spec` and fingerprints its weights.
    pub fn of(spec: &str) -> Result<Self> {
        let dir = resolve_model_dir(spec)?;
        let weights = first_file(&dir, &WEIGHTS, "weights")?;
        let sha256 = sha256_file(&dir.join(weights))?;
        let tokenizer = first_file(&dir, &TOKENIZERS, "tokenizer")?;
        let tokenizer_sha256 = sha256_file(&dir.join(tokenizer))?;
        let dir = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
        Ok(Self {
            spec: spec.to_string(),
            dir,
            weights: weights.to_string(),
            sha256,
            tokenizer: tokenizer.to_string(),
            tokenizer_sha256,
        })
    }

    /// The base's directory today: `spec` resolved, or else the directory recorded at training; an
    /// error when neither holds the same weights.
    pub fn locate(&self) -> Result<PathBuf> {
        let mut tried = Vec::new();
        let candidates = [resolve_model_dir(&self.spec).ok(), Some(self.dir.clone())];
        for dir in candidates.into_iter().flatten() {
            let path = dir.join(&self.weights);
            if !path.is_file() {
                tried.push(format!("{} (no {})", dir.display(), self.weights));
                continue;
            }
            let sha256 = sha256_file(&path)?;
            if sha256 != self.sha256 {
                tried.push(format!("{} (sha256 {sha256})", path.display()));
                continue;
            }
            let tokenizer = dir.join(&self.tokenizer);
            match tokenizer.is_file().then(|| sha256_file(&tokenizer)).transpose()? {
                Some(sha) if sha == self.tokenizer_sha256 => return Ok(dir),
                Some(sha) => tried.push(format!("{} (another tokenizer, sha256 {sha})", tokenizer.display())),
                None => tried.push(format!("{} (no {})", dir.display(), self.tokenizer)),
            }
        }
        bail!(
            "the base model `{}` the adapters were trained for (weights sha256 {}, {} sha256 {}) is not where the run \
             found it: tried {}. Put that checkpoint at `{}` (or {}) and try again; adapters on other weights give \
             wrong rewards",
            self.spec,
            self.sha256,
            self.tokenizer,
            self.tokenizer_sha256,
            tried.join(", "),
            self.spec,
            self.dir.display()
        )
    }
}

/// The first of `names` that `dir` holds.
fn first_file(dir: &Path, names: &[&'static str], what: &str) -> Result<&'static str> {
    names
        .iter()
        .copied()
        .find(|n| dir.join(n).is_file())
        .with_context(|| format!("{} has no {what} ({})", dir.display(), names.join(" or ")))
}

/// SHA-256 of a file, lowercase hex, read in blocks.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_the_standard_test_vector() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(sha256_file(&path).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
