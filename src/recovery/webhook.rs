//! [`WebhookAlert`]: alerts as JSON POSTs to a URL (feature `webhook`).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Uri, header};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Alert, AlertEvent};

/// Sends each alert as a JSON POST to a URL, from its own task: the
/// recovery never waits for the receiver.
///
/// - **Retries**: a delivery that fails (no connection, a timeout, a status
///   other than 2xx) is tried again after 1 s, then 2 s, then 4 s (3 retries
///   by default), each try under a 5 s timeout.
/// - **Deduplication**: the same alert (kind, dependency and root cause)
///   within 5 min of one delivered is dropped.
/// - **Rate limit**: at most 10 deliveries a minute; alerts past it are
///   dropped and counted, so a storm of failures cannot flood the receiver.
/// - **Bounded**: 64 alerts wait at most; more are dropped and counted.
///
/// Plain HTTP/1.1 (hyper-util's client): for an HTTPS receiver, send
/// through your own client with a closure sink ([`Alert`] is implemented
/// for closures) or a local relay. Build it inside a tokio runtime.
///
/// The body:
///
/// ```json
/// {"kind": "exhausted", "dependency": "model_server", "root_cause": "storage",
///  "state": "exhausted", "attempts": 3, "max_attempts": 3,
///  "last_error": "connection refused", "since": "2026-11-29T19:41:20Z",
///  "down_for_seconds": 6.2, "exhausted_cycles": 1, "at": "2026-11-29T19:41:26Z"}
/// ```
#[derive(Clone)]
pub struct WebhookAlert {
    tx: mpsc::Sender<AlertEvent>,
    counts: Arc<Counts>,
    url: Uri,
}

impl fmt::Debug for WebhookAlert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookAlert")
            .field("url", &self.url)
            .field("stats", &self.stats())
            .finish()
    }
}

/// What a [`WebhookAlert`] did with the alerts it was given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// Delivered (a 2xx answer).
    pub delivered: u64,
    /// Given up after every retry.
    pub failed: u64,
    /// Dropped as a repeat of one delivered within the dedup window.
    pub deduplicated: u64,
    /// Dropped by the rate limit.
    pub rate_limited: u64,
    /// Dropped because the queue was full.
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct Counts {
    delivered: AtomicU64,
    failed: AtomicU64,
    deduplicated: AtomicU64,
    rate_limited: AtomicU64,
    dropped: AtomicU64,
}

/// Configures a [`WebhookAlert`].
#[derive(Clone, Debug)]
pub struct WebhookBuilder {
    url: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    retries: u32,
    backoff: Duration,
    timeout: Duration,
    dedup: Duration,
    rate: (u32, Duration),
    queue: usize,
}

/// An error of [`WebhookAlert::builder`]: the URL is not an `http://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidWebhookUrl {
    url: String,
    why: &'static str,
}

impl fmt::Display for InvalidWebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid webhook URL {:?}: {}", self.url, self.why)
    }
}

impl std::error::Error for InvalidWebhookUrl {}

impl WebhookAlert {
    /// Configures a webhook to `url` (`http://host[:port]/path`).
    pub fn builder(url: &str) -> Result<WebhookBuilder, InvalidWebhookUrl> {
        let invalid = |why| InvalidWebhookUrl {
            url: url.to_string(),
            why,
        };
        let uri: Uri = url
            .parse()
            .map_err(|_| invalid("expected http://host[:port]/path"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(invalid(
                    "https is not supported: send through your own client (a closure sink)",
                ));
            }
            _ => return Err(invalid("expected http://host[:port]/path")),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(invalid("expected a host"));
        }
        Ok(WebhookBuilder {
            url: uri,
            headers: Vec::new(),
            retries: 3,
            backoff: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            dedup: Duration::from_secs(300),
            rate: (10, Duration::from_secs(60)),
            queue: 64,
        })
    }

    /// What it did so far.
    pub fn stats(&self) -> WebhookStats {
        let c = &self.counts;
        WebhookStats {
            delivered: c.delivered.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            deduplicated: c.deduplicated.load(Ordering::Relaxed),
            rate_limited: c.rate_limited.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
        }
    }
}

impl WebhookBuilder {
    /// Adds a header to every POST (an `Authorization` the receiver wants).
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Retries after a failed delivery (default 3), the first after
    /// `backoff` (default 1 s), each next one twice as late.
    pub fn retries(mut self, retries: u32, backoff: Duration) -> Self {
        self.retries = retries;
        self.backoff = backoff;
        self
    }

