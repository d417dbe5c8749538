//! A blocking client for an OpenAI-compatible `/chat/completions` endpoint, with retries.
//!
//! Transient trouble — HTTP 429, 408 and 5xx, timeouts, dropped connections — is retried with capped
//! exponential back-off; a reply that is not the expected JSON or not a usable answer is retried once,
//! at once (at temperature 0 it rarely changes). HTTP 400, 413 and 422 refuse that one question (too
//! long for the model's context, caught by a content filter) and are not retried. Anything else the
//! server refuses (a bad key, an unknown model) stops the run, since every later question would fail
//! the same way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;

/// Where and how to ask. Not `Debug`: it holds the API key.
pub struct ClientConfig {
    /// The server's base URL (`…/v1`) or the full `…/chat/completions` URL.
    pub endpoint: String,
    pub model: String,
    /// Sent as `Authorization: Bearer …` when present.
    pub api_key: Option<String>,
    /// The variable the key came from, named in error messages.
    pub api_key_env: String,
    /// Limit for one request, from connecting to the last byte of the reply.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
}

/// A failure of one question.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Failure {
    #[error("HTTP {status}{detail}")]
    Status { status: u16, detail: String },
    /// HTTP 400, 413 or 422: the server will not take this question; not retried.
    #[error("HTTP {status}{detail}")]
    Refused { status: u16, detail: String },
    #[error("no reply within the timeout")]
    Timeout,
    #[error("connection failed: {0}")]
    Connection(String),
    #[error("malformed reply: {0}")]
    Malformed(String),
}

impl Failure {
    /// A short name to count failures by.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Status { status: 429, .. } => "HTTP 429",
            Failure::Status { .. } => "HTTP 5xx/408",
            Failure::Refused { .. } => "HTTP 400/413/422",
            Failure::Timeout => "timeout",
            Failure::Connection(_) => "connection",
            Failure::Malformed(_) => "malformed reply",
        }
    }

    /// A server or network failure, as opposed to one question refused or answered badly.
    pub fn is_transport(&self) -> bool {
        !matches!(self, Failure::Malformed(_) | Failure::Refused { .. })
    }
}

/// A failure no retry can fix.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("{url} refused the request with HTTP {status}{detail}: {hint}")]
    Refused { url: String, status: u16, detail: String, hint: String },
    #[error("cannot use --endpoint {url}: {reason}")]
    Endpoint { url: String, reason: String },
}

/// Why a question got no answer.
#[derive(Debug, Clone)]
pub enum AskError {
    Fatal(ClientError),
    /// The retries ran out, or the server refused the question; the last failure.
    Unanswered(Failure),
    /// The run is stopping.
    Stopped,
}

/// One attempt's failure.
enum Attempt {
    Retry(Failure, Option<Duration>),
    /// Give up on this question.
    Refused(Failure),
    Fatal(ClientError),
}

const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
const RETRY_AFTER_CAP: Duration = Duration::from_secs(60);

pub struct ChatClient {
    agent: ureq::Agent,
    url: String,
    config: ClientConfig,
    /// After a 429 no worker sends before this: the server's rate limit is for all of them.
    not_before: Mutex<Option<Instant>>,
}

