//! `rmroute serve`: rewards over HTTP for RLHF loops. Any run `methods::load` loads is served; OpenRLHF's
//! remote reward model posts `{"query": [...], "prompts"?: [...]}` to `/get_reward`.
//!
//! The model runs on a thread of its own: handlers validate a request, queue its rows and await the
//! rewards. The thread takes whatever requests are queued, up to `max_batch` rows or until `max_wait`
//! has passed since the first, sorts their rows by length (so each batch pads little) and scores them
//! in batches of `max_batch`; each request gets its own rows back. HTTP stays responsive while it
//! scores, and rewards do not depend on which requests share a batch.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::data::anthropic::split_transcript;
use crate::data::order::input_order;
use crate::methods::{Scored, Scorer};

/// How the server batches and what it accepts.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Most rows scored in one forward pass.
    pub max_batch: usize,
    /// How long the first queued request waits for others to share its batch.
    pub max_wait: Duration,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
}

/// One request's rows, and where its rewards go.
struct Job {
    pairs: Vec<(String, String)>,
    reply: oneshot::Sender<std::result::Result<Scored, String>>,
}

#[derive(Clone)]
struct AppState {
    jobs: mpsc::SyncSender<Job>,
    info: Value,
}

/// A JSON error: `{"error": message}` with its status.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

/// What `/info` says about the model served.
pub fn describe(scorer: &Scorer, source: &str) -> Value {
    let run = scorer.run.as_ref();
    json!({
        "model": source,
        "method": run.map(|r| r.method.as_str()).unwrap_or("reward model"),
        "domains": run.map(|r| r.domains.clone()).unwrap_or_default(),
        "backbone": run.map(|r| r.backbone.clone()),
        "parameters": run.map(|r| r.total_parameters).or(scorer.model.parameter_count()),
        "truncation": scorer.truncation(),
        "max_length": scorer.max_length(),
        "routed": scorer.is_routed(),
    })
}

/// Serves `scorer` on `listener` until `shutdown` resolves, then finishes the requests in flight.
/// `source` names the model in `/info`.
pub async fn serve(
    scorer: Scorer,
    source: &str,
    listener: tokio::net::TcpListener,
    opts: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let info = describe(&scorer, source);
    // A bounded queue: when the model falls behind, handlers wait instead of piling up memory.
    let (jobs, queue) = mpsc::sync_channel::<Job>(1024);
    let batcher_opts = opts.clone();
    let model = std::thread::Builder::new()
        .name("rmroute-model".into())
        .spawn(move || run_batches(&scorer, &queue, &batcher_opts))
        .context("starting the model thread")?;
    let app = Router::new()
        .route("/health", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/info", get(|State(state): State<AppState>| async move { Json(state.info.clone()) }))
        .route("/get_reward", post(get_reward))
        .route("/score", post(score))
        .fallback(|| async {
            ApiError(StatusCode::NOT_FOUND, "no such endpoint: /get_reward, /score, /health, /info".into())
        })
        .method_not_allowed_fallback(|| async {
            ApiError(StatusCode::METHOD_NOT_ALLOWED, "POST /get_reward and /score; GET /health and /info".into())
        })
        .layer(DefaultBodyLimit::max(opts.max_body_bytes))
        .with_state(AppState { jobs, info });
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await.context("serving HTTP")?;
    // The router (and with it the last sender) is gone: the model thread drains and stops.
    tokio::task::spawn_blocking(move || model.join())
        .await
        .context("waiting for the model thread")?
        .map_err(|_| anyhow::anyhow!("the model thread panicked"))?;
    Ok(())
}

/// The model thread: batches queued requests and scores them until every sender is gone.
fn run_batches(scorer: &Scorer, queue: &mpsc::Receiver<Job>, opts: &ServeOptions) {
    while let Ok(first) = queue.recv() {
        let deadline = Instant::now() + opts.max_wait;
        let mut rows = first.pairs.len();
        let mut jobs = vec![first];
        while rows < opts.max_batch {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
            match queue.recv_timeout(left) {
                Ok(job) => {
                    rows += job.pairs.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        // Whatever else is already queued joins too (up to a few batches), so sorting by length has
        // rows to choose from and each batch pads little.
        while rows < BUCKET_BATCHES * opts.max_batch {
            match queue.try_recv() {
                Ok(job) => {
                    rows += job.pairs.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        // A client that went away is not waiting for its rewards.
        jobs.retain(|job| !job.reply.is_closed());
        score_jobs(scorer, jobs, opts.max_batch);
    }
}

/// How many batches' worth of queued rows one round sorts by length together.
const BUCKET_BATCHES: usize = 4;

/// Scores every row of `jobs` in length-sorted batches and answers each job with its own rows. A batch
/// that fails (or panics) fails only the jobs with rows in it.
fn score_jobs(scorer: &Scorer, jobs: Vec<Job>, max_batch: usize) {
    let all: Vec<(usize, usize)> =
        jobs.iter().enumerate().flat_map(|(j, job)| (0..job.pairs.len()).map(move |r| (j, r))).collect();
    // The scorer's own length ordering: each batch goes to it already in that order.
    let rows: Vec<(&str, &str)> =
        all.iter().map(|&(j, r)| (jobs[j].pairs[r].0.as_str(), jobs[j].pairs[r].1.as_str())).collect();
    let order = input_order(&rows);
    let mut rewards = vec![f32::NAN; all.len()];
    let mut domains: Vec<Option<String>> = vec![None; all.len()];
    let mut failed: Vec<Option<String>> = vec![None; jobs.len()];
    for chunk in order.chunks(max_batch.max(1)) {
        let pairs: Vec<(&str, &str)> = chunk.iter().map(|&i| rows[i]).collect();
        let scored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scorer.score(&pairs, pairs.len())));
        let error = match scored {
            Ok(Ok(scored)) if scored.rewards.iter().all(|r| r.is_finite()) => {
                for (k, &i) in chunk.iter().enumerate() {
                    rewards[i] = scored.rewards[k];
                    domains[i] = scored.domains.as_ref().map(|d| d[k].clone());
                }
                continue;
            }
            Ok(Ok(_)) => "the model gave a reward that is not a finite number".to_string(),
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => "the model panicked on this batch".to_string(),
        };
        for &i in chunk {
            failed[all[i].0] = Some(error.clone());
        }
    }
    let mut start = 0;
    for (job, failure) in jobs.into_iter().zip(failed) {
        let n = job.pairs.len();
        let answer = match failure {
            Some(e) => Err(e),
            None => Ok(Scored {
                rewards: rewards[start..start + n].to_vec(),
                domains: domains[start..start + n].iter().cloned().collect(),
            }),
        };
        // A client that went away no longer waits for its answer.
        let _ = job.reply.send(answer);
        start += n;
    }
}

/// Queues `pairs` and awaits their rewards.
async fn queue(state: &AppState, pairs: Vec<(String, String)>) -> std::result::Result<Scored, ApiError> {
    let (reply, answer) = oneshot::channel();
    let gone = || ApiError(StatusCode::SERVICE_UNAVAILABLE, "the model is not running".into());
    match state.jobs.try_send(Job { pairs, reply }) {
        Ok(()) => {}
        Err(mpsc::TrySendError::Disconnected(_)) => return Err(gone()),
        Err(mpsc::TrySendError::Full(job)) => {
            // The queue is full: wait for room off the async threads.
            let jobs = state.jobs.clone();
            tokio::task::spawn_blocking(move || jobs.send(job))
                .await
                .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .map_err(|_| gone())?;
        }
    }
    let scored = answer
        .await
        .map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "the model thread dropped the request".into()))?;
    scored.map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("scoring failed: {e}")))
}

/// The body, or a JSON error for one too large (413) or unreadable (400).
fn body(body: std::result::Result<Bytes, BytesRejection>) -> std::result::Result<Bytes, ApiError> {
    body.map_err(|e| {
        let status = e.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "request body too large (see --max-body-bytes)".to_string()
        } else {
            format!("could not read the request body: {e}")
        };
        ApiError(status, message)
    })
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|_| bad("the request body is not UTF-8"))?;
    crate::io::parse_json(text).map_err(|e| bad(format!("malformed request: {e}")))
}

