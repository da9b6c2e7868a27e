//! Retries that respect the breaker and the drain (feature `retry`).
//!
//! A retry outside a circuit breaker must not retry what the breaker
//! refused: the breaker is open because the dependency is failing, and a
//! retry would only be refused again (or, once it half-opens, spend its
//! probe). Nor should it retry what a draining server refused. And retries
//! multiply load on a struggling dependency: they must be bounded by a
//! budget, and wait as long as the dependency asks (`Retry-After`).
//!
//! [`RetryPolicy`] is a [`tower::retry::Policy`] that:
//!
//! - never retries a refusal made by this crate: a breaker's rejection
//!   ([`Rejected`](crate::circuit_breaker::Rejected) as an error, or a
//!   response marked by [`RejectWithResponse`](crate::circuit_breaker::RejectWithResponse)),
//!   a drain's `Draining` (error or `503`) or `ClientClosed`;
//! - retries errors, and HTTP `429`, `502`, `503` and `504` answers;
//! - waits the answer's `Retry-After` (seconds, capped, default cap 30 s)
//!   when it gives one, else an exponential backoff with full jitter
//!   (default 100 ms doubling, at most 10 s);
//! - makes at most 2 retries per request (3 tries), and spends a shared
//!   [`TpsBudget`] (by default 20% of the requests over 10 s, and at
//!   least 10 retries a second), so that a failing dependency gets at most
//!   a fifth more load.
//!
//! The order of layers: the retry outside the breaker, so that each try
//! goes through it (and a rejection stops the retries):
//!
//! ```
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower::retry::RetryLayer;
//! use tower_recovery::circuit_breaker::Breaker;
//! use tower_recovery::retry::RetryPolicy;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let breaker = Breaker::builder("model_server").consecutive_failures(2).build();
//! let tries = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
//! let counted = tries.clone();
//! let client = ServiceBuilder::new()
//!     .layer(RetryLayer::new(RetryPolicy::errors()))
//!     .layer(breaker.layer())
//!     .service(service_fn(move |_: u32| {
//!         counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//!         async { Err::<u32, _>(std::io::Error::other("connection refused")) }
//!     }));
//! let err = client.oneshot(7).await.unwrap_err();
//! // Two tries failed and opened the breaker; the third was refused by it
//! // and not retried.
//! assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 2);
//! assert!(err.is::<tower_recovery::circuit_breaker::Rejected>());
//! # }
//! ```

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tower::retry::Policy;
use tower::retry::budget::{Budget, TpsBudget};

use crate::recovery::is_refusal;

/// Retries HTTP requests (`http::Request<B>` with a `Clone` body).
#[derive(Clone, Copy, Debug, Default)]
pub struct Http;

/// Retries any request type that is `Clone`, on errors only.
#[derive(Clone, Copy, Debug, Default)]
pub struct Errors;

/// A [`tower::retry::Policy`] that respects the breaker, the drain,
/// `Retry-After` and a retry budget. See the [module docs](self).
pub struct RetryPolicy<K = Http> {
    retries: u32,
    base: Duration,
    max_delay: Duration,
    retry_after_cap: Duration,
    budget: Arc<dyn Budget + Send + Sync>,
    /// Retries made for the request this copy belongs to.
    made: u32,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for RetryPolicy<K> {
    fn clone(&self) -> Self {
        Self {
            retries: self.retries,
            base: self.base,
            max_delay: self.max_delay,
            retry_after_cap: self.retry_after_cap,
            budget: self.budget.clone(),
            made: self.made,
            kind: PhantomData,
        }
    }
}

impl<K> std::fmt::Debug for RetryPolicy<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("retries", &self.retries)
            .field("base", &self.base)
            .field("max_delay", &self.max_delay)
            .field("retry_after_cap", &self.retry_after_cap)
            .finish_non_exhaustive()
    }
}

impl RetryPolicy<Http> {
    /// For HTTP clients: errors and `429`, `502`, `503`, `504` are retried.
    pub fn http() -> Self {
        Self::new()
    }
}

impl RetryPolicy<Errors> {
    /// For any client whose requests are `Clone`: errors are retried.
    pub fn errors() -> Self {
        Self::new()
    }
}