impl ChatClient {
    pub fn new(config: ClientConfig) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout))
            // Statuses come back as values to branch on, and a redirect never carries the key elsewhere.
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("rmroute/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Self { agent, url: completions_url(&config.endpoint), config, not_before: Mutex::new(None) }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends `body` until `parse` accepts the reply's text, retrying transient failures with back-off
    /// (or the server's `Retry-After`) and a malformed reply once; `on_retry` sees each failure that is
    /// retried. Returns the parsed answer and the text it came from.
    pub fn ask<T>(
        &self,
        body: &serde_json::Value,
        parse: impl Fn(&str) -> Option<T>,
        stop: &AtomicBool,
        on_retry: &mut dyn FnMut(&Failure),
    ) -> Result<(T, String), AskError> {
        let mut attempt = 0;
        let mut malformed_retried = false;
        loop {
            if !self.wait_for_pause(stop) {
                return Err(AskError::Stopped);
            }
            let (failure, wait) = match self.attempt(body) {
                Ok(text) => match parse(&text) {
                    Some(answer) => return Ok((answer, text)),
                    None => (Failure::Malformed(format!("{:?} is not A, B or TIE", snippet(&text, 80))), None),
                },
                Err(Attempt::Fatal(e)) => return Err(AskError::Fatal(e)),
                Err(Attempt::Refused(failure)) => return Err(AskError::Unanswered(failure)),
                Err(Attempt::Retry(failure, wait)) => (failure, wait),
            };
            let malformed = matches!(failure, Failure::Malformed(_));
            if attempt >= self.config.max_retries || (malformed && malformed_retried) {
                return Err(AskError::Unanswered(failure));
            }
            on_retry(&failure);
            if malformed {
                // Straight away: waiting does not change a reply at temperature 0, and once is enough.
                malformed_retried = true;
                attempt += 1;
                continue;
            }
            let wait = wait.map(|w| w.min(RETRY_AFTER_CAP)).unwrap_or_else(|| backoff(attempt));
            if matches!(failure, Failure::Status { status: 429, .. }) {
                let mut not_before = self.not_before.lock().unwrap();
                let until = Instant::now() + wait;
                *not_before = Some(not_before.map_or(until, |t| t.max(until)));
            }
            if !sleep_unless_stopped(wait, stop) {
                return Err(AskError::Stopped);
            }
            attempt += 1;
        }
    }

    /// Sleeps until the pause after a 429 is over; false when the run is stopping.
    fn wait_for_pause(&self, stop: &AtomicBool) -> bool {
        loop {
            let left =
                self.not_before.lock().unwrap().map_or(Duration::ZERO, |t| t.saturating_duration_since(Instant::now()));
            if left.is_zero() {
                return !stop.load(Ordering::Relaxed);
            }
            if !sleep_unless_stopped(left, stop) {
                return false;
            }
        }
    }

    /// One request; the reply's `choices[0].message.content`.
    fn attempt(&self, body: &serde_json::Value) -> Result<String, Attempt> {
        let mut request = self.agent.post(&self.url);
        if let Some(key) = &self.config.api_key {
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        let mut response = request.send_json(body).map_err(|e| self.transport(e))?;
        let status = response.status().as_u16();
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let retry_after = header("retry-after").and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs);
        let location = header("location");
        let text = match response.body_mut().read_to_string() {
            Ok(text) => text,
            Err(e) if (200..300).contains(&status) => return Err(self.transport(e)),
            Err(_) => String::new(),
        };
        match status {
            200..=299 => content(&text).map_err(|m| Attempt::Retry(Failure::Malformed(m), None)),
            429 | 503 => Err(Attempt::Retry(Failure::Status { status, detail: detail(&text) }, retry_after)),
            408 | 500..=599 => Err(Attempt::Retry(Failure::Status { status, detail: detail(&text) }, None)),
            400 | 413 | 422 => Err(Attempt::Refused(Failure::Refused { status, detail: detail(&text) })),
            _ => Err(Attempt::Fatal(ClientError::Refused {
                url: self.url.clone(),
                status,
                detail: detail(&text),
                hint: self.hint(status, location.as_deref()),
            })),
        }
    }

    fn transport(&self, e: ureq::Error) -> Attempt {
        let endpoint = |reason: String| Attempt::Fatal(ClientError::Endpoint { url: self.url.clone(), reason });
        match e {
            ureq::Error::Timeout(_) => Attempt::Retry(Failure::Timeout, None),
            ureq::Error::Io(e) => Attempt::Retry(Failure::Connection(e.to_string()), None),
            ureq::Error::ConnectionFailed => Attempt::Retry(Failure::Connection("refused or unreachable".into()), None),
            ureq::Error::Protocol(e) => {
                Attempt::Retry(Failure::Connection(format!("bad HTTP from the server: {e}")), None)
            }
            ureq::Error::BodyStalled => Attempt::Retry(Failure::Timeout, None),
            ureq::Error::BodyExceedsLimit(n) => {
                Attempt::Retry(Failure::Malformed(format!("a reply of over {n} bytes")), None)
            }
            ureq::Error::HostNotFound => endpoint("its host name does not resolve".into()),
            ureq::Error::BadUri(u) => endpoint(format!("not a valid URL ({u})")),
            other => endpoint(other.to_string()),
        }
    }

    /// What to do about a refused request.
    fn hint(&self, status: u16, location: Option<&str>) -> String {
        let var = &self.config.api_key_env;
        match status {
            401 | 403 if self.config.api_key.is_some() => {
                format!("the API key in ${var} was refused; check it (or name another variable with --api-key-env)")
            }
            401 | 403 => format!(
                "no API key was sent because ${var} is not set; export {var}=<key> (or name another variable \
                 with --api-key-env)"
            ),
            404 => format!(
                "check --endpoint (the server's base URL, such as https://api.openai.com/v1) and that the server \
                 has the model `{}`",
                self.config.model
            ),
            300..=399 => format!(
                "the server redirects{}; pass the final URL as --endpoint",
                location.map(|l| format!(" to {l}")).unwrap_or_default()
            ),
            _ => format!(
                "check --model `{}` and that the server speaks the OpenAI chat-completions API",
                self.config.model
            ),
        }
    }
}

