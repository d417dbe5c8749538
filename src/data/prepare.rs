//! `rmroute prepare`: raw files laid out as in `../shared/data/` → per domain `train.jsonl` and
//! `test.jsonl` of pair records, plus `stats.json` that accounts for every record read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use super::convert::{id_prefix, Conversion};
use super::error::RecordError;
use super::record::PairRecord;
use super::split::is_test;
use super::{anthropic, dahoas, hellaswag, oasst, shp, DOMAINS};
use crate::io::{write_atomic, write_atomic_with, StagedDir};

#[derive(Debug, Clone)]
pub struct PrepareOptions {
    pub input: PathBuf,
    pub out: PathBuf,
    /// Domains to convert; empty means every domain folder present under `input`.
    pub domains: Vec<String>,
    /// Cap on pairs per domain (train + test), for quick runs.
    pub max_pairs: Option<usize>,
    /// Share of prompts sent to the test split where the source has no split of its own.
    pub test_fraction: f64,
    /// Seeds the HellaSwag negative draw and the `max_pairs` selection.
    pub seed: u64,
    /// Skip and count invalid records instead of stopping at the first.
    pub skip_invalid: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("{0}\n  (fix the record, or pass --skip-invalid to skip such records and count them in stats.json)")]
    Record(RecordError),
    #[error("unknown domain `{name}`: expected one of {known}", known = DOMAINS.join(", "))]
    UnknownDomain { name: String },
    #[error("no folder for domain `{domain}`: expected {}", dir.display())]
    MissingDomain { domain: String, dir: PathBuf },
    #[error("no domain folder ({known}) under {}", .0.display(), known = DOMAINS.join(", "))]
    NoDomains(PathBuf),
    #[error("no data files for domain `{domain}` under {} ({expected})", dir.display())]
    NoFiles { domain: String, dir: PathBuf, expected: &'static str },
    #[error("{}: {message}", path.display())]
    Unsupported { path: PathBuf, message: String },
    #[error("--test-fraction must be in [0, 1], got {0}")]
    TestFraction(f64),
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{} exists and is not a prepared data folder (no stats.json): choose another --out", .0.display())]
    NotPrepared(PathBuf),
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
}

impl From<RecordError> for PrepareError {
    fn from(e: RecordError) -> Self {
        Self::Record(e)
    }
}

/// Which split a raw file belongs to, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceSplit {
    Train,
    Test,
    Validation,
    None,
}

fn source_split(file: &Path) -> SourceSplit {
    let name = file.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    if name.contains("train") {
        SourceSplit::Train
    } else if name.contains("test") {
        SourceSplit::Test
    } else if name.contains("val") || name.contains("dev") {
        SourceSplit::Validation
    } else {
        SourceSplit::None
    }
}