    /// Time allowed for one try (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// A repeat of an alert delivered less than `window` ago is dropped
    /// (default 5 min; zero keeps every one).
    pub fn dedup(mut self, window: Duration) -> Self {
        self.dedup = window;
        self
    }

    /// At most `max` deliveries per `per` (default 10 a minute).
    ///
    /// # Panics
    /// If `max` is zero.
    pub fn rate_limit(mut self, max: u32, per: Duration) -> Self {
        assert!(max > 0, "rate_limit needs max >= 1");
        self.rate = (max, per);
        self
    }

    /// Starts its task.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn build(self) -> WebhookAlert {
        let (tx, rx) = mpsc::channel(self.queue);
        let counts = Arc::new(Counts::default());
        let url = self.url.clone();
        tokio::spawn(deliver(self, rx, counts.clone()));
        WebhookAlert { tx, counts, url }
    }
}

impl Alert for WebhookAlert {
    fn alert(&self, event: &AlertEvent) {
        if self.tx.try_send(event.clone()).is_err() {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                dependency = &*event.dependency,
                url = %self.url,
                "webhook alert dropped: its queue is full"
            );
        }
    }
}

/// The JSON body of an alert.
fn body(event: &AlertEvent) -> Bytes {
    let value = serde_json::json!({
        "kind": event.kind,
        "dependency": &*event.dependency,
        "root_cause": &*event.root_cause,
        "state": event.state.as_str(),
        "attempts": event.attempts,
        "max_attempts": event.max_attempts,
        "last_error": event.last_error,
        "since": event.since.map(crate::util::rfc3339),
        "down_for_seconds": event.down_for().map(|d| d.as_secs_f64()),
        "exhausted_cycles": event.exhausted_cycles,
        "at": crate::util::rfc3339(event.at),
    });
    Bytes::from(value.to_string())
}

async fn deliver(cfg: WebhookBuilder, mut rx: mpsc::Receiver<AlertEvent>, counts: Arc<Counts>) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    // When each alert (kind, dependency, root cause) was last delivered.
    let mut delivered_at: HashMap<(&'static str, Arc<str>, Arc<str>), Instant> = HashMap::new();
    let mut recent: VecDeque<Instant> = VecDeque::new();
    while let Some(event) = rx.recv().await {
        let now = Instant::now();
        let key = (
            event.kind,
            event.dependency.clone(),
            event.root_cause.clone(),
        );
        delivered_at.retain(|_, at| now.saturating_duration_since(*at) < cfg.dedup);
        if delivered_at.contains_key(&key) {
            counts.deduplicated.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                dependency = &*event.dependency,
                "webhook alert deduplicated"
            );
            continue;
        }
        let (max, per) = cfg.rate;
        while recent
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) >= per)
        {
            recent.pop_front();
        }
        if recent.len() >= max as usize {
            counts.rate_limited.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                dependency = &*event.dependency,
                "webhook alert dropped by the rate limit ({max} per {per:?})"
            );
            continue;
        }
        recent.push_back(now);
        let payload = body(&event);
        let mut delay = cfg.backoff;
        let mut outcome = Err(String::new());
        for attempt in 0..=cfg.retries {
            if attempt > 0 {
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
            }
            let mut request = Request::builder()
                .method(Method::POST)
                .uri(cfg.url.clone())
                .header(header::CONTENT_TYPE, "application/json");
            for (name, value) in &cfg.headers {
                request = request.header(name, value);
            }
            let request = request
                .body(Full::new(payload.clone()))
                .expect("a valid request: its parts were validated");
            outcome = match tokio::time::timeout(cfg.timeout, client.request(request)).await {
                Ok(Ok(response)) if response.status().is_success() => Ok(()),
                Ok(Ok(response)) => Err(format!("answered {}", response.status())),
                Ok(Err(e)) => Err(error_chain(&e)),
                Err(_) => Err(format!("no answer within {:?}", cfg.timeout)),
            };
            if outcome.is_ok() {
                break;
            }
        }
        match outcome {
            Ok(()) => {
                counts.delivered.fetch_add(1, Ordering::Relaxed);
                delivered_at.insert(key, Instant::now());
            }
            Err(why) => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    dependency = &*event.dependency,
                    url = %cfg.url,
                    tries = cfg.retries + 1,
                    "webhook alert not delivered: {why}"
                );
            }
        }
    }
}

/// An error and its sources, joined: hyper-util's own message alone says
/// only "client error (Connect)".
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        text.push_str(": ");
        text.push_str(&e.to_string());
        next = e.source();
    }
    text
}
