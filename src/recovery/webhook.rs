//! [`WebhookAlert`]: alerts as JSON POSTs to a URL (feature `webhook`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Uri, header};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{Semaphore, mpsc};
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
///   Up to 4 are delivered at once, and each is given up 60 s after its
///   first try at the latest, so a receiver that hangs holds no other
///   alert back for long.
/// - The URL is logged without its path or query (a Slack or Teams
///   webhook carries its secret there).
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
    /// The URL without path or query, for logs.
    shown: Arc<str>,
}

impl fmt::Debug for WebhookAlert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookAlert")
            .field("url", &self.shown)
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
    /// Being delivered now.
    pub in_flight: u64,
}

#[derive(Debug, Default)]
struct Counts {
    delivered: AtomicU64,
    failed: AtomicU64,
    deduplicated: AtomicU64,
    rate_limited: AtomicU64,
    dropped: AtomicU64,
    in_flight: AtomicU64,
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
    give_up: Duration,
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
            give_up: Duration::from_secs(60),
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
            in_flight: c.in_flight.load(Ordering::Relaxed),
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

    /// An alert not delivered this long after its first try is given up
    /// (default 60 s), whatever retries are left.
    pub fn give_up_after(mut self, limit: Duration) -> Self {
        self.give_up = limit;
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
        let shown: Arc<str> = shown(&self.url).into();
        tokio::spawn(deliver(self, rx, counts.clone()));
        WebhookAlert { tx, counts, shown }
    }
}

impl Alert for WebhookAlert {
    fn alert(&self, event: &AlertEvent) {
        if self.tx.try_send(event.clone()).is_err() {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                dependency = &*event.dependency,
                url = &*self.shown,
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

/// `scheme://authority` of `url`: no path, no query.
fn shown(url: &Uri) -> String {
    match (url.scheme_str(), url.authority()) {
        (Some(scheme), Some(authority)) => format!(
            "{scheme}://{}",
            authority.as_str().rsplit('@').next().unwrap_or("")
        ),
        _ => "(webhook)".to_string(),
    }
}

type Key = (&'static str, Arc<str>, Arc<str>);

/// What was delivered when, and what is being delivered.
#[derive(Default)]
struct Dedup {
    delivered_at: HashMap<Key, Instant>,
    pending: HashSet<Key>,
}

/// Deliveries at once.
const CONCURRENT: usize = 4;

async fn deliver(cfg: WebhookBuilder, mut rx: mpsc::Receiver<AlertEvent>, counts: Arc<Counts>) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let cfg = Arc::new(cfg);
    let shown: Arc<str> = shown(&cfg.url).into();
    let dedup = Arc::new(Mutex::new(Dedup::default()));
    let slots = Arc::new(Semaphore::new(CONCURRENT));
    let mut recent: VecDeque<Instant> = VecDeque::new();
    while let Some(event) = rx.recv().await {
        let now = Instant::now();
        let key: Key = (
            event.kind,
            event.dependency.clone(),
            event.root_cause.clone(),
        );
        {
            let mut d = dedup.lock().unwrap_or_else(|e| e.into_inner());
            d.delivered_at
                .retain(|_, at| now.saturating_duration_since(*at) < cfg.dedup);
            if d.delivered_at.contains_key(&key) || d.pending.contains(&key) {
                counts.deduplicated.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    dependency = &*event.dependency,
                    "webhook alert deduplicated"
                );
                continue;
            }
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
        dedup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pending
            .insert(key.clone());
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        counts.in_flight.fetch_add(1, Ordering::Relaxed);
        let (cfg, client, counts, dedup, shown) = (
            cfg.clone(),
            client.clone(),
            counts.clone(),
            dedup.clone(),
            shown.clone(),
        );
        tokio::spawn(async move {
            let _slot = slot;
            let tries = try_all(&cfg, &client, &event);
            let outcome = match tokio::time::timeout(cfg.give_up, tries).await {
                Ok(outcome) => outcome,
                Err(_) => Err(format!("given up after {:?}", cfg.give_up)),
            };
            {
                let mut d = dedup.lock().unwrap_or_else(|e| e.into_inner());
                d.pending.remove(&key);
                if outcome.is_ok() {
                    d.delivered_at.insert(key, Instant::now());
                }
            }
            counts.in_flight.fetch_sub(1, Ordering::Relaxed);
            match outcome {
                Ok(()) => {
                    counts.delivered.fetch_add(1, Ordering::Relaxed);
                }
                Err(why) => {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        dependency = &*event.dependency,
                        url = &*shown,
                        "webhook alert not delivered: {why}"
                    );
                }
            }
        });
    }
}

/// Every try of one alert, with the backoff between them.
async fn try_all(
    cfg: &WebhookBuilder,
    client: &Client<HttpConnector, Full<Bytes>>,
    event: &AlertEvent,
) -> Result<(), String> {
    let payload = body(event);
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
    outcome.map_err(|why| format!("{why} (tries: {})", cfg.retries + 1))
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
