//! `rmroute serve`: loads a model as `score` does and serves its rewards over HTTP.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use rmroute::serve::{bind, serve, ServeOptions};

use super::model::ModelArgs;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The model, as for `score`: an rmroute run directory, a Hugging Face reward model directory or a
    /// hub id, with the same `--adapter`, `--max-length`, `--truncation`, `--switching` and `--device`.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on: loopback unless told otherwise (0.0.0.0 accepts other machines).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 5000)]
    pub port: u16,
    /// Most rows (responses) scored in one forward pass, gathered across requests.
    #[arg(long, default_value_t = 32, value_parser = super::at_least_one::<usize>)]
    pub max_batch: usize,
    /// How long a request waits for others to share its batch, in milliseconds.
    #[arg(long, default_value_t = 5)]
    pub max_wait_ms: u64,
    /// Largest request body accepted, in bytes (413 beyond).
    #[arg(long, default_value_t = 16 * 1024 * 1024, value_parser = super::at_least_one::<usize>)]
    pub max_body_bytes: usize,
}

pub fn run(args: ServeArgs) -> Result<()> {
    if args.max_batch == 0 {
        bail!("--max-batch must be positive");
    }
    let (dir, scorer) = args.model.load()?;
    let serve_opts = ServeOptions {
        max_batch: args.max_batch,
        max_wait: Duration::from_millis(args.max_wait_ms),
        max_body_bytes: args.max_body_bytes,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let (listener, addr) = bind(&args.host, args.port).await?;
        // The signal handlers exist before the address is announced: a client that stops the server
        // right away still gets a graceful shutdown.
        let shutdown = shutdown_signal()?;
        let method = scorer.run.as_ref().map(|r| r.method.as_str()).unwrap_or("reward model");
        let reach = if addr.ip().is_loopback() {
            "this machine only (--host 0.0.0.0 to accept others)"
        } else {
            "other machines too"
        };
        eprintln!("serving {} ({method}) to {reach}; Ctrl-C stops after the requests in flight", dir.display());
        println!("listening on http://{addr}");
        std::io::stdout().flush()?;
        serve(scorer, &dir.display().to_string(), listener, serve_opts, shutdown).await
    })
}

/// A future that resolves on the first SIGINT or SIGTERM; a second one exits at once (130), for a
/// shutdown stuck on a slow client.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("listening for SIGTERM")?;
    #[cfg(unix)]
    let mut interrupt =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).context("listening for SIGINT")?;
    Ok(async move {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = interrupt.recv() => {},
                _ = terminate.recv() => {},
            }
            eprintln!("shutting down: finishing the requests in flight (a second signal stops at once)");
            tokio::spawn(async move {
                tokio::select! {
                    _ = interrupt.recv() => {},
                    _ = terminate.recv() => {},
                }
                eprintln!("stopped before the requests in flight were answered");
                std::process::exit(130);
            });
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("shutting down: finishing the requests in flight");
        }
    })
}