/// OpenRLHF's remote reward request; other fields it sends (`labels`, …) are accepted and ignored.
#[derive(Deserialize)]
struct GetReward {
    query: Vec<String>,
    #[serde(default)]
    prompts: Option<Vec<String>>,
}

/// `(prompt, response)` of each query: the query minus its prompt prefix, or without prompts split
/// before the final `\n\nAssistant:` turn (the HH-RLHF format `prepare` reads).
fn split_queries(req: &GetReward) -> std::result::Result<Vec<(String, String)>, ApiError> {
    if req.query.is_empty() {
        return Err(bad("`query` is empty: send at least one text"));
    }
    match &req.prompts {
        Some(prompts) if prompts.len() != req.query.len() => {
            Err(bad(format!("`query` has {} texts but `prompts` has {}", req.query.len(), prompts.len())))
        }
        Some(prompts) => req
            .query
            .iter()
            .zip(prompts)
            .enumerate()
            .map(|(i, (query, prompt))| match query.strip_prefix(prompt.as_str()) {
                Some(response) => Ok((prompt.clone(), response.to_string())),
                None => Err(bad(format!("query {i} does not start with prompts[{i}]"))),
            })
            .collect(),
        None => req
            .query
            .iter()
            .enumerate()
            .map(|(i, query)| match split_transcript(query) {
                Some((prompt, response)) => Ok((prompt.to_string(), response.to_string())),
                None => Err(bad(format!(
                    "query {i} has no `\\n\\nAssistant:` turn to split at: send `prompts` (each query's prompt prefix)"
                ))),
            })
            .collect(),
    }
}

async fn get_reward(
    State(state): State<AppState>,
    raw: std::result::Result<Bytes, BytesRejection>,
) -> std::result::Result<Json<Value>, ApiError> {
    let req: GetReward = parse(&body(raw)?)?;
    let scored = queue(&state, split_queries(&req)?).await?;
    // OpenRLHF concatenates every `extra_logs` value as a tensor: numbers only there. The routed domain
    // names go beside them, where it ignores them.
    let mut answer = json!({ "rewards": scored.rewards, "scores": scored.rewards, "extra_logs": {} });
    if let Some(domains) = scored.domains {
        answer["domains"] = json!(domains);
    }
    Ok(Json(answer))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoreRequest {
    pairs: Vec<PromptResponse>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptResponse {
    prompt: String,
    response: String,
}

async fn score(
    State(state): State<AppState>,
    raw: std::result::Result<Bytes, BytesRejection>,
) -> std::result::Result<Json<Value>, ApiError> {
    let req: ScoreRequest = parse(&body(raw)?)?;
    if req.pairs.is_empty() {
        return Err(bad("`pairs` is empty: send at least one {\"prompt\", \"response\"}"));
    }
    let pairs = req.pairs.into_iter().map(|p| (p.prompt, p.response)).collect();
    let scored = queue(&state, pairs).await?;
    Ok(Json(json!({ "rewards": scored.rewards, "domains": scored.domains })))
}

/// Binds `host:port` (port 0: any free one).
pub async fn bind(host: &str, port: u16) -> Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener =
        tokio::net::TcpListener::bind((host, port)).await.with_context(|| format!("binding {host}:{port}"))?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}
