//! Finding a request's key.

use http::uri::Authority;
use http::{HeaderName, Request, header};

/// Finds the key of a request: which breaker guards its call.
///
/// Implemented for closures `Fn(&Req) -> K`, and by [`ByAuthority`] and
/// [`ByHeader`] for HTTP requests. It runs on every call, so keep it cheap
/// (no I/O, no lock).
pub trait ExtractKey<Req> {
    /// The key.
    type Key;

    /// The key of `request`.
    fn extract_key(&self, request: &Req) -> Self::Key;
}

impl<Req, K, F> ExtractKey<Req> for F
where
    F: Fn(&Req) -> K,
{
    type Key = K;

    #[inline]
    fn extract_key(&self, request: &Req) -> K {
        self(request)
    }
}

/// The upstream a client request goes to: the authority of its URI
/// (`host:port`), else its `Host` header. A request with neither (or an
/// unparsable `Host`) gets the key `default`, so such requests share one
/// breaker.
///
/// Authorities compare and hash case-insensitively, so `API.example` and
/// `api.example` share a breaker; `host` and `host:80` do not.
#[derive(Clone, Copy, Debug, Default)]
pub struct ByAuthority;

impl ByAuthority {
    /// The key of requests with no authority.
    pub const DEFAULT: Authority = Authority::from_static("default");
}

impl<B> ExtractKey<Request<B>> for ByAuthority {
    type Key = Authority;

    #[inline]
    fn extract_key(&self, request: &Request<B>) -> Authority {
        if let Some(authority) = request.uri().authority() {
            return authority.clone();
        }
        request
            .headers()
            .get(header::HOST)
            .and_then(|host| Authority::try_from(host.as_bytes()).ok())
            .unwrap_or(Self::DEFAULT)
    }
}

/// The value of a request header, such as a tenant id. A request without
/// it (or with a value that is not visible ASCII) gets the default key,
/// `default` unless set with [`ByHeader::or`], so such requests share one
/// breaker.
///
/// Values from outside the program: pair it with a
/// [`max_keys`](super::Builder::max_keys) that fits the keys you expect.
#[derive(Clone, Debug)]
pub struct ByHeader {
    name: HeaderName,
    default: std::sync::Arc<str>,
}

impl ByHeader {
    /// Keys by the value of the header `name`.
    pub fn new(name: HeaderName) -> Self {
        Self {
            name,
            default: "default".into(),
        }
    }

    /// The key of requests without the header (default `default`).
    pub fn or(mut self, default: impl Into<std::sync::Arc<str>>) -> Self {
        self.default = default.into();
        self
    }
}

impl<B> ExtractKey<Request<B>> for ByHeader {
    type Key = std::sync::Arc<str>;

    #[inline]
    fn extract_key(&self, request: &Request<B>) -> std::sync::Arc<str> {
        match request.headers().get(&self.name).map(|v| v.to_str()) {
            Some(Ok(value)) => value.into(),
            _ => self.default.clone(),
        }
    }
}