impl<K> RetryPolicy<K> {
    fn new() -> Self {
        Self {
            retries: 2,
            base: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            retry_after_cap: Duration::from_secs(30),
            budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2)),
            made: 0,
            kind: PhantomData,
        }
    }

    /// Retries per request at most (default 2).
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The backoff: a delay drawn between zero and `base` doubled per
    /// retry made, never more than `max` (defaults 100 ms and 10 s).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.base = base;
        self.max_delay = max;
        self
    }

    /// The longest `Retry-After` honoured (default 30 s); an answer asking
    /// for longer is not retried.
    pub fn retry_after_cap(mut self, cap: Duration) -> Self {
        self.retry_after_cap = cap;
        self
    }

    /// The budget retries spend, shared by every clone of the policy
    /// (default: tower's [`TpsBudget`], 20% of the requests over 10 s, at
    /// least 10 retries a second). Each success deposits into it: with
    /// `TpsBudget` that is a mutex and a clock read per call (most of the
    /// policy's cost in `benches/retry.rs`); any [`Budget`] will do.
    pub fn budget(mut self, budget: impl Budget + Send + Sync + 'static) -> Self {
        self.budget = Arc::new(budget);
        self
    }

    /// Whether a retry may be made now: one is left for this request and
    /// the budget has one. Spends it.
    fn may_retry(&mut self) -> bool {
        if self.made >= self.retries || !self.budget.withdraw() {
            return false;
        }
        self.made += 1;
        true
    }

    /// The backoff before retry number `self.made` (full jitter).
    fn backoff_delay(&self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1 << (self.made.saturating_sub(1)).min(20))
            .min(self.max_delay);
        ceiling.mul_f64(jitter())
    }

    fn wait(&self, delay: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(tokio::time::sleep(delay))
    }
}

/// A number in `[0, 1)` from the thread's hasher keys: jitter needs no
/// quality, only spread.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

use crate::classify::retry_after_header as retry_after;

/// Whether `response` was refused by this crate (a breaker or a drain).
fn refused<B>(response: &Response<B>) -> bool {
    let ext = response.extensions();
    if ext.get::<crate::circuit_breaker::Rejection>().is_some() {
        return true;
    }
    #[cfg(feature = "drain")]
    if ext.get::<crate::drain::Draining>().is_some() {
        return true;
    }
    false
}

impl<B, ResB, E> Policy<Request<B>, Response<ResB>, E> for RetryPolicy<Http>
where
    B: Clone,
    E: 'static,
{
    type Future = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn retry(
        &mut self,
        _req: &mut Request<B>,
        result: &mut Result<Response<ResB>, E>,
    ) -> Option<Self::Future> {
        let hint = match result {
            Err(error) if is_refusal(error) => return None,
            Err(_) => None,
            Ok(response) if refused(response) => return None,
            Ok(response) => match response.status() {
                StatusCode::TOO_MANY_REQUESTS
                | StatusCode::BAD_GATEWAY
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::GATEWAY_TIMEOUT => retry_after(response.headers()),
                _ => {
                    self.budget.deposit();
                    return None;
                }
            },
        };
        if hint.is_some_and(|after| after > self.retry_after_cap) || !self.may_retry() {
            return None;
        }
        let delay = hint.unwrap_or_else(|| self.backoff_delay());
        Some(self.wait(delay))
    }

    fn clone_request(&mut self, req: &Request<B>) -> Option<Request<B>> {
        let mut clone = Request::new(req.body().clone());
        *clone.method_mut() = req.method().clone();
        *clone.uri_mut() = req.uri().clone();
        *clone.version_mut() = req.version();
        *clone.headers_mut() = req.headers().clone();
        *clone.extensions_mut() = req.extensions().clone();
        Some(clone)
    }
}

impl<Req, Res, E> Policy<Req, Res, E> for RetryPolicy<Errors>
where
    Req: Clone,
    E: 'static,
{
    type Future = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        match result {
            Ok(_) => {
                self.budget.deposit();
                None
            }
            Err(error) if is_refusal(error) => None,
            Err(_) if self.may_retry() => Some(self.wait(self.backoff_delay())),
            Err(_) => None,
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}
