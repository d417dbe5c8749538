//! Load on `rmroute serve` over loopback against offline scoring of the same pairs (driven by
//! `scripts/bench-serve.sh`; bounded in count, never a timed test).
//!
//! `bench_serve prepare DIR [--model M]`: a reward model of backbone M (a new head) in DIR.
//! `bench_serve run DIR --rmroute BIN [--requests N] [--pairs K]`: scores N requests of K pairs (varied
//!   lengths) offline in batches of 32, then through `BIN serve` with 1, 8 and 64 concurrent clients
//!   posting to `/score`, and prints a Markdown table of requests/s and pairs/s.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rmroute::methods::{load as load_scorer, ScoreOptions};
use rmroute::model::{LoadOptions, RewardModel};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    rmroute::ops::alloc::keep_freed_memory(); // as the rmroute binary does
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let number = |name: &str, default: usize| -> Result<usize> {
        flag(name).map(|v| v.parse().with_context(|| format!("{name} {v}"))).transpose().map(|v| v.unwrap_or(default))
    };
    match (args.first().map(String::as_str), args.get(1)) {
        (Some("prepare"), Some(dir)) => {
            let model = flag("--model").unwrap_or_else(|| "models/all-MiniLM-L6-v2".into());
            let opts = LoadOptions { new_head: true, ..Default::default() };
            RewardModel::load(Path::new(&model), &opts)?.save_pretrained(Path::new(dir))
        }
        (Some("run"), Some(dir)) => {
            let bin = PathBuf::from(flag("--rmroute").context("--rmroute BIN")?);
            run(Path::new(dir), &bin, number("--requests", 64)?, number("--pairs", 4)?)
        }
        _ => bail!("usage: bench_serve prepare DIR [--model M] | run DIR --rmroute BIN [--requests N] [--pairs K]"),
    }
}

/// Pairs of varied length (prompts of 10–60 words, responses of 5–80), as real ones vary.
fn pairs(n: usize) -> Vec<(String, String)> {
    let words = ["the", "model", "answers", "a", "question", "about", "rivers", "and", "their", "sources"];
    let text = |count: usize, seed: usize| {
        (0..count).map(|j| words[(seed + j * 7) % words.len()]).collect::<Vec<_>>().join(" ")
    };
    (0..n).map(|i| (text(10 + (i * 13) % 51, i), text(5 + (i * 29) % 76, i + 3))).collect()
}

fn post(addr: &str, body: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    let head = format!(
        "POST /score HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let status = reply.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, reply.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

fn run(dir: &Path, bin: &Path, requests: usize, per_request: usize) -> Result<()> {
    let all = pairs(requests * per_request);
    let scorer = load_scorer(dir, &LoadOptions::default(), &ScoreOptions::default())?;
    let refs: Vec<(&str, &str)> = all.iter().map(|(p, r)| (p.as_str(), r.as_str())).collect();
    scorer.score(&refs[..8], 8)?; // warm-up
    let start = Instant::now();
    let offline = scorer.score(&refs, 32)?.rewards;
    let offline_seconds = start.elapsed().as_secs_f64();
    drop(scorer);

    let mut child = Command::new(bin)
        .args(["serve", "--model", &dir.display().to_string(), "--port", "0", "--max-batch", "32"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
    let addr = line.trim().strip_prefix("listening on http://").context("no address printed")?.to_string();
    let bodies: Vec<String> = all
        .chunks(per_request)
        .map(|c| {
            let items: Vec<_> = c.iter().map(|(p, r)| serde_json::json!({"prompt": p, "response": r})).collect();
            serde_json::json!({ "pairs": items }).to_string()
        })
        .collect();
    post(&addr, &bodies[0])?; // warm-up

    println!("| {requests} requests × {per_request} pairs | requests/s | pairs/s | vs offline `score` |");
    println!("|---|---:|---:|---:|");
    let offline_rate = all.len() as f64 / offline_seconds;
    println!("| offline `score` (batches of 32) | | {offline_rate:.1} | 1.00 |");
    for clients in [1usize, 8, 64] {
        let start = Instant::now();
        let worst = std::thread::scope(|scope| -> Result<f64> {
            let handles: Vec<_> = (0..clients)
                .map(|c| {
                    let (addr, bodies, offline) = (&addr, &bodies, &offline);
                    scope.spawn(move || -> Result<f64> {
                        let mut worst = 0f64;
                        for (i, body) in bodies.iter().enumerate().skip(c).step_by(clients) {
                            let (status, text) = post(addr, body)?;
                            if status != 200 {
                                bail!("HTTP {status}: {text}");
                            }
                            let got: serde_json::Value = serde_json::from_str(&text)?;
                            for (k, r) in got["rewards"].as_array().context("no rewards")?.iter().enumerate() {
                                let want = f64::from(offline[i * per_request + k]);
                                worst = worst.max((r.as_f64().unwrap_or(f64::NAN) - want).abs());
                            }
                        }
                        Ok(worst)
                    })
                })
                .collect();
            let mut worst = 0f64;
            for h in handles {
                worst = worst.max(h.join().map_err(|_| anyhow::anyhow!("a client panicked"))??);
            }
            Ok(worst)
        })?;
        let seconds = start.elapsed().as_secs_f64();
        let rate = all.len() as f64 / seconds;
        println!(
            "| {clients} concurrent client(s) | {:.1} | {rate:.1} | {:.2} (largest reward difference {worst:.1e}) |",
            requests as f64 / seconds,
            rate / offline_rate
        );
    }
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    child.wait()?;
    Ok(())
}
