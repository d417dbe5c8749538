//! `rmroute label-aspects`: capability-point labels for DMoERM from an OpenAI-compatible server.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;

use rmroute::aspects::client::{ChatClient, ClientConfig};
use rmroute::aspects::read_aspects;
use rmroute::aspects::run::{label_aspects, LabelOptions, RunReport, ANSWERS_FILE};

#[derive(Debug, Args)]
pub struct LabelAspectsArgs {
    /// The server's base URL (`https://api.openai.com/v1`, `http://127.0.0.1:8000/v1`); `/chat/completions`
    /// is appended unless it is there.
    #[arg(long)]
    pub endpoint: String,
    /// The judge model's name on that server.
    #[arg(long)]
    pub model: String,
    /// JSON object of capability points: `{"helpfulness": "how well the response answers the request", …}`.
    #[arg(long)]
    pub aspects: PathBuf,
    /// Prepared data folder (`<domain>/train.jsonl`, `test.jsonl`); its split files are rewritten with labels.
    #[arg(long)]
    pub data: PathBuf,
    /// Questions in flight at once.
    #[arg(long, default_value_t = 4, value_parser = super::at_least_one::<usize>)]
    pub concurrency: usize,
    /// Domains to label, comma-separated (default: every prepared domain).
    #[arg(long, value_delimiter = ',')]
    pub domains: Vec<String>,
    /// Splits to label, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "train,test")]
    pub splits: Vec<String>,
    /// Environment variable holding the API key; when it is unset no key is sent (local servers).
    #[arg(long, default_value = "OPENAI_API_KEY")]
    pub api_key_env: String,
    /// Limit for one request, in seconds.
    #[arg(long, default_value_t = 60, value_parser = super::at_least_one::<u64>)]
    pub timeout_secs: u64,
    /// Retries of a question after HTTP 429/5xx, a timeout or a dropped connection (a malformed reply is
    /// retried once, HTTP 400/413/422 not at all).
    #[arg(long, default_value_t = 5)]
    pub max_retries: u32,
    /// The request's `max_tokens`; 0 leaves it out (OpenAI's reasoning models refuse it, thinking models
    /// need room to think).
    #[arg(long, default_value_t = 8)]
    pub max_tokens: u32,
    /// Replace existing labels of the asked capability points that label-aspects did not write (such as
    /// `prepare`'s OASST labels); without it the run refuses to touch them.
    #[arg(long)]
    pub overwrite: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(args: LabelAspectsArgs) -> Result<()> {
    if args.concurrency == 0 || args.timeout_secs == 0 {
        bail!("--concurrency and --timeout-secs must be at least 1");
    }
    let mut splits: Vec<String> = Vec::new();
    for split in &args.splits {
        if !splits.contains(split) {
            splits.push(split.clone());
        }
    }
    if let Some(bad) = splits.iter().find(|s| !matches!(s.as_str(), "train" | "test")) {
        bail!("unknown split `{bad}` in --splits: expected train, test or both");
    }
    let aspects = read_aspects(&args.aspects)?;
    let api_key = match std::env::var(&args.api_key_env) {
        Ok(key) if !key.trim().is_empty() => Some(key.trim().to_string()),
        Ok(_) | Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => bail!("${} is not valid UTF-8", args.api_key_env),
    };
    let client = ChatClient::new(ClientConfig {
        endpoint: args.endpoint.clone(),
        model: args.model.clone(),
        api_key,
        api_key_env: args.api_key_env.clone(),
        timeout: Duration::from_secs(args.timeout_secs),
        max_retries: args.max_retries,
    });
    let opts = LabelOptions {
        data: args.data.clone(),
        domains: args.domains.clone(),
        splits,
        aspects,
        model: args.model.clone(),
        max_tokens: args.max_tokens,
        concurrency: args.concurrency,
        overwrite: args.overwrite,
        quiet: args.quiet,
    };
    let report = label_aspects(&opts, &client)?;
    print_report(&report);
    Ok(())
}

/// The run and the table per capability point, on stderr.
fn print_report(report: &RunReport) {
    let retries: Vec<String> = report.retries.iter().map(|(kind, n)| format!("{n} × {kind}")).collect();
    eprintln!(
        "{} questions: {} answered before, {} asked now{}",
        report.questions,
        report.reused,
        report.asked,
        if retries.is_empty() { String::new() } else { format!(" (retried: {})", retries.join(", ")) }
    );
    if report.unanswered > 0 {
        eprintln!(
            "{} questions got no answer (listed with the reason under `unanswered` in {}); their pairs keep the \
             label they had, if any, and the same command asks them again",
            report.unanswered,
            report.summary_path.display()
        );
    }
    eprintln!("| capability point | pairs | +1 | -1 | 0 | inconsistent | unanswered | agreement |");
    eprintln!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, c) in &report.summary.aspects {
        let agreement = c.agreement.map_or("-".to_string(), |a| format!("{:.1}%", 100.0 * a));
        eprintln!(
            "| {name} | {} | {} | {} | {} | {} | {} | {agreement} |",
            c.pairs, c.chosen_better, c.rejected_better, c.tie, c.inconsistent, c.unanswered
        );
    }
    for path in &report.rewritten {
        eprintln!("labelled {}", path.display());
    }
    eprintln!(
        "wrote {} (answers kept in <domain>/{ANSWERS_FILE}; agreement = consistent / answered in both orders)",
        report.summary_path.display()
    );
}