/// `…/v1` → `…/v1/chat/completions`; a URL already ending so is kept.
pub fn completions_url(endpoint: &str) -> String {
    let base = endpoint.trim().trim_end_matches('/');
    if base.ends_with("/chat/completions") {
        base.to_string()
    } else {
        format!("{base}/chat/completions")
    }
}

/// `choices[0].message.content` of a reply body.
fn content(text: &str) -> Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|_| format!("not JSON: {:?}", snippet(text, 120)))?;
    let content = value.pointer("/choices/0/message/content").and_then(|c| c.as_str());
    let cut_off = value.pointer("/choices/0/finish_reason").and_then(|r| r.as_str()) == Some("length");
    match content {
        // A thinking model can spend every token before it answers.
        _ if cut_off && content.is_none_or(|c| c.trim().is_empty()) => {
            Err("no answer within the token limit (raise --max-tokens, or 0 for no limit)".into())
        }
        Some(c) => Ok(c.to_string()),
        None => Err(format!("no choices[0].message.content in {}", snippet(text, 120))),
    }
}

/// The server's error message (`{"error": {"message": …}}` and the like), for error text.
fn detail(text: &str) -> String {
    let value: Option<serde_json::Value> = serde_json::from_str(text).ok();
    let message = value.as_ref().and_then(|v| {
        ["/error/message", "/error", "/detail", "/message"]
            .iter()
            .find_map(|p| v.pointer(p)?.as_str().map(str::to_string))
    });
    match message.unwrap_or_else(|| text.trim().to_string()) {
        m if m.is_empty() => String::new(),
        m => format!(" ({})", snippet(&m, 200)),
    }
}

fn snippet(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// `BACKOFF_BASE · 2^attempt`, capped, times a random factor in [0.75, 1.25) so that workers that
/// failed together do not retry together.
fn backoff(attempt: u32) -> Duration {
    let plain = BACKOFF_BASE.saturating_mul(1u32 << attempt.min(16)).min(BACKOFF_CAP);
    plain.mul_f64(rand::rng().random_range(0.75..1.25))
}

/// Sleeps `wait` in short steps; false when the run is stopping.
fn sleep_unless_stopped(wait: Duration, stop: &AtomicBool) -> bool {
    let step = Duration::from_millis(50);
    let mut left = wait;
    while !left.is_zero() {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = left.min(step);
        std::thread::sleep(now);
        left -= now;
    }
    !stop.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_becomes_the_completions_url() {
        assert_eq!(completions_url("https://api.openai.com/v1"), "https://api.openai.com/v1/chat/completions");
        assert_eq!(completions_url("http://127.0.0.1:8000/v1/"), "http://127.0.0.1:8000/v1/chat/completions");
        assert_eq!(completions_url("http://h/v1/chat/completions"), "http://h/v1/chat/completions");
    }

    #[test]
    fn reply_content_and_error_detail() {
        assert_eq!(content(r#"{"choices": [{"message": {"content": "A"}}]}"#).unwrap(), "A");
        assert!(content(r#"{"choices": []}"#).is_err());
        assert!(content("<html>").is_err());
        let cut = content(r#"{"choices": [{"message": {"content": null}, "finish_reason": "length"}]}"#);
        assert!(cut.unwrap_err().contains("--max-tokens"));
        assert_eq!(detail(r#"{"error": {"message": "bad key"}}"#), " (bad key)");
        assert_eq!(detail(r#"{"detail": "Not Found"}"#), " (Not Found)");
        assert_eq!(detail(""), "");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0) < Duration::from_millis(700));
        assert!(backoff(3) >= Duration::from_secs(3));
        assert!(backoff(30) <= BACKOFF_CAP.mul_f64(1.25));
    }
}