#[derive(Debug, Default, Serialize)]
pub struct TextStats {
    pub mean: f64,
    pub max: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct SplitStats {
    pub pairs: usize,
    pub prompt_chars: TextStats,
    pub chosen_chars: TextStats,
    pub rejected_chars: TextStats,
}

#[derive(Debug, Default, Serialize)]
pub struct DomainStats {
    /// Files read, relative to the domain folder.
    pub files: Vec<String>,
    /// Files present but not used (a validation split beside a train/test pair).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unused_files: Vec<String>,
    /// How train and test were made.
    pub split: String,
    pub source_records: usize,
    pub pairs_converted: usize,
    /// Pairs left out by `--max-pairs`.
    pub pairs_over_cap: usize,
    /// Records dropped by a conversion rule, by reason.
    pub dropped: BTreeMap<String, usize>,
    /// Invalid records skipped under `--skip-invalid`, by reason.
    pub invalid: BTreeMap<String, usize>,
    pub train: SplitStats,
    pub test: SplitStats,
}

#[derive(Debug, Default, Serialize)]
pub struct PrepareStats {
    pub input: String,
    pub seed: u64,
    pub test_fraction: f64,
    pub max_pairs: Option<usize>,
    pub domains: BTreeMap<String, DomainStats>,
}

/// Runs the whole conversion and writes the outputs; returns the statistics written to `stats.json`.
pub fn prepare(opts: &PrepareOptions) -> Result<PrepareStats, PrepareError> {
    if !(0.0..=1.0).contains(&opts.test_fraction) {
        return Err(PrepareError::TestFraction(opts.test_fraction));
    }
    let domains = select_domains(opts)?;
    let mut stats = PrepareStats {
        input: opts.input.display().to_string(),
        seed: opts.seed,
        test_fraction: opts.test_fraction,
        max_pairs: opts.max_pairs,
        domains: BTreeMap::new(),
    };
    // Convert everything first, so a bad record stops the run before any output is written.
    let mut outputs = Vec::new();
    for domain in &domains {
        let (train, test, domain_stats) = prepare_domain(opts, domain)?;
        outputs.push((domain.clone(), train, test));
        stats.domains.insert(domain.clone(), domain_stats);
    }
    // The whole folder is written under a temporary name and swapped in: no domain of an earlier
    // `prepare` outlives it, and a crash leaves the old folder or the new one.
    let out = &opts.out;
    let holds_other_things =
        std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(false) && !out.join("stats.json").is_file();
    if holds_other_things {
        return Err(PrepareError::NotPrepared(out.clone()));
    }
    let write_err = |source| PrepareError::Write { path: out.clone(), source };
    let staged = StagedDir::new(out).map_err(write_err)?;
    for (domain, train, test) in &outputs {
        write_pairs(&staged.path().join(domain).join("train.jsonl"), train)?;
        write_pairs(&staged.path().join(domain).join("test.jsonl"), test)?;
    }
    let path = staged.path().join("stats.json");
    let mut json =
        serde_json::to_vec_pretty(&stats).map_err(|e| PrepareError::Write { path: path.clone(), source: e.into() })?;
    json.push(b'\n');
    write_atomic(&path, &json).map_err(|source| PrepareError::Write { path, source })?;
    staged.commit().map_err(write_err)?;
    Ok(stats)
}

fn select_domains(opts: &PrepareOptions) -> Result<Vec<String>, PrepareError> {
    if opts.domains.is_empty() {
        let present: Vec<String> =
            DOMAINS.iter().filter(|d| opts.input.join(d).is_dir()).map(|d| d.to_string()).collect();
        if present.is_empty() {
            return Err(PrepareError::NoDomains(opts.input.clone()));
        }
        return Ok(present);
    }
    for domain in &opts.domains {
        if !DOMAINS.contains(&domain.as_str()) {
            return Err(PrepareError::UnknownDomain { name: domain.clone() });
        }
        let dir = opts.input.join(domain);
        if !dir.is_dir() {
            return Err(PrepareError::MissingDomain { domain: domain.clone(), dir });
        }
    }
    Ok(opts.domains.clone())
}

/// The files of a domain that its converters read, sorted for a stable order.
fn data_files(dir: &Path) -> Result<Vec<PathBuf>, PrepareError> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|source| PrepareError::Read { path: d.clone(), source })?;
        for entry in entries {
            let path = entry.map_err(|source| PrepareError::Read { path: d.clone(), source })?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            if name.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if [".jsonl", ".json", ".txt", ".parquet"].iter().any(|ext| {
                name.ends_with(ext) || name.ends_with(&format!("{ext}.gz")) || name.ends_with(&format!("{ext}.bz2"))
            }) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

type Prepared = (Vec<PairRecord>, Vec<PairRecord>, DomainStats);

fn prepare_domain(opts: &PrepareOptions, domain: &str) -> Result<Prepared, PrepareError> {
    let dir = opts.input.join(domain);
    let files = data_files(&dir)?;
    if files.is_empty() {
        let expected = match domain {
            "hellaswag" => "HellaSwag JSONL or the 6-line text form, .txt/.jsonl, optionally .gz/.bz2",
            "shp" => "<subreddit>/train.json and test.json",
            _ => "JSONL, optionally .gz/.bz2",
        };
        return Err(PrepareError::NoFiles { domain: domain.into(), dir, expected });
    }
    let splits: Vec<SourceSplit> = files.iter().map(|f| source_split(f)).collect();
    // HellaSwag's official test split has no labels: the paper's test set is its validation split.
    let test_split = if domain == "hellaswag" && splits.contains(&SourceSplit::Validation) {
        SourceSplit::Validation
    } else {
        SourceSplit::Test
    };
    let keeps_source_split = splits.contains(&SourceSplit::Train) && splits.contains(&test_split);
    let mut stats = DomainStats {
        split: match (keeps_source_split, test_split) {
            (true, SourceSplit::Validation) => "the source's train file, and its validation file as the test split \
                (HellaSwag's test split has no labels; the paper tests on validation)"
                .into(),
            (true, _) => "the source's own train/test files".into(),
            (false, _) => format!(
                "by a hash of the prompt, test fraction {} (the source has no train/test pair)",
                opts.test_fraction
            ),
        },
        ..DomainStats::default()
    };
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (file, split) in files.iter().zip(splits) {
        let relative = file.strip_prefix(&dir).unwrap_or(file).display().to_string();
        if keeps_source_split && split != SourceSplit::Train && split != test_split {
            eprintln!("warning: {domain}: not using {relative}: {}", stats.split);
            stats.unused_files.push(relative);
            continue;
        }
        let mut conversion = Conversion::new(opts.skip_invalid);
        convert_file(domain, &dir, file, opts.seed, &mut conversion)?;
        stats.files.push(relative);
        stats.source_records += conversion.source_records;
        stats.pairs_converted += conversion.pairs.len();
        for (reason, n) in conversion.dropped {
            *stats.dropped.entry(reason).or_default() += n;
        }
        for (reason, n) in conversion.invalid {
            *stats.invalid.entry(reason).or_default() += n;
        }
        for pair in conversion.pairs {
            let to_test = match split {
                _ if keeps_source_split => split == test_split,
                _ => is_test(&pair.prompt, opts.test_fraction),
            };
            if to_test {
                test.push(pair)
            } else {
                train.push(pair)
            }
        }
    }
    if let Some(cap) = opts.max_pairs {
        stats.pairs_over_cap = cap_pairs(&mut train, &mut test, cap, opts.seed);
    }
    stats.train = split_stats(&train);
    stats.test = split_stats(&test);
    Ok((train, test, stats))
}

fn convert_file(domain: &str, dir: &Path, file: &Path, seed: u64, out: &mut Conversion) -> Result<(), PrepareError> {
    let prefix = id_prefix(domain, dir, file);
    let name = file.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    if name.contains(".parquet") {
        return Err(PrepareError::Unsupported {
            path: file.to_path_buf(),
            message: "parquet is not read; export it to JSONL with the same columns (e.g. pandas `to_json(orient=\"records\", lines=True)`)".into(),
        });
    }
    match domain {
        "anthropic" => anthropic::convert(file, &prefix, out)?,
        "hellaswag" if name.contains(".txt") => hellaswag::convert_text(file, &prefix, seed, out)?,
        "hellaswag" => hellaswag::convert_jsonl(file, &prefix, seed, out)?,
        "oasst" => oasst::convert(file, &prefix, out)?,
        "shp" => shp::convert(file, &prefix, out)?,
        "dahoas" => dahoas::convert(file, &prefix, out)?,
        other => return Err(PrepareError::UnknownDomain { name: other.into() }),
    }
    Ok(())
}

/// Keeps `cap` pairs chosen by a seeded shuffle (so every source file is represented), in file order.
fn cap_pairs(train: &mut Vec<PairRecord>, test: &mut Vec<PairRecord>, cap: usize, seed: u64) -> usize {
    let total = train.len() + test.len();
    if total <= cap {
        return 0;
    }
    let mut order: Vec<usize> = (0..total).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    let mut keep = vec![false; total];
    for &i in &order[..cap] {
        keep[i] = true;
    }
    let n_train = train.len();
    let mut i = 0;
    train.retain(|_| (keep[i], i += 1).0);
    let mut j = n_train;
    test.retain(|_| (keep[j], j += 1).0);
    total - cap
}

fn text_stats<'a>(texts: impl Iterator<Item = &'a str>) -> TextStats {
    let (mut sum, mut max, mut n) = (0usize, 0usize, 0usize);
    for t in texts {
        let c = t.chars().count();
        sum += c;
        max = max.max(c);
        n += 1;
    }
    TextStats { mean: if n == 0 { 0.0 } else { (sum as f64 / n as f64 * 10.0).round() / 10.0 }, max }
}

fn split_stats(pairs: &[PairRecord]) -> SplitStats {
    SplitStats {
        pairs: pairs.len(),
        prompt_chars: text_stats(pairs.iter().map(|p| p.prompt.as_str())),
        chosen_chars: text_stats(pairs.iter().map(|p| p.chosen.as_str())),
        rejected_chars: text_stats(pairs.iter().map(|p| p.rejected.as_str())),
    }
}

fn write_pairs(path: &Path, pairs: &[PairRecord]) -> Result<(), PrepareError> {
    write_atomic_with(path, |w| {
        for pair in pairs {
            serde_json::to_writer(&mut *w, pair)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
    .map_err(|source| PrepareError::Write { path: path.to_path_buf(), source })
}
